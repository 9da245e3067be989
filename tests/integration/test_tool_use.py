"""Tool use end to end: a real MCP client calls the messenger, the job goes through real Redis to a
`worker` process, the model (the OpenAI-compatible test server, over HTTP) asks for a tool, the
worker calls a real MCP server (tests/mcp_clock_server.py, over stdio or streamable HTTP), and the
model's final answer carries the tool's result. Tool calls and results are events in the job's
stream, arrive live as progress, and show in get_job."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mcp import Client
from mcp_clock_server import PREFIX
from openai_server import eventually
from redis_server import free_port

from messenger.queue import ANONYMOUS
from messenger.runtime import open_runtime
from messenger.server import build_server
from shared import keys
from shared.settings import load_settings

CLOCK = str(Path(__file__).resolve().parents[1] / "mcp_clock_server.py")
ANSWER = "The clock says"


def stdio_clock(log: Path) -> dict:
    return {"command": sys.executable, "args": [CLOCK], "env": {"CLOCK_CALL_LOG": str(log)}}


def calls_logged(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def http_clock(tmp_path):
    """The clock server over streamable HTTP, requiring a bearer token."""
    port = free_port()
    log = tmp_path / "http-clock.log"
    proc = subprocess.Popen(
        [sys.executable, CLOCK, "--port", str(port), "--token", "clock-secret"],
        env={**os.environ, "CLOCK_CALL_LOG": str(tmp_path / "http-calls.jsonl")},
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/mcp", timeout=1)
        except urllib.error.HTTPError:
            break  # it answers (401 without the token): up
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"the HTTP clock server did not start: {log.read_text()}") from None
            time.sleep(0.05)
    yield {"url": f"http://127.0.0.1:{port}/mcp", "token": "clock-secret"}, tmp_path / "http-calls.jsonl"
    proc.terminate()
    proc.wait(10)


def start_workers(workers, redis_url, server, servers: dict, **env):
    return workers.start(
        redis_url,
        AI_PROVIDER="openai",
        OPENAI_BASE_URL=server.base_url,
        OPENAI_API_KEY="sk-test",
        MCP_SERVERS=json.dumps(servers),
        **env,
    )


def messenger_runtime(redis_url, servers: dict):
    return open_runtime(load_settings(redis_url=redis_url, mcp_servers=servers))


def stream_types(redis_server, job_id) -> list[dict]:
    client = redis_server.client()
    return [json.loads(fields[b"event"]) for _, fields in client.xrange(f"mcpq:stream:{job_id}")]


async def ask(runtime, arguments: dict):
    progress: list[str] = []

    async def on_progress(_p, _t, message):
        if message:
            progress.append(message)

    async with Client(build_server(runtime)) as client:
        result = await client.call_tool("send_message_to_ai", arguments, progress_callback=on_progress)
    return result, progress


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_the_model_calls_a_real_mcp_tool_and_answers_with_its_result(
    redis_url, redis_server, workers, openai_server, clean_env, tmp_path, transport, request
):
    if transport == "stdio":
        log = tmp_path / "calls.jsonl"
        servers = {"clock": stdio_clock(log)}
    else:
        config, log = request.getfixturevalue("http_clock")
        servers = {"clock": config}
    openai_server.script(
        reply=ANSWER,
        tool_preamble="Let me look at the clock.",
        tool_calls=[("clock__now", '{"timezone_offset_hours": 2}')],
    )
    start_workers(workers, redis_url, openai_server, servers)
    async with messenger_runtime(redis_url, servers) as runtime, asyncio.timeout(60):
        result, progress = await ask(runtime, {"message": "What time is it?", "mcp_servers": ["clock"]})
        assert not result.is_error, result.content
        job = result.structured_content
        fetched = (await runtime.jobs.get(job["jobId"])).model_dump(mode="json")

    # the tool really ran, with the model's arguments, and its answer reached the model and the caller
    (called,) = calls_logged(log)
    assert called["tool"] == "now" and called["arguments"] == {"timezone_offset_hours": 2}
    assert job["status"] == "completed"
    assert job["aiResponse"].startswith("Let me look at the clock.\n\n" + ANSWER + f" {PREFIX} ")
    assert job["aiResponse"].endswith("+02:00")

    first, second = openai_server.chat_requests
    offered = {t["function"]["name"]: t["function"] for t in first.body["tools"]}
    assert set(offered) == {"clock__now", "clock__add", "clock__broken", "clock__reject", "clock__sleep"}
    assert offered["clock__add"]["parameters"]["required"] == ["a", "b"]
    assistant, tool_message = second.body["messages"][-2:]
    assert assistant["tool_calls"][0]["function"] == {
        "name": "clock__now",
        "arguments": '{"timezone_offset_hours": 2}',
    }
    assert tool_message["role"] == "tool" and tool_message["tool_call_id"] == assistant["tool_calls"][0]["id"]
    assert tool_message["content"].startswith(PREFIX)

    # the job's stream and get_job show the call and its result
    events = stream_types(redis_server, job["jobId"])
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert kinds.index("tool_call") < kinds.index("tool_result") < len(kinds) - 1
    call_event = next(e for e in events if e["type"] == "tool_call")
    assert (call_event["server"], call_event["tool"], call_event["arguments"], call_event["round"]) == (
        "clock", "now", {"timezone_offset_hours": 2}, 1,
    )  # fmt: skip
    (record,) = fetched["toolCalls"]
    assert record["server"] == "clock" and record["tool"] == "now"
    assert record["result"].startswith(PREFIX) and record["isError"] is False
    assert record["durationMs"] >= 0
    assert fetched["toolCalls"] == job["toolCalls"]

    # live progress carried the answer's text only (the call itself is in `_meta`: test_progress_purity)
    assert "".join(progress) == job["aiResponse"]
    # usage covers both model turns
    assert job["usage"]["promptTokens"] == sum(
        r for r in (_prompt_words(first.body), _prompt_words(second.body))
    )


def _prompt_words(body: dict) -> int:
    return sum(len(str(m.get("content", "")).split()) for m in body["messages"])


async def test_tool_errors_go_back_to_the_model_and_the_job_still_completes(
    redis_url, redis_server, workers, openai_server, clean_env, tmp_path
):
    servers = {"clock": stdio_clock(tmp_path / "calls.jsonl")}
    openai_server.script(
        reply=ANSWER,
        tool_calls=[
            ("clock__broken", "{}"),  # the tool reports an error
            ("clock__add", '{"a": "three"}'),  # arguments the tool rejects
            ("clock__add", "{not json"),  # arguments that are not JSON at all
            ("clock__launch", "{}"),  # a tool that does not exist
            ("clock__add", '{"a": 2, "b": 3}'),  # and one that works
        ],
    )
    start_workers(workers, redis_url, openai_server, servers)
    async with messenger_runtime(redis_url, servers) as runtime, asyncio.timeout(60):
        result = await runtime.jobs.run(_request("Add things.", ["clock"]))

    assert result.status == "completed", result.error
    by_tool = [(r.tool, r.is_error) for r in result.tool_calls]
    assert by_tool == [
        ("broken", True), ("add", True), ("add", True), ("clock__launch", True), ("add", False),
    ]  # fmt: skip
    results = [r.result for r in result.tool_calls]
    assert "the clock is broken" in results[0]
    assert "a" in results[1] and "valid integer" in results[1]
    assert "must be a JSON object" in results[2]
    assert "no tool named 'clock__launch'" in results[3]
    assert results[4] == f"{PREFIX} 5"
    # the model was told, as errors, and answered anyway
    tool_messages = [m for m in openai_server.chat_requests[1].body["messages"] if m["role"] == "tool"]
    assert [m["content"].startswith("Error:") for m in tool_messages] == [True, True, True, True, False]
    assert result.ai_response.startswith(ANSWER) and f"{PREFIX} 5" in result.ai_response
    # the calls ran concurrently on one connection to one server process
    assert len({c["pid"] for c in calls_logged(tmp_path / "calls.jsonl")}) == 1


async def test_a_model_that_keeps_calling_tools_is_stopped_after_tool_max_rounds(
    redis_url, redis_server, workers, openai_server, clean_env, tmp_path
):
    servers = {"clock": stdio_clock(tmp_path / "calls.jsonl")}
    openai_server.script(tool_calls=[("clock__now", "{}")], tool_rounds=1000)
    start_workers(workers, redis_url, openai_server, servers, TOOL_MAX_ROUNDS="3")
    async with messenger_runtime(redis_url, servers) as runtime, asyncio.timeout(60):
        result = await runtime.jobs.run(_request("Loop.", ["clock"]))
        assert result.status == "failed"
        assert "TOOL_MAX_ROUNDS=3" in result.error
        assert [r.round for r in result.tool_calls] == [1, 2, 3]
        assert len(openai_server.chat_requests) == 4  # three tool turns, and the fourth asked again
        # the worker keeps serving
        openai_server.script(tool_calls=[])
        assert (await runtime.jobs.run(_request("Plain question.", ["clock"]))).status == "completed"


async def test_an_unknown_server_is_refused_before_anything_is_queued(
    redis_url, redis_server, clean_env, tmp_path
):
    servers = {"clock": stdio_clock(tmp_path / "calls.jsonl")}
    async with messenger_runtime(redis_url, servers) as runtime:
        async with Client(build_server(runtime)) as client:
            result = await client.call_tool(
                "submit_message", {"message": "hi", "mcp_servers": ["clock", "weather"]}
            )
            depth = await runtime.redis.zcard(keys.QUEUE)
    assert result.is_error
    assert result.content[0].text.endswith(": unknown MCP server 'weather'; configured servers: clock")
    assert depth == 0


async def test_a_server_that_cannot_start_fails_the_job_with_a_clear_error(
    redis_url, redis_server, workers, openai_server, clean_env, tmp_path
):
    servers = {"ghost": {"command": str(tmp_path / "no-such-server")}}
    start_workers(workers, redis_url, openai_server, servers)
    async with messenger_runtime(redis_url, servers) as runtime, asyncio.timeout(60):
        result = await runtime.jobs.run(_request("Use the ghost.", ["ghost"]))
        assert result.status == "failed"
        assert result.error.startswith("cannot connect to MCP server 'ghost'")
        assert "no-such-server" in result.error
        assert openai_server.chat_requests == []  # the model was never called half-equipped
        assert (await runtime.jobs.run(_request("No tools."))).status == "completed"


async def test_cancelling_a_job_stops_it_while_a_tool_runs(
    redis_url, redis_server, workers, openai_server, clean_env, tmp_path
):
    log = tmp_path / "calls.jsonl"
    servers = {"clock": stdio_clock(log)}
    openai_server.script(tool_calls=[("clock__sleep", '{"seconds": 30}')])
    start_workers(workers, redis_url, openai_server, servers)
    async with messenger_runtime(redis_url, servers) as runtime, asyncio.timeout(60):
        job_id = await runtime.queue.submit(_request("Sleep.", ["clock"]), caller=ANONYMOUS)
        await eventually(lambda: calls_logged(log), timeout=30)
        started = time.monotonic()
        cancelled = await runtime.jobs.cancel(job_id)
        assert cancelled.status == "cancelled"
        assert time.monotonic() - started < 5
        assert [r.tool for r in cancelled.tool_calls] == ["sleep"]
        assert cancelled.tool_calls[0].result is None  # it never answered
        assert len(openai_server.chat_requests) == 1


async def test_a_slow_tool_is_given_up_after_tool_call_timeout_and_the_model_is_told(
    redis_url, redis_server, workers, openai_server, clean_env, tmp_path
):
    servers = {"clock": stdio_clock(tmp_path / "calls.jsonl")}
    openai_server.script(reply=ANSWER, tool_calls=[("clock__sleep", '{"seconds": 30}')])
    start_workers(workers, redis_url, openai_server, servers, TOOL_CALL_TIMEOUT_SECONDS="1")
    async with messenger_runtime(redis_url, servers) as runtime, asyncio.timeout(60):
        result = await runtime.jobs.run(_request("Sleep.", ["clock"]))
    assert result.status == "completed", result.error
    (record,) = result.tool_calls
    assert record.is_error and record.result == "Error: clock/sleep gave no answer within 1 s"
    assert result.ai_response == f"{ANSWER} Error: clock/sleep gave no answer within 1 s"


async def test_a_job_past_job_timeout_seconds_in_a_tool_fails_naming_the_setting(
    redis_url, redis_server, workers, openai_server, clean_env, tmp_path
):
    """The worker's first job opens the tool server (a Python process: seconds on a loaded box), so
    a job before it warms the one worker up: the timed job's 8 s are the model's and the tool's."""
    servers = {"clock": stdio_clock(tmp_path / "calls.jsonl")}
    openai_server.script(tool_calls=[])
    start_workers(workers, redis_url, openai_server, servers, JOB_TIMEOUT_SECONDS="8")
    async with messenger_runtime(redis_url, servers) as runtime, asyncio.timeout(60):
        assert (await runtime.jobs.run(_request("Ready?", ["clock"]))).status == "completed"
        openai_server.script(tool_calls=[("clock__sleep", '{"seconds": 30}')])
        result = await runtime.jobs.run(_request("Sleep.", ["clock"]))
        assert result.status == "failed"
        assert result.error == "the model call and its tool calls took longer than JOB_TIMEOUT_SECONDS=8"
        openai_server.script(tool_calls=[])
        assert (await runtime.jobs.run(_request("Still there?", ["clock"]))).status == "completed"


