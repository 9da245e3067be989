"""The shipped prompts through a client nobody here wrote: the MCP Inspector's command-line mode, over
streamable HTTP, in both protocol eras; its client name (`inspector-cli`) picks its variables."""

from __future__ import annotations

import pytest
from mcp_helpers import messenger_env, running_messengers


@pytest.mark.parametrize("era", ["legacy", "modern"])
def test_the_inspector_lists_the_prompts_and_gets_one_rendered_for_itself(node_tools, tmp_path, era):
    with running_messengers(tmp_path) as messengers:
        url = messengers.http(messenger_env("memory://", MCP_API_KEY="tok1")).url
        common = [url, "--header", "Authorization: Bearer tok1", "--protocol-era", era]
        listed = node_tools.inspector(*common, "--method", "prompts/list")
        got = node_tools.inspector(
            *common, "--method", "prompts/get", "--prompt-name", "summarize",
            "--prompt-args", "text=Queues decouple work.", "style=one-line",
        )  # fmt: skip
    prompts = {p["name"]: p for p in listed["result"]["prompts"]}
    assert set(prompts) == {"delegate", "review_job", "summarize"}
    assert {a["name"]: a.get("required", False) for a in prompts["review_job"]["arguments"]} == {
        "job_id": True,
        "focus": False,
    }
    (message,) = got["result"]["messages"]
    assert message["role"] == "user"
    assert message["content"]["text"] == (
        "Summarize the text below for a busy reader. Style: one-line. Use plain text, no Markdown.\n\n"
        "Text:\nQueues decouple work.\n"
    )
