"""The README's Claude Desktop configurations, run as written (with the two absolute paths filled in):
`uv run --directory <checkout> messenger serve` over stdio, embedded and on a shared Redis."""

from __future__ import annotations

import json
import re
import shutil

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp_helpers import ROOT
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


async def ask(params: StdioServerParameters, errlog) -> dict:
    with anyio.fail_after(60):
        async with Client(stdio_client(params, errlog=errlog)) as client:
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
