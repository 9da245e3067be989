"""Tool use in a chat job without real Redis: the embedded runtime (in-memory Redis, in-process
worker, mock provider) with the real stdio clock server, the mock provider's tool requests on their
own, and the OpenAI provider's tool-call streaming against the OpenAI-compatible test server."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from mcp_clock_server import PREFIX
from readers import job_events
from runtimes import CLOCK, clock_worker, embedded
from stream_helpers import collect

from shared.models import ChatRequest
from worker.providers import ModelCall, StreamEnd, ToolCall, ToolSpec
from worker.providers.mock import MockProvider
from worker.providers.openai import OpenAIProvider

# module-level marker, as in test_mock_provider.py: parametrized async tests need it
pytestmark = pytest.mark.anyio


def logged(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def call_log(tmp_path) -> Path:
    return tmp_path / "calls.jsonl"


@pytest.fixture
async def runtime(clean_env, call_log):
    servers = {
        "clock": {"command": sys.executable, "args": [CLOCK], "env": {"CLOCK_CALL_LOG": str(call_log)}}
    }
    async with embedded(clean_env, mcp_servers=servers) as rt:
        yield rt


# -- a chat job that uses the clock, end to end in one process -------------------------------------


async def test_a_job_calls_the_tool_the_message_asks_for_and_answers_with_its_result(runtime, call_log):
    async with asyncio.timeout(60):
        result = await runtime.jobs.run(ChatRequest(message="what time is it now?", mcp_servers=["clock"]))
        stored = await runtime.jobs.get(result.job_id)
        events = await job_events(runtime.redis, result.job_id)

    assert result.status == "completed", result.error
    assert result.finish_reason == "stop"
    (record,) = result.tool_calls
    assert (record.server, record.tool, record.arguments, record.round) == ("clock", "now", {}, 1)
    assert record.result is not None and record.result.startswith(f"{PREFIX} ")
    assert record.is_error is False and record.duration_ms is not None and record.duration_ms >= 0
    # the model's answer is built on the tool's result (the mock echoes it)
    assert result.ai_response.startswith(f"Mock answer to: {record.result} —"), result.ai_response
    # the tool really ran, once, on the configured server
    assert [c["tool"] for c in logged(call_log)] == ["now"]
    # what get_job reads from the worker's result agrees with what the follower saw
    assert stored.status == "completed"
    assert [r.model_dump() for r in stored.tool_calls] == [record.model_dump()]
    assert stored.ai_response == result.ai_response

    kinds = [e.type for e in events]
    assert kinds[:3] == ["start", "tool_call", "tool_result"], kinds
    assert kinds[-1] == "done"
    assert set(kinds[3:-1]) == {"token"}, kinds
    assert [e.seq for e in events] == list(range(len(events)))
    assert {e.attempt for e in events} == {1}
    call_event, result_event = events[1], events[2]
    assert (call_event.server, call_event.tool, call_event.arguments, call_event.round) == (
        "clock",
        "now",
        {},
        1,
    )
    assert result_event.call_id == call_event.call_id == record.call_id
    assert result_event.result == record.result and result_event.is_error is False
    assert "".join(e.text for e in events if e.type == "token") == result.ai_response


async def test_a_message_that_mentions_no_tool_gets_a_plain_answer(runtime, call_log):
    async with asyncio.timeout(60):
        result = await runtime.jobs.run(ChatRequest(message="tell me about queues", mcp_servers=["clock"]))
        events = await job_events(runtime.redis, result.job_id)
    assert result.status == "completed", result.error
    assert result.tool_calls == []
    assert result.ai_response.startswith("Mock answer to: tell me about queues —")
    assert not any(e.type in ("tool_call", "tool_result") for e in events)
    assert logged(call_log) == []


async def test_without_mcp_servers_a_job_offers_no_tools(runtime, call_log):
    async with asyncio.timeout(60):
        result = await runtime.jobs.run(ChatRequest(message="what time is it now?"))
    assert result.status == "completed", result.error
    assert result.tool_calls == []
    assert result.ai_response.startswith("Mock answer to: what time is it now? —")
    assert logged(call_log) == []


# -- the mock provider's tool requests ---------------------------------------------------------------

CLOCK_TOOLS = (
    ToolSpec(
        "clock__now", "The current time.", {"type": "object", "properties": {"tz": {"type": "integer"}}}
    ),
    ToolSpec(
        "clock__add",
        "Add two integers.",
        {"type": "object", "properties": {"a": {}, "b": {}}, "required": ["a", "b"]},
    ),
    ToolSpec("clock__broken", "Always fails.", {"type": "object", "properties": {}}),
)


def mock_call(message: str, tools=CLOCK_TOOLS) -> ModelCall:
    return ModelCall(
        model="mock-1",
        messages=[{"role": "user", "content": message}],
        temperature=0.7,
        max_tokens=1000,
        tools=tools,
    )


async def end_of(call: ModelCall) -> tuple[list[str], StreamEnd]:
    pieces = [p async for p in MockProvider().stream(call)]
    *text, end = pieces
    assert isinstance(end, StreamEnd)
    return text, end


@pytest.mark.parametrize(
    ("message", "asked"),
    [
        ("What time is it NOW?", ["clock__now"]),
        ("is the clock broken, or is it just now slow?", ["clock__now", "clock__broken"]),
        ("please add 2 and 2", []),  # add needs arguments: the mock never guesses them
        ("knowledge nowhere", []),  # whole words only
        ("tell me a story", []),
    ],
)
async def test_the_mock_asks_for_exactly_the_mentioned_tools_that_need_no_arguments(message, asked):
    text, end = await end_of(mock_call(message))
    if asked:
        assert text == []
        assert end.finish_reason == "tool_calls"
        assert [c.name for c in end.tool_calls] == asked
        assert all(c.arguments == "{}" for c in end.tool_calls)
        assert len({c.id for c in end.tool_calls}) == len(asked)
    else:
        assert end.tool_calls == () and end.finish_reason == "stop"
        assert "".join(text).startswith(f"Mock answer to: {message}")


async def test_the_mock_asks_for_no_tools_when_none_are_offered():
    text, end = await end_of(mock_call("what time is it now?", tools=()))
    assert end.tool_calls == () and end.finish_reason == "stop" and text


async def test_after_the_tool_turn_the_mock_answers_with_the_results():
    call = mock_call("what time is it now?")
    messages = [
        *call.messages,
        {"role": "assistant", "content": None, "tool_calls": [{"id": "mock-call-0", "type": "function"}]},
        {"role": "tool", "tool_call_id": "mock-call-0", "content": f"{PREFIX} 12:00"},
    ]
    text, end = await end_of(ModelCall(**{**call.__dict__, "messages": messages}))
    assert end.tool_calls == () and end.finish_reason == "stop"
    assert "".join(text).startswith(f"Mock answer to: {PREFIX} 12:00 —")


# -- the OpenAI provider's tool calls ----------------------------------------------------------------


@pytest.fixture
async def openai_provider(openai_server):
    provider = OpenAIProvider(api_key="sk-test", base_url=openai_server.base_url, timeout=10, max_retries=0)
    yield provider
    await provider.aclose()


async def test_openai_tool_calls_are_joined_from_their_pieces(openai_server, openai_provider):
    now_args = '{"timezone_offset_hours": -5}'
    add_args = '{"a": 40, "b": 2, "note": "the answer, of course"}'
    openai_server.script(
        tool_preamble="Let me check the clock.",
        tool_calls=[("clock__now", now_args), ("clock__add", add_args)],
    )
    call = ModelCall(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "What time is it, and what is 40 + 2?"}],
        temperature=0.2,
        max_tokens=100,
        tools=CLOCK_TOOLS,
    )
    pieces, end = await collect(openai_provider, call)

    assert "".join(pieces) == "Let me check the clock."
    assert end.finish_reason == "tool_calls"
    assert [(c.name, c.arguments) for c in end.tool_calls] == [
        ("clock__now", now_args),
        ("clock__add", add_args),
    ]
    assert all(isinstance(c, ToolCall) and c.id.startswith("call_") for c in end.tool_calls)
    assert len({c.id for c in end.tool_calls}) == 2
    assert json.loads(end.tool_calls[1].arguments) == {"a": 40, "b": 2, "note": "the answer, of course"}

    (request,) = openai_server.chat_requests
    assert request.body["tools"] == [
        {
            "type": "function",
            "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
        }
        for t in CLOCK_TOOLS
    ]


async def test_openai_without_tools_sends_no_tools_and_ends_with_no_tool_calls(
    openai_server, openai_provider
):
    openai_server.script(reply="plain answer", tool_calls=[("clock__now", "{}")])
    call = ModelCall(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], temperature=0.2, max_tokens=100
    )
    pieces, end = await collect(openai_provider, call)
    assert "".join(pieces) == "plain answer"
    assert end.tool_calls == () and end.finish_reason == "stop"
    (request,) = openai_server.chat_requests
    assert "tools" not in request.body


async def test_tools_whose_names_sanitise_alike_stay_separately_callable():
    from shared.tool_client import RemoteTool
    from worker.tool_use import open_toolbox

    class TwoTools:  # a server offering `get.x` and `get_x`: both become `srv__get_x` when sanitised
        def check_names(self, names):
            pass

        async def tools(self, name):
            return [RemoteTool(name, "get.x", "", {}), RemoteTool(name, "get_x", "", {})]

    toolbox = await open_toolbox(TwoTools(), ["srv"])
    names = [spec.name for spec in toolbox.specs]
    assert len(set(names)) == 2
    assert sorted(toolbox.routes[n] for n in names) == [("srv", "get.x"), ("srv", "get_x")]


async def test_tool_calls_are_counted_in_the_worker_metrics(runtime, call_log):
    from prometheus_client import generate_latest

    async with asyncio.timeout(60):
        await runtime.jobs.run(ChatRequest(message="now, please", mcp_servers=["clock"]))
    scraped = generate_latest(runtime.metrics.registry).decode()
    assert 'mcpq_worker_tool_calls_total{outcome="ok",server="clock"} 1.0' in scraped
    assert "mcpq_worker_tool_call_seconds_count 1.0" in scraped


async def test_three_tools_whose_names_sanitise_alike_get_three_names():
    from shared.tool_client import RemoteTool
    from worker.tool_use import open_toolbox

    class Tools:
        def check_names(self, names):
            pass

        async def tools(self, name):
            return [RemoteTool(name, n, "", {}) for n in ("get.x", "get_x", "get_x_1")]

    toolbox = await open_toolbox(Tools(), ["srv"])
    assert len({spec.name for spec in toolbox.specs}) == 3 == len(toolbox.routes)


# -- call_tool: one downstream tool call as a job (the messenger's server/tool tools) ----------------


async def _run_call_tool(clean_env, monkeypatch, request: dict, **settings):
    from worker.job import call_tool

    async with clock_worker(monkeypatch, **settings) as (redis, state):
        out = await call_tool({"mcpq": state, "job_id": "job-t", "job_try": 1, "redis": redis}, request)
        events = await job_events(redis, "job-t")
    return out, events


async def test_call_tool_runs_the_tool_and_ends_with_done(clean_env, monkeypatch):
    out, events = await _run_call_tool(
        clean_env, monkeypatch, {"server": "clock", "tool": "add", "arguments": {"a": 1, "b": 2}}
    )
    assert out["status"] == "completed" and out["aiResponse"] == f"{PREFIX} 3"
    assert out["toolCalls"][0]["result"] == f"{PREFIX} 3" and out["finishReason"] == "stop"
    assert [e.type for e in events] == ["start", "tool_call", "tool_result", "done"]


async def test_call_tool_with_an_invalid_request_fails_with_one_error_event(clean_env, monkeypatch):
    out, events = await _run_call_tool(clean_env, monkeypatch, {"server": "a__b", "tool": "x"})
    assert out["status"] == "failed" and "server" in out["error"]
    assert [e.type for e in events] == ["start", "error"]


async def test_call_tool_past_job_timeout_fails_naming_the_setting(clean_env, monkeypatch):
    out, events = await _run_call_tool(
        clean_env, monkeypatch, {"server": "clock", "tool": "sleep", "arguments": {"seconds": 30}},
        job_timeout_seconds=3,
    )  # fmt: skip
    assert out["status"] == "failed"
    assert out["error"] == "the tool call took longer than JOB_TIMEOUT_SECONDS=3"
    assert [e.type for e in events] == ["start", "tool_call", "error"]
