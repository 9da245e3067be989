"""The whole path: messenger runtime -> real Redis -> `worker` processes -> an OpenAI-compatible
server over HTTP -> tokens, result, usage and cost back to the caller."""

import asyncio
import json
from collections import Counter

import pytest
from openai_server import eventually, words
from processes import OPENAI_TEST_KEY, start_openai_workers, worker_ids
from readers import stream_events
from runtimes import runtime_for

from messenger.queue import ANONYMOUS
from shared.errors import JobNotFound
from shared.models import ChatRequest
from worker.providers.mock import mock_reply

API_KEY = OPENAI_TEST_KEY
REPLY = "Redis carries every token from the worker back to the caller, in order."
SLOW_REPLY = " ".join(f"w{i}" for i in range(400))  # 20 s at 50 ms a token: only a cancel ends it early


async def stored_result(client, job_id) -> dict:
    """arq's result record; the worker writes it just after the terminal event the caller saw."""
    return json.loads(await eventually(lambda: client.get(f"arq:result:{job_id}")))


@pytest.mark.parametrize("count", [1, 2])
async def test_reply_model_usage_and_cost_come_from_the_openai_server(
    redis_url, workers, openai_server, clean_env, redis_server, count
):
    openai_server.script(
        reply=REPLY, usage=(1000, 500), model="gpt-4o-mini-2024-07-18", expected_api_key=API_KEY
    )
    start_openai_workers(workers, redis_url, openai_server, count)
    request = ChatRequest(
        message="How do tokens travel?",
        context="Be brief.",
        model="gpt-4o-mini",
        temperature=0.2,
        max_tokens=99,
    )
    async with runtime_for(redis_url) as runtime, asyncio.timeout(30):
        result = await runtime.jobs.run(request)

    assert result.status == "completed", result.error
    assert result.ai_response == REPLY
    assert result.model == "gpt-4o-mini-2024-07-18"
    assert result.finish_reason == "stop"
    out = result.model_dump(mode="json")
    assert out["usage"] == {
        "promptTokens": 1000,
        "completionTokens": 500,
        "totalTokens": 1500,
        "estimatedCost": pytest.approx(0.00045),  # 1000 * $0.15/M + 500 * $0.60/M
        "estimated": False,  # the server reported usage
    }
    (sent,) = openai_server.chat_requests
    assert sent.api_key == API_KEY
    assert sent.body["model"] == "gpt-4o-mini"
    assert sent.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "How do tokens travel?"},
    ]
    assert sent.body["temperature"] == 0.2
    assert sent.body["max_tokens"] == 99
    assert sent.body["stream_options"] == {"include_usage": True}
    stored = await stored_result(redis_server.client(), result.job_id)
    assert stored["r"]["aiResponse"] == REPLY
    assert stored["r"]["usage"]["estimatedCost"] == pytest.approx(0.00045)


async def test_an_unpriced_model_has_no_cost_but_keeps_its_usage(
    redis_url, workers, openai_server, clean_env
):
    openai_server.script(reply=REPLY, usage=(12, 34))
    start_openai_workers(workers, redis_url, openai_server)
    async with runtime_for(redis_url) as runtime, asyncio.timeout(30):
        result = await runtime.jobs.run(ChatRequest(message="hi", model="my-local-llama"))
    assert result.status == "completed", result.error
    assert result.model == "my-local-llama"
    assert result.usage.prompt_tokens == 12 and result.usage.completion_tokens == 34
    assert result.usage.total_tokens == 46
    assert result.usage.estimated_cost is None, "an unpriced model is never reported as $0"


async def test_a_server_without_usage_still_completes_with_estimated_usage(
    redis_url, workers, openai_server, clean_env
):
    openai_server.script(reply=REPLY, include_usage=False)
    start_openai_workers(workers, redis_url, openai_server)
    async with runtime_for(redis_url) as runtime, asyncio.timeout(30):
        result = await runtime.jobs.run(ChatRequest(message="hi", model="gpt-4o-mini"))
    assert result.status == "completed", result.error
    assert result.ai_response == REPLY
    assert result.usage.completion_tokens == len(words(REPLY))
    assert result.usage.estimated_cost is not None and result.usage.estimated_cost > 0


