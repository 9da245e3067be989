"""OpenAIProvider with the real `openai` SDK against a real HTTP chat-completions server."""

import asyncio
import json
import socket
import urllib.request

import pytest
from openai_server import words
from stream_helpers import collect, model_call
from stream_helpers import failure as stream_failure

from shared.events import TokenUsage
from worker.providers import ModelCall, ProviderError
from worker.providers.openai import OpenAIProvider

KEY = "sk-test-0123456789abcdef"
LONG_REPLY = " ".join(f"word{i}" for i in range(300))


def call(model: str = "gpt-4o-mini", **changes) -> ModelCall:
    return model_call(model, **changes)


@pytest.fixture
async def provider(openai_server):
    p = OpenAIProvider(api_key=KEY, base_url=openai_server.base_url, timeout=10, max_retries=0)
    yield p
    await p.aclose()


async def failure(provider: OpenAIProvider, model_call: ModelCall | None = None) -> ProviderError:
    return await stream_failure(provider, model_call or call())


async def test_tokens_arrive_in_order_and_join_to_the_reply(openai_server, provider):
    reply = "Queues decouple callers from workers, and every token arrives in order."
    openai_server.script(reply=reply)
    pieces, end = await collect(provider, call())
    assert pieces == words(reply)
    assert "".join(pieces) == reply
    assert end.finish_reason == "stop"
    assert end.model == "gpt-4o-mini"
    assert openai_server.streams[0].finished and not openai_server.disconnects


async def test_usage_is_taken_from_the_final_usage_chunk(openai_server, provider):
    openai_server.script(reply="one two three", usage=(31, 3), model="gpt-4o-mini-2024-07-18")
    _, end = await collect(provider, call())
    assert end.usage == TokenUsage(prompt_tokens=31, completion_tokens=3, total_tokens=34)
    assert end.usage.estimated is False
    assert end.model == "gpt-4o-mini-2024-07-18", "the model name the server reports is kept"


async def test_a_server_without_usage_gives_an_estimate_flagged_as_such(openai_server, provider):
    openai_server.script(reply="one two three four", include_usage=False)
    pieces, end = await collect(provider, call())
    assert "".join(pieces) == "one two three four"
    assert end.usage.estimated is True
    assert end.usage is not None
    assert end.usage.completion_tokens == 4
    assert end.usage.prompt_tokens > 0
    assert end.usage.total_tokens == end.usage.prompt_tokens + end.usage.completion_tokens


async def test_the_request_carries_model_messages_temperature_max_tokens_and_usage_option(
    openai_server, provider
):
    model_call = call(model="test-model", temperature=0.25, max_tokens=77)
    await collect(provider, model_call)
    (sent,) = openai_server.chat_requests
    assert sent.body["model"] == "test-model"
    assert sent.body["messages"] == model_call.messages
    assert sent.body["temperature"] == 0.25
    assert sent.body["max_tokens"] == 77
    assert sent.body["stream"] is True
    assert sent.body["stream_options"] == {"include_usage": True}
    assert sent.api_key == KEY


async def test_a_reply_cut_by_max_tokens_reports_length(openai_server, provider):
    openai_server.script(reply="a b c d e f g h")
    pieces, end = await collect(provider, call(max_tokens=3))
    assert "".join(pieces) == "a b c "
    assert end.finish_reason == "length"


async def test_rejected_key_is_not_retryable_and_never_shows_the_key(openai_server, provider):
    openai_server.script(expected_api_key="sk-the-right-one")  # the server echoes the wrong key back
    error = await failure(provider)
    assert error.retryable is False
    assert error.status == 401
    assert "OPENAI_API_KEY" in error.message
    assert KEY not in error.message
    assert KEY not in str(error)
    assert "sk-the-right-one" not in error.message


async def test_unknown_model_names_the_model(openai_server, provider):
    openai_server.script(status=404)
    error = await failure(provider, call(model="gpt-nonexistent"))
    assert "gpt-nonexistent" in error.message
    assert error.retryable is False
    assert error.status == 404


@pytest.mark.parametrize("status", [500, 503])
async def test_server_errors_are_retryable(openai_server, provider, status):
    openai_server.script(status=status)
    error = await failure(provider)
    assert error.retryable is True
    assert error.status == status
    assert len(openai_server.chat_requests) == 1, "max_retries=0: the SDK did not retry by itself"


async def test_rate_limit_is_retryable(openai_server, provider):
    openai_server.script(status=429, retry_after=1)
    error = await failure(provider)
    assert error.retryable is True
    assert error.status == 429
    assert "429" in error.message


