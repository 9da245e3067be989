"""The messenger's reads of the queue: follow a job, read, cancel and list jobs (submitting is
messenger/queue.py's).

Every read is built from what Redis holds (arq's keys plus the job's event stream), so any
messenger replica can answer for any job.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable

from arq.jobs import SerializationError, deserialize_job_raw, deserialize_result, serialize_result
from redis.exceptions import RedisError, WatchError

from messenger.collector import Transcript, follow_events, replay
from messenger.hub import EventHub
from messenger.queue import ANONYMOUS, JobQueue, new_job_id
from shared import keys
from shared.errors import JobNotFound
from shared.events import CancelledEvent, Event, publish_events
from shared.models import FINAL_STATUSES, ChatRequest, JobResult, JobStatus, ToolCallRequest
from shared.serializer import deserialize, serialize
from shared.settings import Settings

_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,100}$")

OnEvent = Callable[[Event | None, Transcript], Awaitable[None]]


class JobClient:
    """Reads, follows, lists and cancels jobs; new ones come in through `queue` (messenger/queue.py)."""

    def __init__(self, redis, hub: EventHub, settings: Settings, queue: JobQueue):
        self.redis = redis
        self.hub = hub
        self.settings = settings
        self.queue = queue

    async def run(
        self,
        request: ChatRequest | ToolCallRequest,
        on_event: OnEvent | None = None,
        timeout: float | None = None,
        caller: str = ANONYMOUS,
    ) -> JobResult:
        """Submit and follow to the end. Subscribes first, so not one token can be missed."""
        job_id = new_job_id()
        async with self.hub.follow(job_id) as live:
            await self.queue.submit(request, caller=caller, job_id=job_id)
            return await self._follow(job_id, live, on_event, timeout)

    async def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        on_event: OnEvent | None = None,
        reader: str | None = None,
    ) -> JobResult:
        """Follow an existing job until it ends or `timeout` passes; returns its state either way."""
        _check_id(job_id)
        async with self.hub.follow(job_id) as live:
            snapshot = await self.get(job_id, reader)
            if snapshot.status in FINAL_STATUSES:
                if on_event:  # a late follower still sees the whole story
                    transcript = Transcript(job_id)
                    for event in (await replay(self.redis, transcript))[0]:
                        await on_event(event, transcript)
                return snapshot
            return await self._follow(job_id, live, on_event, timeout)

    async def get(self, job_id: str, reader: str | None = None) -> JobResult:
        """A job's state. With a `reader`, a job another caller owns is as unknown as a missing one."""
        _check_id(job_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(keys.result(job_id))
            pipe.exists(keys.in_progress(job_id))
            pipe.exists(keys.job(job_id))
            pipe.get(keys.owner(job_id))
            raw_result, running, queued, owner = await pipe.execute()
        if reader is not None and (owner is None or owner.decode() != reader):
            raise JobNotFound(job_id)
        transcript = Transcript(job_id)
        await replay(self.redis, transcript)
        if raw_result is not None:
            return _from_arq_result(job_id, raw_result, transcript)
        if transcript.final:
            return transcript.result()
        if running or queued or transcript.attempt:
            snapshot = transcript.result()
            snapshot.status = "running" if running else "queued"
            return snapshot
        raise JobNotFound(job_id)

    async def cancel(self, job_id: str, reader: str | None = None) -> JobResult:
        """Stop a job: a queued one is taken off the queue here; a running one is aborted by its worker."""
        snapshot = await self.get(job_id, reader)
        if snapshot.status in FINAL_STATUSES:
            return snapshot
        if await self._cancel_queued(job_id, snapshot.attempt + 1):
            return await self.get(job_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(keys.cancel(job_id), b"1", ex=int(self.settings.job_timeout_seconds) + 600)
            pipe.zadd(keys.ABORT_SET, {job_id: int(time.time() * 1000)})
            pipe.publish(keys.WAKEUP_CHANNEL, b"cancel")
            await pipe.execute()
        return await self.wait(job_id, timeout=10)

    async def list(
        self, status: JobStatus | None = None, limit: int = 50, reader: str | None = None
    ) -> list[JobResult]:
        """Recent jobs, newest first; with a `reader`, only the jobs it owns."""
        window = keys.RECENT_JOBS_KEPT if reader is not None else max(limit * 4, 200)
        recent = await self.redis.zrevrange(keys.RECENT_JOBS, 0, window - 1)
        if reader is not None and recent:
            owners = await self.redis.mget([keys.owner(raw_id.decode()) for raw_id in recent])
            recent = [
                raw_id for raw_id, owner in zip(recent, owners, strict=True) if owner == reader.encode()
            ]
        jobs: list[JobResult] = []
        for raw_id in recent:
            try:
                job = await self.get(raw_id.decode())
            except JobNotFound:
                continue
            if status is None or job.status == status:
                jobs.append(job)
                if len(jobs) >= limit:
                    break
        return jobs

    async def queue_depth(self) -> int:
        return await self.redis.zcard(keys.QUEUE)

    async def timeline(self, job_id: str) -> tuple[int, int]:
        """When a job was enqueued and when its last event came, in ms (the enqueue time if none yet)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zscore(keys.RECENT_JOBS, job_id)
            pipe.xrevrange(keys.stream(job_id), count=1)
            enqueued, last = await pipe.execute()
        updated = int(last[0][0].split(b"-")[0]) if last else None
        created = int(enqueued) if enqueued is not None else updated or int(time.time() * 1000)
        return created, max(created, updated or created)

    async def _follow(
        self, job_id: str, live: asyncio.Queue, on_event: OnEvent | None, timeout: float | None
    ):
        transcript = Transcript(job_id)
        try:
            async with asyncio.timeout(timeout):
                async for event in follow_events(self.redis, transcript, live):
                    if on_event:
                        await on_event(event, transcript)
                    if event is None:  # quiet for a while: did the job end without us seeing it?
                        try:
                            snapshot = await self.get(job_id)
                        except (RedisError, OSError):
                            continue  # Redis is restarting; the hub resubscribes and we re-read the stream
                        if snapshot.status in FINAL_STATUSES:
                            return snapshot
            return transcript.result()
        except TimeoutError:
            return await self.get(job_id)

    async def _cancel_queued(self, job_id: str, attempt: int) -> bool:
        """Atomically take a job that no worker holds off the queue and record it as cancelled.

        Writing the in-progress key makes a worker that is about to claim the job fail its WATCH.
        """
        async with self.redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(keys.in_progress(job_id), keys.job(job_id))
                if await pipe.exists(keys.in_progress(job_id)):
                    return False
                raw_job = await pipe.get(keys.job(job_id))
                if raw_job is None:
                    return False
                function, args, kwargs, _, enqueue_ms = deserialize_job_raw(raw_job, deserializer=deserialize)
                now_ms = int(time.time() * 1000)
                result = JobResult(job_id=job_id, status="cancelled", error="cancelled before it started")
                data = serialize_result(
                    function, args, kwargs, attempt, enqueue_ms, True, result.model_dump(mode="json"),
                    now_ms, now_ms, f"{job_id}:{function}", keys.QUEUE, job_id=job_id, serializer=serialize,
                )  # fmt: skip
                pipe.multi()
                pipe.psetex(keys.in_progress(job_id), 1000, b"cancelled")
                pipe.zrem(keys.QUEUE, job_id)
                pipe.delete(keys.job(job_id), keys.retry(job_id))
                pipe.set(keys.result(job_id), data, ex=keys.KEEP_RESULT_SECONDS)
                pipe.hdel(keys.BUDGET_RESERVED, job_id)  # it will never run: give back its budget
                pipe.hdel(keys.BUDGET_RESERVED_TENANT, job_id)
                pipe.zrem(keys.BUDGET_RESERVED_UNTIL, job_id)
                await pipe.execute()
            except WatchError:
                return False
        event = CancelledEvent(job_id=job_id, seq=0, attempt=attempt, ts=time.time())
        await publish_events(self.redis, [event])
        return True


def _check_id(job_id: str) -> None:
    if not _JOB_ID.match(job_id):
        raise JobNotFound(job_id)


def _from_arq_result(job_id: str, raw: bytes, transcript: Transcript) -> JobResult:
    """The JobResult inside arq's result record; arq's own failures become a readable error."""
    try:
        info = deserialize_result(raw, deserializer=deserialize)
    except SerializationError:
        return JobResult(job_id=job_id, status="failed", error="the stored result is not valid JSON")
    if info.success and isinstance(info.result, dict) and "status" in info.result:
        return JobResult.model_validate(info.result)
    err = info.result if isinstance(info.result, dict) else {"error": "Error", "message": str(info.result)}
    if err.get("error") == "CancelledError":
        return JobResult(job_id=job_id, status="cancelled", error="cancelled", attempt=info.job_try)
    snapshot = transcript.result()
    snapshot.status = "failed"
    snapshot.error = f"{err.get('error')}: {err.get('message')}".strip(": ")
    snapshot.attempt = info.job_try
    return snapshot