async def test_a_rejected_key_fails_the_job_readably_and_the_key_is_nowhere_in_redis(
    redis_url, workers, openai_server, clean_env, redis_server
):
    openai_server.script(expected_api_key="sk-the-real-one")  # and it echoes the wrong key back
    start_openai_workers(workers, redis_url, openai_server)
    async with runtime_for(redis_url) as runtime, asyncio.timeout(30):
        result = await runtime.jobs.run(ChatRequest(message="hi", model="gpt-4o-mini"))
    assert result.status == "failed"
    assert "OPENAI_API_KEY" in result.error
    assert API_KEY not in result.error
    client = redis_server.client()
    for key in client.scan_iter("*"):
        kind = client.type(key)
        if kind == b"string":
            values = [v for v in [client.get(key)] if v is not None]  # arq:in-progress may just have gone
        elif kind == b"stream":
            values = [v for _, fields in client.xrange(key) for v in fields.values()]
        else:
            continue
        for value in values:
            assert API_KEY.encode() not in value, f"{key!r} holds the API key"
    assert API_KEY not in workers.logs()


async def test_the_same_prompt_gives_the_same_text_on_every_worker(
    redis_url, workers, clean_env, redis_server
):
    workers.start(redis_url, count=2, MOCK_TOKEN_DELAY_MS="10", WORKER_CONCURRENCY="3")
    request = ChatRequest(message="which worker am I on?")
    async with runtime_for(redis_url) as runtime, asyncio.timeout(45):
        results = await asyncio.gather(*(runtime.jobs.run(request) for _ in range(16)))
    assert {r.status for r in results} == {"completed"}
    assert {r.ai_response for r in results} == {"".join(mock_reply([{"content": request.message}]))}
    assert {r.worker_id for r in results} == worker_ids(redis_server.client()), "both workers took jobs"


async def test_twenty_concurrent_jobs_each_run_on_exactly_one_worker(
    redis_url, workers, clean_env, redis_server
):
    workers.start(redis_url, count=2, MOCK_TOKEN_DELAY_MS="5")
    prompts = [f"job number {i}" for i in range(20)]
    async with runtime_for(redis_url) as runtime, asyncio.timeout(45):
        results = await asyncio.gather(*(runtime.jobs.run(ChatRequest(message=p)) for p in prompts))
    client = redis_server.client()
    assert len({r.job_id for r in results}) == 20
    for prompt, result in zip(prompts, results, strict=True):
        assert result.status == "completed", result.error
        assert result.ai_response == "".join(mock_reply([{"content": prompt}])), "no text crossed jobs"
        kinds = Counter(e["type"] for e in stream_events(client, result.job_id))
        assert kinds["start"] == 1, f"job {result.job_id} started {kinds['start']} times"
        assert kinds["done"] == 1
        assert (await stored_result(client, result.job_id))["r"]["status"] == "completed"
    assert {r.worker_id for r in results} <= worker_ids(client)


async def test_every_value_in_redis_is_json_never_pickle(redis_url, workers, clean_env, redis_server):
    client = redis_server.client()
    async with runtime_for(redis_url) as runtime, asyncio.timeout(30):
        job_id = await runtime.queue.submit(
            ChatRequest(message="stored as JSON", max_tokens=50), caller=ANONYMOUS
        )
        queued = json.loads(client.get(f"arq:job:{job_id}"))  # no worker yet: still in the queue
        assert queued["f"] == "chat"
        assert queued["a"] == [{"message": "stored as JSON", "max_tokens": 50}]

        workers.start(redis_url, count=1)
        result = await runtime.jobs.wait(job_id, timeout=20)
        assert result.status == "completed", result.error

    stored = await stored_result(client, job_id)
    assert stored["r"]["status"] == "completed" and stored["r"]["jobId"] == job_id
    events = stream_events(client, job_id)
    assert events[0]["type"] == "start" and events[-1]["type"] == "done"
    assert [e["seq"] for e in events] == list(range(len(events)))
    heartbeats = [json.loads(client.get(key)) for key in client.scan_iter("mcpq:worker:*")]
    assert len(heartbeats) == 1 and heartbeats[0]["provider"] == "mock"


