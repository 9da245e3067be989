"""The README's Claude Desktop configurations, run as written (with the two absolute paths filled in):
`uv run --directory <checkout> messenger serve` over stdio, embedded and on a shared Redis; and the
entry `messenger install claude-desktop` writes, read back from the file and run the same way. Each is
started as Claude Desktop starts it: its command, args and env over the few variables a desktop app
passes on, with the system's PATH rather than the shell's, from another directory."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp_helpers import ROOT
from processes import process_env
from readers import text_of


def desktop_configs() -> list[dict]:
    """The `mcp-queue` server entry of each JSON block in the README's Claude Desktop section."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Claude Desktop\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```json\n(.*?)```", section, re.DOTALL)
    return [json.loads(block)["mcpServers"]["mcp-queue"] for block in blocks]


def filled_in(entry: dict) -> StdioServerParameters:
    uv = shutil.which("uv")
    assert uv, "uv is not on PATH"
    assert entry["command"] == "/absolute/path/to/uv"
    args = [str(ROOT) if a == "/absolute/path/to/mcp-queue" else a for a in entry["args"]]
    return StdioServerParameters(command=uv, args=args, env=entry["env"])


@pytest.fixture
def errlog(tmp_path):
    """The messenger's stderr, printed after the test (pytest shows it when the test fails)."""
    path = tmp_path / "messenger.log"
    with open(path, "w") as log:
        yield log
    print(f"----- messenger -----\n{path.read_text()[-20_000:]}")


def installed(config: Path, **env: str) -> StdioServerParameters:
    """Run `messenger install claude-desktop --config FILE` as a process; the entry it wrote, as is."""
    environ = process_env("", **env)
    if not env.get("REDIS_URL"):
        del environ["REDIS_URL"]
    done = subprocess.run(
        [sys.executable, "-m", "messenger.cli", "install", "claude-desktop", "--config", str(config)],
        env=environ, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0 and "restart Claude Desktop" in done.stdout, done.stderr
    entry = json.loads(config.read_text())["mcpServers"]["mcp-queue"]
    assert Path(entry["command"]).is_absolute() and entry["args"][-1] == "serve"
    return StdioServerParameters(command=entry["command"], args=entry["args"], env=entry["env"])


async def ask(params: StdioServerParameters, errlog) -> dict:
    """What Claude Desktop does with an entry: start it, list its tools, call one."""
    env = {"PATH": "/usr/bin:/bin", **(params.env or {})}  # not the shell's PATH: uv's directory is not on it
    params = params.model_copy(update={"env": env, "cwd": Path(errlog.name).parent})
    with anyio.fail_after(60):
        async with Client(stdio_client(params, errlog=errlog)) as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            assert {"send_message_to_ai", "submit_message", "get_job", "check_health"} <= tools
            result = await client.call_tool("send_message_to_ai", {"message": "hello from Claude Desktop"})
    assert not result.is_error, text_of(result)
    return result.structured_content


def test_the_readme_has_an_embedded_and_a_redis_configuration():
    configs = desktop_configs()
    assert [sorted(c["env"]) for c in configs] == [["AI_PROVIDER"], ["REDIS_URL"]]


async def test_the_embedded_configuration_answers(errlog):
    embedded = desktop_configs()[0]
    answer = await ask(filled_in(embedded), errlog)
    assert answer["status"] == "completed"
    assert answer["aiResponse"].startswith("Mock answer to: hello from Claude Desktop")


async def test_the_redis_configuration_hands_the_call_to_a_worker(errlog, redis_url, redis_server, workers):
    with_redis = desktop_configs()[1]
    assert with_redis["env"]["REDIS_URL"].startswith("redis://")
    with_redis["env"]["REDIS_URL"] = redis_url  # this test's own Redis instead of localhost:6379
    workers.start(redis_url, count=1, MOCK_TOKEN_DELAY_MS="1")
    answer = await ask(filled_in(with_redis), errlog)
    assert answer["status"] == "completed"
    assert redis_server.client().exists(f"mcpq:worker:{answer['workerId']}")  # the worker process answered


async def test_the_installed_entry_answers_in_embedded_mode(errlog, tmp_path):
    entry = installed(tmp_path / "claude_desktop_config.json")
    assert entry.env == {"AI_PROVIDER": "mock"}  # no REDIS_URL: the messenger runs its own worker
    answer = await ask(entry, errlog)
    assert answer["status"] == "completed"
    assert answer["aiResponse"].startswith("Mock answer to: hello from Claude Desktop")


async def test_the_installed_entry_hands_the_call_to_a_worker(
    errlog, tmp_path, redis_url, redis_server, workers
):
    workers.start(redis_url, count=1, MOCK_TOKEN_DELAY_MS="1")
    entry = installed(tmp_path / "claude_desktop_config.json", REDIS_URL=redis_url)
    assert entry.env == {"REDIS_URL": redis_url, "AI_PROVIDER": "mock"}
    answer = await ask(entry, errlog)
    assert answer["status"] == "completed"
    assert redis_server.client().exists(f"mcpq:worker:{answer['workerId']}")  # the worker process answered
