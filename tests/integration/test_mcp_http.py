"""`messenger serve --transport http|sse` as a real subprocess, with mcp.Client over the network.

The main stack (one messenger on real Redis, two worker processes) is shared by the tests of this
module; the SSE and API-key tests run their own embedded messengers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp_helpers import HttpMessenger, messenger_env, running_messengers
from processes import WorkerProcesses
from readers import progress_recorder, stream_events, text_of

from worker.providers.mock import mock_reply

ERAS = pytest.mark.parametrize(
    ("mode", "era"), [("auto", "2026-07-28"), ("legacy", "2025-11-25")], ids=["modern", "legacy"]
)
KEYS = {"MCP_API_KEY": "tok1,tok2"}


def whole_answer(prompt: str) -> str:
    """What the mock provider answers to `prompt`, token for token."""
    return "".join(mock_reply([{"role": "user", "content": prompt}]))


@dataclass
class Stack:
    messenger: HttpMessenger
    redis: object  # a sync redis client on the stack's Redis
    workers: object


@pytest.fixture(scope="module")
def stack(redis_server, tmp_path_factory):
    """One messenger over streamable HTTP on real Redis, with two worker processes."""

    tmp = tmp_path_factory.mktemp("http-stack")
    redis_server.client().flushall()
    workers = WorkerProcesses(redis_server, tmp)
    try:
        workers.start(redis_server.url, count=2, MOCK_TOKEN_DELAY_MS="2")
        with running_messengers(tmp) as messengers:
            messenger = messengers.http(messenger_env(redis_server.url))
            yield Stack(messenger=messenger, redis=redis_server.client(), workers=workers)
    finally:
        workers.stop_all()


@pytest.fixture
def http_stack(stack):
    """The shared stack; its logs are printed after each test (pytest shows them on failure)."""
    yield stack
    print(f"----- messenger -----\n{stack.messenger.log()[-20_000:]}")
    print(f"----- workers -----\n{stack.workers.logs()[-20_000:]}")


@pytest.fixture
def messengers(tmp_path):
    with running_messengers(tmp_path) as m:
        yield m


@ERAS
async def test_http_answers_in_both_eras_with_tokens_as_progress(http_stack, mode, era):
    url = http_stack.messenger.url
    messages, on_progress = progress_recorder()
    with anyio.fail_after(60):
        async with Client(url, mode=mode) as client:
            assert client.protocol_version == era
            tools = {t.name for t in (await client.list_tools()).tools}
            result = await client.call_tool(
                "send_message_to_ai",
                {"message": f"hello over http in {mode} mode"},
                progress_callback=on_progress,
            )
            assert not result.is_error, text_of(result)
            job_id = result.structured_content["jobId"]
            waited = await client.call_tool("wait_for_job", {"job_id": job_id, "timeout_seconds": 10})
    assert {"send_message_to_ai", "submit_message", "get_job", "check_health"} <= tools
    answer = result.structured_content
    assert answer["status"] == "completed"
    assert answer["aiResponse"] == whole_answer(f"hello over http in {mode} mode")
    assert len(messages) >= 2, messages
    assert "".join(messages) == answer["aiResponse"]
    assert waited.structured_content["aiResponse"] == answer["aiResponse"]


async def test_fifty_concurrent_calls_each_get_their_own_whole_answer_from_one_worker(http_stack):
    url = http_stack.messenger.url
    prompts = [f"concurrent request {i:02d} with marker m{i:02d}x" for i in range(50)]
    results: dict[int, dict] = {}

    async def caller(client_no: int) -> None:
        mode = "auto" if client_no % 2 == 0 else "legacy"  # both eras at once, on one server
        async with Client(url, mode=mode) as client, anyio.create_task_group() as tg:
            for i in range(client_no, len(prompts), 5):
                tg.start_soon(ask, client, i)

    async def ask(client: Client, i: int) -> None:
        result = await client.call_tool("send_message_to_ai", {"message": prompts[i]})
        assert not result.is_error, text_of(result)
        results[i] = result.structured_content

    with anyio.fail_after(90):
        async with anyio.create_task_group() as tg:
            for client_no in range(5):
                tg.start_soon(caller, client_no)

    assert sorted(results) == list(range(50))
    redis = http_stack.redis
    for i, answer in results.items():
        assert answer["status"] == "completed"
        assert answer["aiResponse"].startswith("Mock answer to:")
        assert f"m{i:02d}x" in answer["aiResponse"]
        assert answer["aiResponse"] == whole_answer(prompts[i])  # whole, and nobody else's tokens
    assert len({a["jobId"] for a in results.values()}) == 50

    for answer in results.values():
        events = stream_events(redis, answer["jobId"])
        starts = [e for e in events if e["type"] == "start"]
        assert len(starts) == 1, f"job {answer['jobId']} started {len(starts)} times"
        assert starts[0]["worker_id"] == answer["workerId"]
        assert [e["type"] for e in events].count("done") == 1
        stored = json.loads(redis.get(f"arq:result:{answer['jobId']}"))
        assert stored["r"]["aiResponse"] == answer["aiResponse"]
    assert len({a["workerId"] for a in results.values()}) == 2  # both workers took a share


async def test_health_endpoint_and_tool_see_both_workers(http_stack):
    status, body = http_stack.messenger.get("/health")
    with anyio.fail_after(30):
        async with Client(http_stack.messenger.url) as client:
            tool = await client.call_tool("check_health", {})
    assert status == 200
    for report in (json.loads(body), json.loads(text_of(tool))):
        assert report["mode"] == "redis"
        assert report["redis"]["ok"] is True
        assert report["status"] == "ok"
        assert len({w["worker_id"] for w in report["workers"]}) == 2


async def test_sse_transport_answers_a_call(messengers):
    sse = messengers.http(messenger_env("memory://", MOCK_TOKEN_DELAY_MS="2"), transport="sse")
    messages, on_progress = progress_recorder()
    with anyio.fail_after(60):
        for mode in ("auto", "legacy"):
            async with Client(sse_client(sse.url), mode=mode) as client:
                result = await client.call_tool(
                    "send_message_to_ai", {"message": f"hello over sse {mode}"}, progress_callback=on_progress
                )
            assert not result.is_error, text_of(result)
            assert result.structured_content["aiResponse"] == whole_answer(f"hello over sse {mode}")
            assert "".join(messages) == result.structured_content["aiResponse"]
            messages.clear()


async def test_api_key_is_required_on_mcp_but_not_on_health(messengers):
    server = messengers.http(messenger_env("memory://", **KEYS))
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "t", "version": "0"}},
    }  # fmt: skip
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    refused = [
        {},
        {"Authorization": "Bearer tok3"},
        {"Authorization": "Bearer tok1,tok2"},
        {"Authorization": "Bearer"},
        {"Authorization": "tok1"},
        {"X-Api-Key": "tok"},
    ]
    with anyio.fail_after(60):
        async with httpx2.AsyncClient(timeout=10) as http:
            for extra in refused:
                response = await http.post(server.url, json=initialize, headers=headers | extra)
                assert response.status_code == 401, extra
                assert "tok1" not in response.text and "tok2" not in response.text
                assert "tok" not in json.dumps(dict(response.headers))
            health = await http.get(f"{server.base_url}/health")
            assert health.status_code == 200
            assert json.loads(health.text)["redis"]["ok"] is True

        for mode, auth in (("auto", {"Authorization": "Bearer tok2"}), ("legacy", {"X-Api-Key": "tok1"})):
            async with (
                httpx2.AsyncClient(headers=auth, timeout=30) as http,
                Client(streamable_http_client(server.url, http_client=http), mode=mode) as client,
            ):
                result = await client.call_tool("send_message_to_ai", {"message": f"with key {mode}"})
            assert not result.is_error, text_of(result)
            assert result.structured_content["aiResponse"] == whole_answer(f"with key {mode}")

        with pytest.raises(Exception) as refused_client:  # whatever the SDK raises for a 401
            async with (
                httpx2.AsyncClient(headers={"Authorization": "Bearer nope"}, timeout=30) as http,
                Client(streamable_http_client(server.url, http_client=http)) as client,
            ):
                await client.list_tools()
    assert "tok1" not in str(refused_client.value) and "tok2" not in str(refused_client.value)
