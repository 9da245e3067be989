"""A submit whose reply a dropped connection lost (a failover, a network blip) is sent again by
redis-py's retry: the job it queued the first time is its job, never "already exists" to a caller
whose job then runs anyway."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator

import pytest
from redis_server import RedisServer
from relays import losing_one_reply
from runtimes import runtime_for

from shared import keys
from shared.connection import connect
from shared.errors import QueueUnavailable
from shared.models import ChatRequest

JOB = "b" * 32


async def test_a_submit_sent_again_after_its_reply_was_lost_answers_its_job_queued_once(
    redis_server, redis_url
):
    async with losing_one_reply(redis_server.port, JOB.encode()) as port:
        async with runtime_for(f"redis://127.0.0.1:{port}/0") as runtime:
            await runtime.queue.submit(ChatRequest(message="first"), caller="alice")  # Redis knows the script
            assert await runtime.queue.submit(ChatRequest(message="hi"), caller="alice", job_id=JOB) == JOB
            queued = await runtime.jobs.get(JOB)
    assert queued.status == "queued", queued
    client = redis_server.client()
    assert client.zscore(keys.QUEUE, JOB) is not None and client.zcard(keys.QUEUE) == 2


async def test_a_submit_sent_again_after_its_job_already_ran_answers_its_job(
    redis_server, redis_url, workers
):
    """The job the first try queued ran to its end before the retry came (a worker took it at once: a
    short job, a retry after a failover's seconds): the retry still answers its job id, whose answer
    the caller then reads, not 'job … already exists'."""
    workers.start(redis_url)
    reconnect = asyncio.Event()
    watcher = connect(redis_url)
    await watcher.config_set("notify-keyspace-events", "K$")  # (SET of a key: an event on its channel)
    stored = watcher.pubsub()
    await stored.subscribe(f"__keyspace@0__:{keys.result(JOB)}")
    try:
        async with losing_one_reply(redis_server.port, JOB.encode(), reconnect) as port:
            async with runtime_for(f"redis://127.0.0.1:{port}/0") as runtime, asyncio.timeout(30):
                await runtime.queue.submit(
                    ChatRequest(message="first"), caller="alice"
                )  # Redis knows the script
                submitting = asyncio.create_task(
                    runtime.queue.submit(ChatRequest(message="hi"), caller="alice", job_id=JOB)
                )
                while await stored.get_message(ignore_subscribe_messages=True, timeout=None) is None:
                    pass  # until the job ran to its end (its result stored), before the retry
                reconnect.set()
                assert await submitting == JOB
                done = await runtime.jobs.get(JOB)
    finally:
        await watcher.config_set("notify-keyspace-events", "")
        await stored.aclose()
        await watcher.aclose()
    assert done.status == "completed", done


@contextlib.asynccontextmanager
async def frozen_during_a_submit(
    tmp_path, thaw_after: float
) -> AsyncIterator[tuple[RedisServer, asyncio.Task]]:
    """A Redis of its own, stopped (SIGSTOP: a frozen VM, a stall) while a submit of JOB is made, and
    thawed once the submit answered or `thaw_after` seconds passed; the server and the submit."""
    server = RedisServer(tmp_path)
    server.start()
    assert server.proc is not None
    try:
        async with runtime_for(server.url) as runtime:
            await runtime.queue.submit(ChatRequest(message="first"), caller="alice")
            os.kill(server.proc.pid, signal.SIGSTOP)
            try:
                submitting = asyncio.create_task(
                    runtime.queue.submit(ChatRequest(message="hi"), caller="alice", job_id=JOB)
                )
                await asyncio.wait([submitting], timeout=thaw_after)
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
            yield server, submitting
    finally:
        server.stop()


async def test_a_submit_while_redis_is_frozen_past_the_batchs_wait_answers_its_job_once_it_thaws(
    tmp_path, monkeypatch
):
    """Redis stopped for longer than the shared pipeline waits: the submit it held cannot tell whether
    Redis will run it, so it asks again and answers once Redis does; never an error for a job that
    Redis, once thawed, queues and runs anyway."""
    monkeypatch.setattr("shared.connection.BATCH_STUCK_SECONDS", 0.2)
    async with frozen_during_a_submit(tmp_path, thaw_after=1.5) as (server, submitting):  # well past it
        assert not submitting.done() or submitting.result() == JOB, "told before Redis answered"
        async with asyncio.timeout(20):
            assert await submitting == JOB
        client = server.client()
        assert client.zscore(keys.QUEUE, JOB) is not None and client.zcard(keys.QUEUE) == 2


async def test_a_submit_redis_never_answers_is_told_its_job_may_still_run(tmp_path, monkeypatch):
    """Redis stopped past the submit's patience too (or the connection dead): one line naming the job
    that Redis may still queue and run, not a wait for ever nor a plain "unreachable"."""
    monkeypatch.setattr("shared.connection.BATCH_STUCK_SECONDS", 0.2)
    monkeypatch.setattr("messenger.queue.SUBMIT_PATIENCE_SECONDS", 0.3)
    async with frozen_during_a_submit(tmp_path, thaw_after=10) as (_, submitting):
        assert submitting.done(), "still waiting after both waits"
        with pytest.raises(QueueUnavailable) as told:
            submitting.result()
    assert f"may still queue and run it (see get_job {JOB})" in str(told.value)
