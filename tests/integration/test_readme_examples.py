"""The README's client examples for long work (wait with progress, submit and poll, MCP task) run as
written against a messenger over streamable HTTP."""

from __future__ import annotations

import re
import textwrap

import anyio
from mcp_helpers import ROOT, messenger_env, running_messengers


def long_work_examples() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n### Long work: three ways\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


async def test_the_three_long_work_examples_run(tmp_path, capsys):
    examples = long_work_examples()
    assert len(examples) == 3
    with running_messengers(tmp_path) as messengers:
        url = messengers.http(messenger_env("memory://", MOCK_TOKEN_DELAY_MS="2")).url
        code = "\n".join(examples).replace("http://127.0.0.1:8000/mcp", url)
        namespace: dict = {}
        exec(f"async def examples():\n{textwrap.indent(code, '    ')}", namespace)
        with anyio.fail_after(60):
            await namespace["examples"]()
    printed = capsys.readouterr().out
    assert "Mock answer to: hi" in printed  # the tokens, as progress
    assert "completed Mock answer to: a long essay" in printed  # the task's status and its result
