"""BedrockProvider against a real boto3 `bedrock-runtime` client, without AWS.

How the client is faked, and why: botocore's `Stubber` checks the request we send (`expected_params`)
and fakes client errors, but it cannot fake a Converse *event stream* — it validates the stubbed
response against the output shape, and a stream of events is not a dict. So the Stubber answers with
an empty stream, and an `after-call` hook replaces it with a real `botocore.eventstream.EventStream`
reading genuine AWS event-stream bytes (binary frames with CRCs) from a fake HTTP body. The SDK's own
decoder therefore turns those frames into the same event dicts it yields in production, including
errors raised inside the stream. Nothing leaves the process.
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
import threading
import time
import zlib
from pathlib import Path

import boto3
import pytest
from botocore.eventstream import EventStream
from botocore.parsers import EventStreamJSONParser
from botocore.stub import Stubber
from stream_helpers import collect, model_call
from stream_helpers import failure as stream_failure

from shared.events import TokenUsage
from shared.models import JobResult
from worker.providers import ModelCall, ProviderError, ToolCall, ToolSpec
from worker.providers.bedrock import BedrockProvider, to_converse

MODEL = "anthropic.claude-3-5-haiku-20241022-v1:0"
CLOCK_SERVER = Path(__file__).resolve().parents[1] / "mcp_clock_server.py"
KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def frame(headers: dict[str, str], payload: dict) -> bytes:
    """One message in the AWS event-stream wire format (string headers, JSON payload)."""
    head = b"".join(
        bytes([len(k)]) + k.encode() + b"\x07" + struct.pack(">H", len(v)) + v.encode()
        for k, v in headers.items()
    )
    body = json.dumps(payload).encode()
    prelude = struct.pack(">II", 16 + len(head) + len(body), len(head))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + head + body
    return message + struct.pack(">I", zlib.crc32(message))


def event(kind: str, payload: dict) -> bytes:
    return frame(
        {":event-type": kind, ":content-type": "application/json", ":message-type": "event"}, payload
    )


def stream_error(code: str, message: str) -> bytes:
    return frame(
        {":exception-type": code, ":content-type": "application/json", ":message-type": "exception"},
        {"message": message},
    )


def reply_frames(pieces: list[str], *, stop: str = "end_turn", usage=(12, 3)) -> list[bytes]:
    return [
        event("messageStart", {"role": "assistant"}),
        *(event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": p}}) for p in pieces),
        event("contentBlockStop", {"contentBlockIndex": 0}),
        event("messageStop", {"stopReason": stop}),
        event(
            "metadata",
            {
                "usage": {"inputTokens": usage[0], "outputTokens": usage[1], "totalTokens": sum(usage)},
                "metrics": {"latencyMs": 42},
            },
        ),
    ]


def tool_use_frames(index: int, tool_id: str, name: str, parts: list[str]) -> list[bytes]:
    """A toolUse content block: its id and name first, then the input JSON in pieces."""
    return [
        event(
            "contentBlockStart",
            {"contentBlockIndex": index, "start": {"toolUse": {"toolUseId": tool_id, "name": name}}},
        ),
        *(
            event("contentBlockDelta", {"contentBlockIndex": index, "delta": {"toolUse": {"input": p}}})
            for p in parts
        ),
        event("contentBlockStop", {"contentBlockIndex": index}),
    ]


WEATHER = ToolSpec(
    name="get_weather",
    description="Current weather for a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
CLOCK = ToolSpec(name="clock", description="", parameters={"type": "object", "properties": {}})

# One tool round in the OpenAI chat format, as the job keeps it.
TOOL_ROUND = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Weather in Paris and the time?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "tooluse_a1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {"id": "tooluse_b2", "type": "function", "function": {"name": "clock", "arguments": "{}"}},
        ],
    },
    {"role": "tool", "tool_call_id": "tooluse_a1", "content": '{"temp_c": 18}'},
    {"role": "tool", "tool_call_id": "tooluse_b2", "content": "Error: clock is unavailable"},
]
TOOL_ROUND_CONVERSE = [
    {"role": "user", "content": [{"text": "Weather in Paris and the time?"}]},
    {
        "role": "assistant",
        "content": [
            {"toolUse": {"toolUseId": "tooluse_a1", "name": "get_weather", "input": {"city": "Paris"}}},
            {"toolUse": {"toolUseId": "tooluse_b2", "name": "clock", "input": {}}},
        ],
    },
    {
        "role": "user",
        "content": [
            {"toolResult": {"toolUseId": "tooluse_a1", "content": [{"text": '{"temp_c": 18}'}]}},
            {
                "toolResult": {
                    "toolUseId": "tooluse_b2",
                    "content": [{"text": "Error: clock is unavailable"}],
                    "status": "error",
                }
            },
        ],
    },
]


class FakeBody:
    """The HTTP body an EventStream reads: yields frames (optionally slowly), records close()."""

    def __init__(self, frames: list[bytes], delay: float = 0.0):
        self.frames = frames
        self.delay = delay
        self.closed = threading.Event()
        self.sent = 0

    def stream(self):
        for f in self.frames:
            if self.closed.is_set():
                return
            if self.delay:
                time.sleep(self.delay)  # a blocking read, as urllib3's is
            self.sent += 1
            yield f

    def close(self):
        self.closed.set()


class FakeBedrock:
    """A real bedrock-runtime client whose ConverseStream answers come from queued FakeBodies."""

    def __init__(self):
        self.session = boto3.Session(
            region_name="us-east-1", aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET
        )
        self.client = self.session.client("bedrock-runtime")
        self.stubber = Stubber(self.client)
        self.bodies: list[FakeBody] = []
        self.client.meta.events.register("after-call.bedrock-runtime.ConverseStream", self._swap_stream)
        self.stubber.activate()

    def answer(self, body: FakeBody, expected_params: dict | None = None) -> FakeBody:
        self.stubber.add_response("converse_stream", {"stream": {}}, expected_params)
        self.bodies.append(body)
        return body

    def reply(self, pieces: list[str], **kw) -> FakeBody:
        return self.answer(FakeBody(reply_frames(pieces, **kw)))

    def fail(self, code: str, message: str, status: int) -> None:
        self.stubber.add_client_error(
            "converse_stream", service_error_code=code, service_message=message, http_status_code=status
        )

    def _swap_stream(self, parsed, **_):
        if "stream" in parsed:
            shape = self.client.meta.service_model.operation_model("ConverseStream").output_shape
            parsed["stream"] = EventStream(
                self.bodies.pop(0), shape.members["stream"], EventStreamJSONParser(), "ConverseStream"
            )


def call(model: str = MODEL, **changes) -> ModelCall:
    return model_call(model, **changes)


@pytest.fixture
def bedrock():
    fake = FakeBedrock()
    yield fake
    fake.stubber.deactivate()


@pytest.fixture
def provider(bedrock):
    return BedrockProvider(client=bedrock.client, session=bedrock.session)


async def failure(provider: BedrockProvider, model_call: ModelCall | None = None) -> ProviderError:
    return await stream_failure(provider, model_call or call())


async def test_tokens_arrive_in_order_and_join_to_the_reply(bedrock, provider):
    pieces_sent = ["Queues ", "decouple ", "callers ", "from ", "workers."]
    body = bedrock.reply(pieces_sent)
    pieces, end = await collect(provider, call())
    assert pieces == pieces_sent
    assert "".join(pieces) == "Queues decouple callers from workers."
    assert end.model == MODEL
    assert body.sent == len(body.frames) and body.closed.is_set()
    bedrock.stubber.assert_no_pending_responses()


async def test_usage_and_finish_reason_are_mapped(bedrock, provider):
    bedrock.reply(["a"], usage=(31, 3))
    _, end = await collect(provider, call())
    assert end.usage == TokenUsage(prompt_tokens=31, completion_tokens=3, total_tokens=34)
    assert end.finish_reason == "stop" and end.extra == {"stop_reason": "end_turn"}

    bedrock.reply(["a", "b"], stop="max_tokens")
    _, end = await collect(provider, call())
    assert end.finish_reason == "length"


async def test_the_request_carries_model_messages_system_and_inference_config(bedrock, provider):
    expected = {
        "modelId": MODEL,
        "system": [{"text": "You are terse."}],
        "messages": [
            {"role": "user", "content": [{"text": "Say hello to the queue"}]},
            {"role": "assistant", "content": [{"text": "Hello."}]},
            {"role": "user", "content": [{"text": "Again"}, {"text": "please"}]},
        ],
        "inferenceConfig": {"maxTokens": 64, "temperature": 0.3},
    }
    bedrock.answer(FakeBody(reply_frames(["ok"])), expected_params=expected)
    messages = [
        *call().messages,
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Again"},
        {"role": "user", "content": "please"},  # same-role turns merge: Converse needs alternation
    ]
    pieces, _ = await collect(provider, call(messages=messages))
    assert pieces == ["ok"]  # the Stubber raises if the request differs from `expected`


async def test_the_request_offers_the_tools_as_tool_config(bedrock, provider):
    expected = {
        "modelId": MODEL,
        "system": [{"text": "You are terse."}],
        "messages": [{"role": "user", "content": [{"text": "Say hello to the queue"}]}],
        "inferenceConfig": {"maxTokens": 64, "temperature": 0.3},
        "toolConfig": {
            "tools": [
                {
                    "toolSpec": {
                        "name": "get_weather",
                        "description": "Current weather for a city",
                        "inputSchema": {"json": WEATHER.parameters},
                    }
                },
                # no description: Bedrock refuses an empty one
                {"toolSpec": {"name": "clock", "inputSchema": {"json": CLOCK.parameters}}},
            ]
        },
    }
    bedrock.answer(FakeBody(reply_frames(["ok"])), expected_params=expected)
    pieces, end = await collect(provider, call(tools=(WEATHER, CLOCK)))
    assert pieces == ["ok"] and end.tool_calls == ()


async def test_text_then_tool_use_blocks_end_with_the_tool_calls(bedrock, provider):
    frames = [
        event("messageStart", {"role": "assistant"}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Let me "}}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "check."}}),
        event("contentBlockStop", {"contentBlockIndex": 0}),
        *tool_use_frames(1, "tooluse_a1", "get_weather", ['{"ci', 'ty": "Pa', 'ris"}']),
        *tool_use_frames(2, "tooluse_b2", "clock", []),  # no arguments at all
        event("messageStop", {"stopReason": "tool_use"}),
        event("metadata", {"usage": {"inputTokens": 310, "outputTokens": 41, "totalTokens": 351}}),
    ]
    body = bedrock.answer(FakeBody(frames))
    pieces, end = await collect(provider, call(tools=(WEATHER, CLOCK)))
    assert pieces == ["Let me ", "check."]  # the tool input is never streamed as text
    assert end.finish_reason == "tool_calls" and end.extra == {"stop_reason": "tool_use"}
    assert end.tool_calls == (
        ToolCall(id="tooluse_a1", name="get_weather", arguments='{"city": "Paris"}'),
        ToolCall(id="tooluse_b2", name="clock", arguments="{}"),
    )
    assert end.usage == TokenUsage(prompt_tokens=310, completion_tokens=41, total_tokens=351)
    assert body.closed.is_set()


def test_a_tool_round_converts_to_alternating_converse_turns():
    system, turns = to_converse(TOOL_ROUND)
    assert system == [{"text": "You are terse."}]
    assert turns == TOOL_ROUND_CONVERSE


def test_tool_round_edges_convert_without_empty_text_blocks():
    messages = [
        {"role": "system", "content": ""},
        {"role": "user", "content": "Go"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "clock", "arguments": "not json"}},
                {"id": "t2", "type": "function", "function": {"name": "clock", "arguments": "[1, 2]"}},
            ],
        },
        {"role": "tool", "tool_call_id": "t1", "content": ""},
        {"role": "tool", "tool_call_id": "t2", "content": None},
        {"role": "user", "content": "And now?"},  # joins the tool results: roles must alternate
        {"role": "assistant", "content": ""},  # nothing to send
    ]
    system, turns = to_converse(messages)
    assert system == []
    assert turns == [
        {"role": "user", "content": [{"text": "Go"}]},
        {
            "role": "assistant",
            "content": [
                {"text": "Checking."},
                {"toolUse": {"toolUseId": "t1", "name": "clock", "input": {}}},
                {"toolUse": {"toolUseId": "t2", "name": "clock", "input": {}}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"toolResult": {"toolUseId": "t1", "content": [{"text": "(no output)"}]}},
                {"toolResult": {"toolUseId": "t2", "content": [{"text": "(no output)"}]}},
                {"text": "And now?"},
            ],
        },
    ]


async def test_a_tool_round_is_sent_with_the_tools_and_without_them_still_gets_a_tool_config(
    bedrock, provider
):
    base = {
        "modelId": MODEL,
        "system": [{"text": "You are terse."}],
        "messages": TOOL_ROUND_CONVERSE,
        "inferenceConfig": {"maxTokens": 64, "temperature": 0.3},
    }
    offered = {"tools": [{"toolSpec": {"name": "clock", "inputSchema": {"json": CLOCK.parameters}}}]}
    bedrock.answer(FakeBody(reply_frames(["18 C."])), expected_params={**base, "toolConfig": offered})
    pieces, _ = await collect(provider, call(messages=TOOL_ROUND, tools=(CLOCK,)))
    assert pieces == ["18 C."]

    # Bedrock refuses toolUse/toolResult blocks without a toolConfig: declare what the history used
    from_history = {
        "tools": [
            {"toolSpec": {"name": "get_weather", "inputSchema": {"json": {"type": "object"}}}},
            {"toolSpec": {"name": "clock", "inputSchema": {"json": {"type": "object"}}}},
        ]
    }
    bedrock.answer(FakeBody(reply_frames(["18 C."])), expected_params={**base, "toolConfig": from_history})
    pieces, _ = await collect(provider, call(messages=TOOL_ROUND))
    assert pieces == ["18 C."]
    bedrock.stubber.assert_no_pending_responses()


async def test_usage_is_estimated_for_a_tool_round_without_metadata(bedrock, provider):
    frames = [
        event("messageStart", {"role": "assistant"}),
        *tool_use_frames(0, "tooluse_c3", "clock", ["{", "}"]),
        event("messageStop", {"stopReason": "tool_use"}),
    ]
    bedrock.answer(FakeBody(frames))
    _, end = await collect(provider, call(messages=TOOL_ROUND, tools=(CLOCK,)))  # content None inside
    assert end.tool_calls == (ToolCall(id="tooluse_c3", name="clock", arguments="{}"),)
    assert end.usage is not None and end.usage.estimated
    assert end.usage.completion_tokens == 2  # one per streamed input piece


async def test_throttling_is_retryable(bedrock, provider):
    bedrock.fail("ThrottlingException", "Too many requests, please wait before trying again.", 429)
    err = await failure(provider)
    assert err.retryable and err.status == 429
    assert "ThrottlingException" in err.message and "Too many requests" in err.message


async def test_a_service_error_inside_the_stream_is_retryable_and_keeps_partial_text(bedrock, provider):
    frames = [*reply_frames(["part "])[:2], stream_error("serviceUnavailableException", "try later")]
    bedrock.answer(FakeBody(frames))
    pieces: list[str] = []
    with pytest.raises(ProviderError) as info:
        async for piece in provider.stream(call()):
            pieces.append(piece)  # type: ignore[arg-type]
    assert pieces == ["part "]
    assert info.value.retryable and "try later" in info.value.message


async def test_access_denied_is_not_retryable_names_credentials_and_leaks_no_secret(bedrock, provider):
    bedrock.fail(
        "AccessDeniedException",
        f"User with key {KEY_ID} (secret {SECRET}) is not authorized to perform: bedrock:InvokeModel",
        403,
    )
    err = await failure(provider)
    assert not err.retryable and err.status == 403
    assert "AWS credentials" in err.message and "not authorized" in err.message
    assert KEY_ID not in err.message and SECRET not in err.message


async def test_unrecognized_client_names_credentials(bedrock, provider):
    bedrock.fail("UnrecognizedClientException", "The security token included in the request is invalid.", 403)
    err = await failure(provider)
    assert not err.retryable and "check AWS credentials" in err.message


async def test_validation_error_surfaces_the_service_message(bedrock, provider):
    bedrock.fail("ValidationException", "The provided model identifier is invalid.", 400)
    err = await failure(provider, call(model="anthropic.nope"))
    assert not err.retryable
    assert "The provided model identifier is invalid." in err.message and "anthropic.nope" in err.message


async def test_model_not_found_names_the_model(bedrock, provider):
    bedrock.fail("ResourceNotFoundException", "Model not found.", 404)
    err = await failure(provider, call(model="anthropic.claude-9"))
    assert not err.retryable and "'anthropic.claude-9' was not found" in err.message


async def test_missing_credentials_are_named(monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    provider = BedrockProvider(region="us-east-1", timeout=5, max_retries=0)
    err = await failure(provider)
    assert "AWS credentials" in err.message and not err.retryable


def test_no_region_gives_a_message_naming_aws_region(monkeypatch, tmp_path):
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with pytest.raises(ProviderError, match="AWS_REGION"):
        BedrockProvider(region=None)


async def test_closing_the_generator_early_closes_the_stream(bedrock, provider):
    body = bedrock.answer(FakeBody(reply_frames([f"w{i} " for i in range(50)])))
    gen = provider.stream(call())
    assert await anext(gen) == "w0 "
    await gen.aclose()
    assert body.closed.is_set()
    assert body.sent < len(body.frames)


async def test_cancelling_the_consumer_closes_the_stream(bedrock, provider):
    body = bedrock.answer(FakeBody(reply_frames([f"w{i} " for i in range(50)]), delay=0.02))

    async def consume():
        async for _ in provider.stream(call()):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.15)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert body.closed.is_set()


async def test_the_event_loop_keeps_running_while_the_stream_blocks(bedrock, provider):
    bedrock.answer(FakeBody(reply_frames(["a ", "b ", "c"]), delay=0.1))  # ~0.8 s of blocking reads
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    t = asyncio.create_task(ticker())
    try:
        pieces, _ = await collect(provider, call())
    finally:
        t.cancel()
    assert "".join(pieces) == "a b c"
    assert ticks >= 20, f"the loop was blocked (only {ticks} ticks)"


async def test_make_provider_builds_bedrock(clean_env):
    from shared.settings import load_settings
    from worker.providers import make_provider

    provider = make_provider(load_settings(ai_provider="bedrock", aws_region="eu-west-1"))
    assert isinstance(provider, BedrockProvider) and provider.region == "eu-west-1"
    await provider.aclose()


async def test_a_chat_job_through_bedrock_completes_with_priced_usage(
    bedrock, provider, clean_env, monkeypatch
):
    from shared.connection import connect
    from shared.settings import load_settings
    from worker.job import WorkerState, chat
    from worker.publisher import EventWriter

    monkeypatch.setattr("shared.connection._memory_server", None)
    redis = connect("memory://")
    bedrock.reply(["Hello ", "queue."], usage=(1000, 2000))
    state = WorkerState(
        settings=load_settings(redis_url="memory://", ai_provider="bedrock"),
        provider=provider,
        worker_id="worker-test",
        writer=EventWriter(redis),
    )
    try:
        out = await chat(
            {"mcpq": state, "job_id": "job-bedrock", "job_try": 1, "redis": redis},
            {"message": "hi", "model": MODEL},
        )
    finally:
        await redis.aclose()
    result = JobResult.model_validate(out)
    assert out["status"] == "completed" and result.error is None
    assert out["aiResponse"] == "Hello queue."
    assert out["model"] == MODEL and out["finishReason"] == "stop"
    # anthropic.claude-3-5-haiku: $0.80 in, $4.00 out per 1M tokens
    assert out["usage"] == {
        "promptTokens": 1000,
        "completionTokens": 2000,
        "totalTokens": 3000,
        "estimatedCost": pytest.approx(0.0008 + 0.008),
        "estimated": False,  # Bedrock reported the counts
    }


async def test_a_chat_job_with_tools_runs_a_real_mcp_tool_through_bedrock(
    bedrock, provider, clean_env, monkeypatch
):
    """The job's tool loop with Bedrock: toolUse → the clock server runs → toolResult → the answer."""
    from shared.connection import connect
    from shared.settings import load_settings
    from shared.tool_client import ToolServers
    from shared.tool_config import ToolServerConfig
    from worker.job import WorkerState, chat
    from worker.publisher import EventWriter

    sent: list[dict] = []
    bedrock.client.meta.events.register(
        "provide-client-params.bedrock-runtime.ConverseStream", lambda params, **_: sent.append(params)
    )
    first = tool_use_frames(0, "tooluse_add1", "clock__add", ['{"a": 2', ', "b": 3}'])
    first += [
        event("messageStop", {"stopReason": "tool_use"}),
        event("metadata", {"usage": {"inputTokens": 100, "outputTokens": 10, "totalTokens": 110}}),
    ]
    bedrock.answer(FakeBody([event("messageStart", {"role": "assistant"}), *first]))
    bedrock.reply(["The sum is ", "5."], usage=(200, 5))

    monkeypatch.setattr("shared.connection._memory_server", None)
    redis = connect("memory://")
    servers = ToolServers({"clock": ToolServerConfig(command=sys.executable, args=[str(CLOCK_SERVER)])})
    state = WorkerState(
        settings=load_settings(redis_url="memory://", ai_provider="bedrock"),
        provider=provider,
        worker_id="worker-test",
        writer=EventWriter(redis),
        tool_servers=servers,
    )
    try:
        out = await chat(
            {"mcpq": state, "job_id": "job-tools", "job_try": 1, "redis": redis},
            {"message": "add 2 and 3", "model": MODEL, "mcp_servers": ["clock"]},
        )
    finally:
        await servers.aclose()
        await redis.aclose()

    assert out["status"] == "completed", out["error"]
    assert out["aiResponse"] == "The sum is 5."
    (record,) = out["toolCalls"]
    assert (record["tool"], record["arguments"], record["result"]) == (
        "add",
        {"a": 2, "b": 3},
        "CLOCK-7f3a 5",
    )
    assert out["usage"]["promptTokens"] == 300 and out["usage"]["completionTokens"] == 15
    assert out["usage"]["estimatedCost"] == pytest.approx((300 * 0.8 + 15 * 4.0) / 1e6)
    offered = {t["toolSpec"]["name"] for t in sent[0]["toolConfig"]["tools"]}
    assert offered == {"clock__now", "clock__add", "clock__broken", "clock__reject", "clock__sleep"}
    result_block = sent[1]["messages"][-1]["content"][0]["toolResult"]
    assert result_block["toolUseId"] == "tooluse_add1"
    assert result_block["content"] == [{"text": "CLOCK-7f3a 5"}]
