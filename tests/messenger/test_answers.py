"""The caller's answer is the job's stored result (`arq:result`), never a streamed transcript with a hole.

A job's stream here misses seq 3 (a batch a worker failed to write); the stored result has the whole
text. Every way of following the job answers with the stored result.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from arq.jobs import serialize_result
from test_tools import FakeContext

from messenger.collector import Transcript, replay, retold
from messenger.stored import lost_message
from messenger.tools import QueueTools
from shared import keys
from shared.errors import JobNotFound
from shared.events import DoneEvent, StartEvent, TokenEvent, TokenUsage, publish_events
from shared.models import JobResult, ResultUsage, ToolCallRecord
from shared.serializer import serialize

JOB = "gappedjob0123456789abcdef0123456"
WORDS = ["Mock ", "to: ", "restart ", "job 15"]
STORED = JobResult(
    job_id=JOB, status="completed", ai_response="".join(WORDS), model="mock-1", finish_reason="stop",
    usage=ResultUsage(prompt_tokens=3, completion_tokens=4, total_tokens=7), worker_id="w1", attempt=1,
)  # fmt: skip


def gapped_events():
    """seq 0..5 of one attempt without seq 3 (the word "restart ")."""
    at = {"job_id": JOB, "attempt": 1, "ts": time.time()}
    events = [StartEvent(**at, seq=0, worker_id="w1", model="mock-1")]
    events += [TokenEvent(**at, seq=seq, text=WORDS[seq - 1]) for seq in (1, 2, 4)]
    usage = TokenUsage(prompt_tokens=3, completion_tokens=4, total_tokens=7)
    events.append(DoneEvent(**at, seq=5, usage=usage, cost=None, finish_reason="stop", model="mock-1"))
    return [e for e in events if e.seq != 3]


async def store_result(redis, result: JobResult) -> None:
    now_ms = int(time.time() * 1000)
    data = serialize_result(
        "chat", ({},), {}, 1, now_ms, True, result.model_dump(mode="json"), now_ms, now_ms,
        f"{result.job_id}:chat", keys.QUEUE, job_id=result.job_id, serializer=serialize,
    )  # fmt: skip
    await redis.set(keys.result(result.job_id), data, ex=60)


async def test_the_gapped_stream_is_seen_as_gapped(embedded_runtime):
    await publish_events(embedded_runtime.redis, gapped_events())
    transcript = Transcript(JOB)
    await replay(embedded_runtime.redis, transcript)
    assert transcript.final and transcript.gaps == 1 and transcript.text == "Mock to: job 15"


async def test_a_reader_answers_with_the_stored_result_not_the_gapped_stream(embedded_runtime):
    redis, jobs = embedded_runtime.redis, embedded_runtime.jobs
    await redis.set(keys.in_progress(JOB), b"1", ex=60)  # a worker holds the job (none here stores it)
    await publish_events(redis, gapped_events())
    before = await jobs.get(JOB)
    assert before.status == "running" and before.finish_reason is None  # ended, but no whole answer yet

    done = asyncio.Event()

    async def on_event(event, transcript) -> None:
        if event is not None and event.type == "done":
            done.set()

    async with asyncio.timeout(20):
        waiting = asyncio.create_task(jobs.wait(JOB, timeout=15, on_event=on_event))
        await done.wait()  # the follower has the whole (gapped) stream; the result is stored only now
        await store_result(redis, STORED)
        answer = await waiting
    assert answer == STORED


async def test_every_read_path_gives_the_stored_result(embedded_runtime):
    redis, jobs = embedded_runtime.redis, embedded_runtime.jobs
    await publish_events(redis, gapped_events())
    await store_result(redis, STORED)
    tools, ctx = QueueTools(embedded_runtime), FakeContext()
    assert await jobs.get(JOB) == STORED
    assert await jobs.wait(JOB, timeout=5) == STORED
    assert await tools.wait_for_job(JOB, ctx) == STORED  # type: ignore[arg-type]
    assert await tools.get_job(JOB, ctx) == STORED  # type: ignore[arg-type]


async def test_a_job_redis_lost_but_a_worker_still_runs_reads_as_running(embedded_runtime):
    redis, jobs = embedded_runtime.redis, embedded_runtime.jobs
    with pytest.raises(JobNotFound, match="never existed"):
        await jobs.get(JOB)
    beat = {"worker_id": "w-lost", "running_jobs": {JOB: 1}, "last_seen": time.time()}
    await redis.set(keys.worker("w-lost"), json.dumps(beat), ex=10)
    assert (await jobs.get(JOB)).status == "running"


async def test_an_ended_job_whose_result_and_some_events_redis_lost_reads_as_failed_not_gapped(
    embedded_runtime,
):
    await publish_events(embedded_runtime.redis, gapped_events())  # no result, no keys, no worker holds it
    lost = await embedded_runtime.jobs.get(JOB)
    assert lost.status == "failed" and lost.ai_response == ""
    assert lost.error is not None and "Redis lost its stored result" in lost.error


async def test_a_followed_job_the_embedded_redis_lost_is_told_as_lost_not_a_redis_error(embedded_runtime):
    """The embedded fakeredis has no INFO, which says why a job was lost: the caller still gets the line."""
    told = await lost_message(embedded_runtime.redis, JOB, since=time.time())
    assert told.startswith(f"job {JOB} was lost: its keys were removed from Redis"), told


async def test_a_reader_arriving_just_after_the_last_event_still_answers_with_the_stored_result(
    embedded_runtime,
):
    redis, jobs = embedded_runtime.redis, embedded_runtime.jobs
    at = {"job_id": JOB, "attempt": 1, "ts": time.time()}
    whole = [StartEvent(**at, seq=0, worker_id="w1", model="mock-1")]
    whole += [TokenEvent(**at, seq=seq, text=word) for seq, word in enumerate(WORDS, 1)]
    usage = TokenUsage(prompt_tokens=3, completion_tokens=4, total_tokens=7)
    whole.append(DoneEvent(**at, seq=5, usage=usage, cost=None, finish_reason="stop", model="mock-1"))
    await publish_events(redis, whole)  # the whole answer streamed; arq has not stored the result yet
    stored = STORED.model_copy(update={"processing_time": 1.25})  # what only the stored result says
    replayed = asyncio.Event()

    async def on_event(event, transcript) -> None:
        if event is not None and event.type == "done":
            replayed.set()

    async with asyncio.timeout(20):
        waiting = asyncio.create_task(jobs.wait(JOB, timeout=15, on_event=on_event))
        await replayed.wait()
        await store_result(redis, stored)
        assert await waiting == stored


async def test_a_finished_jobs_stream_expires_soon_after_its_ending_and_its_result_stays(embedded_runtime):
    redis = embedded_runtime.redis
    await publish_events(redis, gapped_events())
    await store_result(redis, STORED)
    assert 0 < await redis.ttl(keys.stream(JOB)) <= keys.ENDED_STREAM_SECONDS < keys.KEEP_RESULT_SECONDS


async def test_a_reader_after_the_stream_expired_is_told_the_whole_story_from_the_stored_result(
    embedded_runtime,
):
    redis, jobs = embedded_runtime.redis, embedded_runtime.jobs
    call = ToolCallRecord(
        call_id="c1", server="clock", tool="now", arguments={}, round=1, result="12:00", duration_ms=3.0
    )
    with_tool = STORED.model_copy(update={"tool_calls": [call]})
    await store_result(redis, with_tool)  # and no stream: it expired after the ending
    seen: list[tuple[str, str]] = []

    async def on_event(event, transcript) -> None:
        seen.append((event.type, getattr(event, "text", "")))

    result = await jobs.wait(JOB, timeout=5, on_event=on_event)
    assert result.ai_response == "Mock to: restart job 15"
    assert seen == [("start", ""), ("tool_call", ""), ("tool_result", ""), ("token", "Mock to: restart job 15"),
                    ("done", "")]  # fmt: skip

    told = Transcript(JOB)
    for event in retold(with_tool):
        assert told.position(event) == "next"
        told.apply(event)
    again = told.result()
    assert (again.status, again.ai_response, again.usage, again.model) == ("completed", STORED.ai_response,
                                                                           STORED.usage, "mock-1")  # fmt: skip
    assert [c.result for c in again.tool_calls] == ["12:00"]


@pytest.mark.parametrize("status", ["failed", "cancelled"])
async def test_a_job_that_did_not_complete_is_retold_with_its_ending(status):
    result = JobResult(job_id=JOB, status=status, error="boom" if status == "failed" else None, attempt=2)
    told = Transcript(JOB)
    for event in retold(result):
        told.apply(event)
    assert (told.status, told.attempt, told.text) == (status, 2, "")
    assert told.error == ("boom" if status == "failed" else "cancelled by request")
