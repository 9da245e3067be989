"""Per-job timeout and provider failures: 429 and 5xx are retried (honouring Retry-After) up to
RETRY_ATTEMPTS; 4xx are not; every failure ends in one `error` event a person can act on, never a hang."""

import asyncio
import itertools

import pytest
from observe import terminal_events
from readers import stream_events
from runtimes import runtime_for

from shared.models import ChatRequest

REPLY = "Retried until the provider answered."
SLOW_REPLY = " ".join(f"w{i}" for i in range(400))


def start_openai_workers(workers, redis_url, server, **env):
    return workers.start(
        redis_url, AI_PROVIDER="openai", OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY="sk-x", **env
    )


async def ask(redis_url, model: str = "gpt-4o-mini"):
    async with runtime_for(redis_url) as runtime, asyncio.timeout(60):
        return await runtime.jobs.run(ChatRequest(message="hello", model=model), timeout=45)


def error_event(redis_server, job_id: str) -> dict:
    (terminal,) = terminal_events(stream_events(redis_server.client(), job_id))
    assert terminal["type"] == "error"
    return terminal


async def test_a_job_slower_than_job_timeout_seconds_fails_with_an_error_naming_it(
    redis_url, workers, openai_server, clean_env, redis_server
):
    openai_server.script(reply=SLOW_REPLY, token_delay=0.1)
    start_openai_workers(workers, redis_url, openai_server, JOB_TIMEOUT_SECONDS="1.5")
    result = await ask(redis_url)
    assert result.status == "failed"
    assert "JOB_TIMEOUT_SECONDS" in result.error
    assert "JOB_TIMEOUT_SECONDS" in error_event(redis_server, result.job_id)["error"]
    await openai_server.wait_until(lambda: openai_server.disconnects, timeout=10)
    assert len(openai_server.chat_requests) == 1


async def test_a_rate_limited_call_waits_out_retry_after_and_completes(
    redis_url, workers, openai_server, clean_env
):
    openai_server.script(reply=REPLY, status=429, retry_after=1, failures=2)
    start_openai_workers(workers, redis_url, openai_server, RETRY_ATTEMPTS="3")
    result = await ask(redis_url)
    assert result.status == "completed", result.error
    assert result.ai_response == REPLY
    sent = openai_server.chat_requests
    assert len(sent) == 3, "two 429s, then the answer"
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(sent)]
    assert min(gaps) >= 0.9, f"each retry waited out Retry-After: 1 (gaps {gaps})"


async def test_a_provider_failing_twice_with_500_is_retried_and_completes(
    redis_url, workers, openai_server, clean_env
):
    openai_server.script(reply=REPLY, status=500, failures=2)
    start_openai_workers(workers, redis_url, openai_server, RETRY_ATTEMPTS="3")
    result = await ask(redis_url)
    assert result.status == "completed", result.error
    assert result.ai_response == REPLY
    assert len(openai_server.chat_requests) == 3


@pytest.mark.parametrize(
    ("status", "message", "says"),
    [
        (401, "Incorrect API key provided.", "OPENAI_API_KEY"),
        (404, None, "gpt-4o-mini"),
        (400, "This model's maximum context length is 128000 tokens.", "maximum context length"),
    ],
    ids=["bad-key", "unknown-model", "context-too-long"],
)
async def test_a_request_the_provider_refuses_is_not_retried_and_says_why(
    redis_url, workers, openai_server, clean_env, redis_server, status, message, says
):
    openai_server.script(reply=REPLY, status=status, error_message=message)
    start_openai_workers(workers, redis_url, openai_server, RETRY_ATTEMPTS="3")
    result = await ask(redis_url)
    assert result.status == "failed"
    assert str(status) in result.error and says in result.error, result.error
    assert error_event(redis_server, result.job_id)["error"] == result.error
    assert len(openai_server.chat_requests) == 1, "a 4xx is not retried"
    assert result.ai_response == ""


async def test_a_provider_failing_more_often_than_retry_attempts_fails_the_job_saying_so(
    redis_url, workers, openai_server, clean_env, redis_server
):
    openai_server.script(reply=REPLY, status=500, failures=3)
    start_openai_workers(workers, redis_url, openai_server, RETRY_ATTEMPTS="1")
    result = await ask(redis_url)
    assert result.status == "failed"
    assert "the provider failed" in result.error and "500" in result.error, result.error
    assert "provider failed" in error_event(redis_server, result.job_id)["error"]
    assert len(openai_server.chat_requests) == 2, "the first call and RETRY_ATTEMPTS=1 retry"