async def test_connection_refused_is_retryable_and_points_at_openai_base_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    provider = OpenAIProvider(api_key=KEY, base_url=f"http://127.0.0.1:{port}/v1", timeout=5, max_retries=0)
    try:
        error = await failure(provider)
        assert error.retryable is True
        assert "OPENAI_BASE_URL" in error.message
        assert KEY not in error.message
        assert await provider.check() is not None, "check() reports the unreachable server"
    finally:
        await provider.aclose()


async def test_check_reports_a_reachable_server_and_a_rejected_key(openai_server, provider):
    assert await provider.check() is None
    openai_server.script(expected_api_key="sk-other")
    problem = await provider.check()
    assert problem is not None and "OPENAI_API_KEY" in problem and KEY not in problem


async def test_closing_the_stream_midway_disconnects_from_the_server(openai_server, provider):
    openai_server.script(reply=LONG_REPLY, token_delay=0.02)
    stream = provider.stream(call(max_tokens=1000))
    async with asyncio.timeout(20):
        received = [await anext(stream) for _ in range(3)]
        await stream.aclose()
        await openai_server.wait_until(lambda: openai_server.disconnects)
    assert "".join(received) == "".join(words(LONG_REPLY)[:3])
    (closed,) = openai_server.disconnects
    assert closed.sent_tokens < len(words(LONG_REPLY))


async def test_fake_server_speaks_the_real_stream_byte_format(openai_server):
    """The fake must look like llama-server/OpenAI on the wire, or the tests above prove little."""
    openai_server.script(reply="Hi there")
    body = json.dumps(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    req = urllib.request.Request(
        openai_server.base_url + "/chat/completions", body, {"Content-Type": "application/json"}
    )

    def fetch() -> tuple[str, str]:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.headers["content-type"], r.read().decode()

    content_type, raw = await asyncio.to_thread(fetch)
    assert content_type.startswith("text/event-stream")
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: {") for e in events[:-2])
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:3]] == ["Hi ", "there"]
    assert chunks[3]["choices"][0]["finish_reason"] == "stop"
    assert chunks[4]["choices"] == [] and chunks[4]["usage"]["completion_tokens"] == 2
    assert len(chunks) == 5


async def test_a_plain_http_server_gets_each_job_on_one_kept_connection_with_the_sdks_headers(
    openai_server, provider
):
    """worker/providers/openai_http.py: the SDK's headers and key, the connection kept for the next
    job, and one the server closed meanwhile replaced without the job noticing."""
    replies = ["one two", "three four", "five six"]
    closing = await asyncio.start_server(lambda _, writer: writer.close(), "127.0.0.1", 0)
    for reply in replies:
        openai_server.script(reply=reply)
        pieces, _ = await collect(provider, call())
        assert "".join(pieces) == reply
        assert provider.lean is not None and len(provider.lean.idle) == 1
        if reply == replies[1]:  # the kept connection is one its server closes (an idle timeout)
            provider.lean.idle.pop()[1].close()
            provider.lean.idle.append(
                await asyncio.open_connection("127.0.0.1", closing.sockets[0].getsockname()[1])
            )
    closing.close()
    sent = openai_server.chat_requests
    assert len(sent) == 3
    assert {r.headers["authorization"] for r in sent} == {f"Bearer {KEY}"}
    assert {r.headers["user-agent"] for r in sent} == {
        OpenAIProvider(api_key=KEY, base_url=None, timeout=1, max_retries=0).client.user_agent
    }


@pytest.mark.parametrize(
    ("base_url", "env", "lean"),
    [
        ("http://127.0.0.1:8080/v1", {}, True),
        ("https://api.openai.com/v1", {}, False),  # TLS: the SDK's
        ("http://10.0.0.5:8000/v1", {"HTTP_PROXY": "http://proxy:3128"}, False),  # a proxy applies
        ("http://10.0.0.5:8000/v1", {"HTTP_PROXY": "http://proxy:3128", "NO_PROXY": "10.0.0.5"}, True),
        ("http://10.0.0.5:8000/v1", {"ALL_PROXY": "http://proxy:3128"}, False),
    ],
)
def test_only_a_plain_http_server_no_proxy_applies_to_is_asked_over_the_lean_connection(
    base_url, env, lean, monkeypatch
):
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    provider = OpenAIProvider(api_key=KEY, base_url=base_url, timeout=1, max_retries=0)
    assert (provider.lean is not None) is lean
