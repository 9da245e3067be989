"""Redis stopped for 3, 15 and 45 seconds while 24 jobs stream, with and without persistence: no
caller gets a wrong answer. For every job the text the caller was given equals the stored result
(`arq:result`) and the mock's whole answer; with persistence the job's stream also holds the final
attempt's events with no seq gap, whose tokens join to the answer, and one ending. Events a worker could not write are retried in
order until Redis is back, and a job never completes while its own events are unwritten."""

from __future__ import annotations

import asyncio
import json

import pytest
from observe import LONG_MESSAGE, Recorder, expected_text
from openai_server import eventually
from readers import stream_events
from runtimes import runtime_for

from shared import keys
from shared.models import ChatRequest

JOBS = 24


def stored_text(client, job_id: str) -> str:
    return json.loads(client.get(keys.result(job_id)))["r"]["aiResponse"]


def final_attempt_events(client, job_id: str, attempt: int) -> list[dict]:
    return [e for e in stream_events(client, job_id) if e.get("attempt") == attempt]


@pytest.mark.parametrize(
    ("outage", "persistent"),
    [(3, True), (3, False), (15, True), (15, False), (45, True), (45, False)],
    ids=["3s-aof", "3s-no-persistence", "15s-aof", "15s-no-persistence", "45s-aof", "45s-no-persistence"],
)
async def test_redis_down_mid_stream_every_caller_gets_exactly_the_stored_answer(
    make_redis, workers, clean_env, outage, persistent
):
    server = make_redis(persistent)
    url = server.url
    procs = workers.start(url, count=2, MOCK_TOKEN_DELAY_MS="80", WORKER_CONCURRENCY="16")
    messages = [f"job {i} {LONG_MESSAGE}" for i in range(JOBS)]
    seen = [Recorder() for _ in messages]
    async with runtime_for(url) as runtime, asyncio.timeout(outage + 150):
        calls = [
            asyncio.create_task(runtime.jobs.run(ChatRequest(message=m), r, timeout=outage + 120))
            for m, r in zip(messages, seen, strict=True)
        ]
        await eventually(lambda: all(r.words(1) >= 3 for r in seen), timeout=30)
        await asyncio.to_thread(server.stop)
        before = [r.words(1) for r in seen]
        await asyncio.sleep(outage)
        await asyncio.to_thread(server.start)
        results = await asyncio.gather(*calls)

    client = server.client()
    wrong = []
    for message, recorder, result in zip(messages, seen, results, strict=True):
        answer = expected_text(message)
        if result.status != "completed" or result.ai_response != answer:
            wrong.append((result.job_id, result.status, result.error, result.ai_response[:60]))
            continue
        # the caller's progress is the answer; without persistence the events written before the
        # restart are gone with it, so it can only be the answer's beginning
        streamed = recorder.text(result.attempt)
        assert (streamed == answer) if persistent else answer.startswith(streamed), (
            f"{result.job_id}: the streamed tokens are the answer's (attempt {result.attempt}, caller saw "
            f"{[(e.attempt, e.seq, e.type) for _, e in recorder.events][-6:]}, stream holds "
            f"{[(e['attempt'], e['seq'], e['type']) for e in stream_events(client, result.job_id)][-6:]})"
        )
        assert stored_text(client, result.job_id) == answer, (
            f"{result.job_id}: the stored result is the answer"
        )
        if persistent:
            events = final_attempt_events(client, result.job_id, result.attempt)
            assert [e["seq"] for e in events] == list(range(len(events))), f"{result.job_id}: a seq gap"
            assert "".join(e["text"] for e in events if e["type"] == "token") == answer
            assert [e["type"] for e in events if e["type"] in ("done", "error", "cancelled")] == ["done"]
    assert not wrong, f"{len(wrong)} of {JOBS} callers got a wrong answer: {wrong[:5]}"
    assert any(b < len(expected_text(messages[0]).split()) for b in before), "the outage came mid-stream"
    assert all(p.poll() is None for p in procs), f"a worker exited:\n{workers.logs()[-2000:]}"
