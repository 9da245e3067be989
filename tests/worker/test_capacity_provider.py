"""The openai SDK leaves 429s to the worker's shared cool-down (pinned: `_should_retry` is the SDK's
private hook), and still retries 5xx itself; the 429's Retry-After reaches the ProviderError."""

from __future__ import annotations

from openai import AsyncOpenAI
from stream_helpers import collect, failure, model_call

from worker.providers.openai import OpenAIProvider, _Client


def provider(server, retries: int = 3) -> OpenAIProvider:
    return OpenAIProvider(api_key="sk-test", base_url=server.base_url, timeout=10, max_retries=retries)


def test_the_sdk_hook_we_override_is_still_there():
    assert callable(getattr(AsyncOpenAI, "_should_retry", None)), "openai moved _should_retry: re-pin _Client"
    assert _Client._should_retry is not AsyncOpenAI._should_retry


async def test_a_429_is_not_retried_by_the_sdk_and_carries_its_retry_after(openai_server):
    openai_server.script(status=429, failures=1, retry_after=0.25)
    p = provider(openai_server)
    error = await failure(p, model_call("gpt-4o-mini"))
    await p.aclose()
    assert error.status == 429 and error.retry_after == 0.25
    assert len(openai_server.chat_requests) == 1, "one 429, one request: RETRY_ATTEMPTS does not multiply it"


async def test_a_500_is_still_retried_by_the_sdk(openai_server):
    openai_server.script(status=500, failures=1)
    p = provider(openai_server)
    pieces, _ = await collect(p, model_call("gpt-4o-mini"))
    await p.aclose()
    assert pieces and len(openai_server.chat_requests) == 2
