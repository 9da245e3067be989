"""The TypeScript SDKs nobody on this project wrote (v1 `@modelcontextprotocol/sdk`, v2
`@modelcontextprotocol/client`) against a real messenger over streamable HTTP, real worker processes
and a real Redis: each client lists tools and prompts and calls send_message_to_ai with an onprogress
handler; ts_clients/mcp_client.cjs prints what it saw as one JSON line.

The packages and Node 22 come from the npm registry (tests/integration/node_tools.py); one messenger
and its workers serve every test of this module, so the clients cost about a second each.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mcp_helpers import HttpMessenger, messenger_env, running_messengers
from node_tools import PACKAGES, NodeTools
from processes import WorkerProcesses

from worker.providers.mock import mock_reply

CLIENT = Path(__file__).parent / "ts_clients" / "mcp_client.cjs"
QUEUE_TOOLS = {"send_message_to_ai", "submit_message", "get_job", "wait_for_job", "cancel_job"}


def whole_answer(prompt: str) -> str:
    return "".join(mock_reply([{"role": "user", "content": prompt}]))


@dataclass
class Stack:
    messenger: HttpMessenger
    workers: WorkerProcesses


@pytest.fixture(scope="module")
def stack(redis_server, tmp_path_factory) -> Iterator[Stack]:
    """One `messenger serve --transport http` and two worker processes on the session's Redis; 5 ms
    between mock tokens, so an answer spans several progress notifications."""
    redis_server.client().flushall()
    tmp = tmp_path_factory.mktemp("ts-clients")
    workers = WorkerProcesses(redis_server, tmp)
    try:
        workers.start(redis_server.url, count=2, MOCK_TOKEN_DELAY_MS="5")
        with running_messengers(tmp) as messengers:
            yield Stack(messengers.http(messenger_env(redis_server.url)), workers)
    finally:
        workers.stop_all()


def run_client(tools: NodeTools, sdk: str, url: str, era: str = "legacy", **plan) -> dict:
    """Run ts_clients/mcp_client.cjs with one SDK; returns the JSON line it printed (no client errors)."""
    done = tools.node(CLIENT, json.dumps({"sdk": sdk, "url": url, "era": era, **plan}))
    assert done.returncode == 0, f"node exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["errors"] == [], f"the {sdk} client reported errors: {seen['errors']}\n{done.stderr}"
    return seen


def assert_exact_answers(seen: dict, messages: list[str]) -> None:
    """Each call completed with the mock's exact answer; its progress messages, joined, are that answer."""
    assert [call["message"] for call in seen["calls"]] == messages
    for call in seen["calls"]:
        assert call["error"] is None, call
        assert call["isError"] is False, call
        answer = whole_answer(call["message"])
        assert call["result"]["status"] == "completed"
        assert call["result"]["aiResponse"] == answer
        texts = [n["message"] for n in call["notifications"]]
        assert len(texts) >= 2, call["notifications"]  # the answer streamed, not one lump at the end
        assert "".join(texts) == answer


CLIENTS = [  # (sdk, era, the protocol version it must end up speaking)
    pytest.param("v1", "legacy", "2025-11-25", id="ts-sdk-v1"),
    pytest.param("v2", "legacy", "2025-11-25", id="ts-sdk-v2-2025-11-25"),
    pytest.param("v2", "modern", "2026-07-28", id="ts-sdk-v2-2026-07-28"),
]


@pytest.mark.parametrize(("sdk", "era", "protocol"), CLIENTS)
def test_ts_sdk_lists_and_streams_exact_answers(node_tools, stack, sdk, era, protocol):
    messages = [f"hello from TS {sdk} {era}", f"a second call from TS {sdk} {era}, at the same time"]
    seen = run_client(node_tools, sdk, stack.messenger.url, era, messages=messages)
    package = "@modelcontextprotocol/sdk" if sdk == "v1" else "@modelcontextprotocol/client"
    assert seen["sdkVersion"] == PACKAGES[package]
    assert seen["protocolVersion"] == protocol
    assert (seen["sessionId"] is None) == (protocol == "2026-07-28")  # sessions are a 2025-11-25 thing
    assert seen["server"]["name"] == "mcp-queue"
    assert QUEUE_TOOLS <= set(seen["tools"])
    assert isinstance(seen["prompts"], list)
    assert_exact_answers(seen, messages)
