"""A queued job's cancel whose `cancelled` event redis-py sent again (the connection dropped with the
write's reply on the way: a failover, a network blip) is in the job's stream once: a reader of the
stream (redis-cli, a follower resuming by event id) sees no copy."""

from __future__ import annotations

import hashlib
import time

from readers import follow
from relays import losing_one_reply
from runtimes import runtime_for

from shared import keys
from shared.events import _append  # pyright: ignore[reportPrivateUsage]
from shared.models import ChatRequest


async def test_a_cancel_event_sent_again_after_its_reply_was_lost_is_stored_once(redis_server, redis_url):
    client = redis_server.client()
    client.script_load(_append.lua)  # type: ignore[attr-defined]  # (the EVALSHA finds it)
    events_write = hashlib.sha1(_append.lua.encode()).hexdigest().encode()  # type: ignore[attr-defined]
    async with losing_one_reply(redis_server.port, events_write) as port:
        async with runtime_for(f"redis://127.0.0.1:{port}/0") as runtime:
            job_id = await runtime.queue.submit(ChatRequest(message="never runs"), caller="operator")
            cancelled = await runtime.jobs.cancel(job_id)
    assert cancelled.status == "cancelled"
    stored = [fields[b"event"] for _, fields in client.xrange(keys.stream(job_id))]
    assert sum(b'"type":"cancelled"' in event for event in stored) == 1, stored


async def test_a_queued_cancel_whose_reply_was_lost_ends_the_job_with_its_event(redis_server, redis_url):
    """The cancel's MULTI ran, its reply lost: redis-py cannot send a WATCHed transaction again (it
    raises WatchError). The job is cancelled all the same: its `cancelled` event is in the stream for
    its followers, and no abort request is left for a job that is gone."""
    client = redis_server.client()
    async with losing_one_reply(redis_server.port, b"cancelled before it started") as port:
        async with runtime_for(f"redis://127.0.0.1:{port}/0") as runtime:
            job_id = await runtime.queue.submit(ChatRequest(message="never runs"), caller="operator")
            following, heard = await follow(runtime.jobs, job_id)
            cancelled = await runtime.jobs.cancel(job_id)
            started = time.monotonic()
            followed = await following
            waited = time.monotonic() - started
    assert cancelled.status == "cancelled" and followed.status == "cancelled", (cancelled, followed)
    assert heard == ["cancelled"] and waited < 2, (heard, waited)  # (not its idle re-check, 5 s on)
    stored = [fields[b"event"] for _, fields in client.xrange(keys.stream(job_id))]
    assert sum(b'"type":"cancelled"' in event for event in stored) == 1, stored
    assert client.zscore(keys.ABORT_SET, job_id) is None and not client.exists(keys.cancel(job_id))


async def test_a_queued_job_whose_stream_key_holds_junk_is_cancelled_and_its_cancel_says_so(
    redis_server, redis_url, caplog
):
    """The job is taken off the queue and its result stored; only its `cancelled` event cannot be
    written (a stream key of another type): the cancel answers `cancelled`, the refusal is logged,
    where the cancel raised Redis's WRONGTYPE for a job it had cancelled."""
    client = redis_server.client()
    async with runtime_for(redis_url) as runtime:
        job_id = await runtime.queue.submit(ChatRequest(message="never runs"), caller="operator")
        client.hset(keys.stream(job_id), "junk", "1")
        cancelled = await runtime.jobs.cancel(job_id)
    assert cancelled.status == "cancelled", cancelled
    assert client.zscore(keys.QUEUE, job_id) is None
    assert "WRONGTYPE" in caplog.text and "cancelled" in caplog.text