async def test_a_job_waits_queued_until_a_worker_starts_and_a_late_follower_gets_it_all(
    redis_url, workers, openai_server, clean_env
):
    openai_server.script(reply=REPLY)
    async with runtime_for(redis_url) as runtime, asyncio.timeout(40):
        job_id = await runtime.queue.submit(
            ChatRequest(message="anyone there?", model="gpt-4o-mini"), caller=ANONYMOUS
        )
        await asyncio.sleep(0.5)
        job = await runtime.jobs.get(job_id)
        assert job.status == "queued"
        assert [j.job_id for j in await runtime.jobs.list(status="queued")] == [job_id]

        start_openai_workers(workers, redis_url, openai_server)
        done = await runtime.jobs.wait(job_id, timeout=20)
        assert done.status == "completed", done.error
        assert done.ai_response == REPLY

        seen: list[str] = []

        async def on_event(event, transcript):
            if event is not None and event.type == "token":
                seen.append(event.text)

        again = await runtime.jobs.wait(job_id, timeout=5, on_event=on_event)
    assert again.status == "completed"
    assert again.ai_response == REPLY
    assert "".join(seen) == REPLY, "a follower arriving after the end replays every token"


async def test_an_unknown_job_id_is_job_not_found(redis_url, clean_env):
    async with runtime_for(redis_url) as runtime, asyncio.timeout(15):
        for job_id in ("0" * 32, "../../etc/passwd", ""):
            with pytest.raises(JobNotFound):
                await runtime.jobs.get(job_id)
            with pytest.raises(JobNotFound):
                await runtime.jobs.wait(job_id, timeout=1)
            with pytest.raises(JobNotFound):
                await runtime.jobs.cancel(job_id)


async def test_a_cancelled_queued_job_never_runs(redis_url, workers, openai_server, clean_env, redis_server):
    openai_server.script(reply=REPLY)
    async with runtime_for(redis_url) as runtime, asyncio.timeout(40):
        job_id = await runtime.queue.submit(
            ChatRequest(message="cancel me", model="gpt-4o-mini"), caller=ANONYMOUS
        )
        cancelled = await runtime.jobs.cancel(job_id)
        assert cancelled.status == "cancelled"

        start_openai_workers(workers, redis_url, openai_server)
        after = await runtime.jobs.run(ChatRequest(message="run me", model="gpt-4o-mini"))
        assert after.status == "completed", after.error
        await asyncio.sleep(1.5)  # past the workers' safety poll: a leftover queue entry would run now
        assert (await runtime.jobs.get(job_id)).status == "cancelled"

    asked = [r.body["messages"][-1]["content"] for r in openai_server.chat_requests]
    assert asked == ["run me"], "the cancelled job never reached the model"
    events = stream_events(redis_server.client(), job_id)
    assert [e["type"] for e in events] == ["cancelled"]


async def test_cancelling_a_running_job_stops_the_model_call(
    redis_url, workers, openai_server, clean_env, redis_server
):
    openai_server.script(reply=SLOW_REPLY, token_delay=0.05)
    start_openai_workers(workers, redis_url, openai_server)
    async with runtime_for(redis_url) as runtime, asyncio.timeout(40):
        job_id = await runtime.queue.submit(
            ChatRequest(message="talk forever", model="gpt-4o-mini", max_tokens=1000), caller=ANONYMOUS
        )

        async def has_text():
            return (await runtime.jobs.get(job_id)).ai_response

        await eventually(has_text, timeout=15)

        result = await runtime.jobs.cancel(job_id)
        assert result.status == "cancelled"
        await openai_server.wait_until(lambda: openai_server.disconnects, timeout=15)
        assert (await runtime.jobs.get(job_id)).status == "cancelled"

    (closed,) = openai_server.disconnects
    assert closed.sent_tokens < len(words(SLOW_REPLY)), "the worker closed the stream before its end"
    assert len(openai_server.chat_requests) == 1, "a cancelled job is not retried"
    client = redis_server.client()
    terminal = [e["type"] for e in stream_events(client, job_id) if e["type"] != "token"]
    assert terminal == ["start", "cancelled"]
    assert (await stored_result(client, job_id))["r"]["status"] == "cancelled"