async def test_each_tool_result_is_published_as_soon_as_its_call_ends(
    redis_url, redis_server, workers, openai_server, clean_env, tmp_path
):
    servers = {"clock": stdio_clock(tmp_path / "calls.jsonl")}
    openai_server.script(
        reply=ANSWER, tool_calls=[("clock__sleep", '{"seconds": 1.5}'), ("clock__add", '{"a": 1, "b": 1}')]
    )
    start_workers(workers, redis_url, openai_server, servers)
    async with messenger_runtime(redis_url, servers) as runtime, asyncio.timeout(60):
        result = await runtime.jobs.run(_request("Both.", ["clock"]))
    assert result.status == "completed", result.error
    events = [e for e in stream_types(redis_server, result.job_id) if e["type"].startswith("tool_")]
    assert [(e["type"], e["tool"]) for e in events] == [
        ("tool_call", "sleep"), ("tool_call", "add"), ("tool_result", "add"), ("tool_result", "sleep"),
    ]  # fmt: skip
    assert events[3]["ts"] - events[2]["ts"] > 1  # the quick one did not wait for the slow one
    # the model still gets the results in the order it asked for them
    tool_messages = [m for m in openai_server.chat_requests[1].body["messages"] if m["role"] == "tool"]
    assert [m["content"] for m in tool_messages] == [f"{PREFIX} slept 1.5", f"{PREFIX} 2"]


async def test_at_most_32_calls_a_turn_run_and_the_rest_are_answered_with_an_error(
    redis_url, redis_server, workers, openai_server, clean_env, tmp_path
):
    log = tmp_path / "calls.jsonl"
    servers = {"clock": stdio_clock(log)}
    openai_server.script(
        reply=ANSWER, tool_calls=[("clock__add", f'{{"a": {i}, "b": 0}}') for i in range(40)]
    )
    start_workers(workers, redis_url, openai_server, servers)
    async with messenger_runtime(redis_url, servers) as runtime, asyncio.timeout(60):
        result = await runtime.jobs.run(_request("Many.", ["clock"]))
    assert result.status == "completed", result.error
    assert len(calls_logged(log)) == 32
    assert [r.is_error for r in result.tool_calls] == [False] * 32 + [True] * 8
    assert result.tool_calls[-1].result == "Error: not run: at most 32 tool calls a turn"


def _request(message: str, servers: list[str] | None = None):
    from shared.models import ChatRequest

    return ChatRequest(message=message, mcp_servers=servers)
