"""One endpoint for many servers: `messenger serve --transport http` re-exports the tools of the MCP
servers named in MCP_EXPOSE_SERVERS as `server/tool`, and every call runs as a queued job on a
`worker` process (real Redis, real HTTP, the real MCP client, a real downstream MCP server)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from mcp import Client
from mcp_clock_server import PREFIX
from mcp_helpers import messenger_env, running_messengers
from readers import text_of

from messenger.aggregate import JOB_ID_META

CLOCK = str(Path(__file__).resolve().parents[1] / "mcp_clock_server.py")


@pytest.fixture
def stack(redis_url, redis_server, workers, tmp_path):
    calls = tmp_path / "calls.jsonl"
    servers = {
        "clock": {"command": sys.executable, "args": [CLOCK], "env": {"CLOCK_CALL_LOG": str(calls)}},
        "ghost": {"command": str(tmp_path / "not-installed")},
        "private": {"command": sys.executable, "args": [CLOCK]},  # configured for jobs, not re-exported
    }
    env = {"MCP_SERVERS": json.dumps(servers)}
    workers.start(redis_url, **env)
    with running_messengers(tmp_path) as messengers:
        messenger = messengers.http(messenger_env(redis_url, MCP_EXPOSE_SERVERS="clock,ghost", **env))
        yield messenger, calls


@pytest.mark.parametrize("mode", ["auto", "legacy"], ids=["modern", "legacy"])
async def test_downstream_tools_are_listed_and_called_through_the_queue(stack, redis_server, mode):
    messenger, calls = stack
    async with Client(messenger.url, mode=mode) as client, asyncio.timeout(60):
        tools = {t.name: t for t in (await client.list_tools()).tools}
        progress: list[str | None] = []

        async def on_progress(_p, _t, message):
            progress.append(message)

        added = await client.call_tool("clock/add", {"a": 40, "b": 2}, progress_callback=on_progress)
        broken = await client.call_tool("clock/broken", {})
        rejected = await client.call_tool("clock/add", {"a": "forty"})
        job_id = added.meta[JOB_ID_META]
        job = (await client.call_tool("get_job", {"job_id": job_id})).structured_content

    # listed with the downstream names, descriptions and schemas; the messenger's own tools too
    assert {"clock/now", "clock/add", "clock/broken", "clock/sleep"} <= set(tools)
    assert "send_message_to_ai" in tools
    assert not any(name.startswith(("ghost/", "private/")) for name in tools)
    assert tools["clock/add"].input_schema["required"] == ["a", "b"]
    assert tools["clock/add"].description == "[clock] Add two integers."

    # called for real, by a worker, as a job anyone can look up
    assert not added.is_error and text_of(added) == f"{PREFIX} 42"
    logged = [json.loads(line) for line in calls.read_text().splitlines()]
    assert [(c["tool"], c["arguments"]) for c in logged] == [("add", {"a": 40, "b": 2}), ("broken", {})]
    assert job["status"] == "completed" and job["aiResponse"] == f"{PREFIX} 42"
    assert job["workerId"] in {json.loads(redis_server.client().get(k))["worker_id"]
                               for k in redis_server.client().scan_iter("mcpq:worker:*")}  # fmt: skip
    (record,) = job["toolCalls"]
    assert (record["server"], record["tool"], record["arguments"]) == ("clock", "add", {"a": 40, "b": 2})
    assert progress and not any(progress), "status and the call go in `_meta`, never in `message`"

    # the downstream server's errors come back as tool errors, and the endpoint keeps serving
    assert broken.is_error and "the clock is broken" in text_of(broken)
    assert rejected.is_error and "valid integer" in text_of(rejected)


async def test_health_reports_a_downstream_server_that_could_not_be_listed(stack):
    messenger, _ = stack
    report = messenger.wait_ready()
    servers = report["mcp_servers"]
    assert servers["clock"] == {"exposed": True, "tools": 5}
    assert servers["private"] == {"exposed": False}
    assert servers["ghost"]["exposed"] is True
    assert servers["ghost"]["error"].startswith("cannot connect to MCP server 'ghost'")
    assert "not serving the tools of MCP server 'ghost'" in messenger.log()


async def test_list_mcp_servers_tells_a_caller_which_names_it_may_use(stack):
    messenger, _ = stack
    async with Client(messenger.url) as client, asyncio.timeout(30):
        listed = (await client.call_tool("list_mcp_servers", {})).structured_content
    rows = {row["name"]: row for row in listed["servers"]}
    assert rows["clock"] == {
        "name": "clock",
        "transport": "stdio",
        "exposed": True,
        "tools": ["clock/now", "clock/add", "clock/broken", "clock/reject", "clock/sleep"],
    }
    assert rows["private"] == {"name": "private", "transport": "stdio", "exposed": False}
    assert rows["ghost"]["exposed"] is True and "error" in rows["ghost"] and "tools" not in rows["ghost"]
    assert "not-installed" in rows["ghost"]["error"]
