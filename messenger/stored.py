"""What Redis holds about one job, read so that junk in one key never breaks a read: arq's keys, the
stored result, the owner record, and which live worker still runs it when Redis has lost the rest.

A key with the wrong type or a value that does not decode is logged (key and reason, never the
value) and read as damaged; only a lost connection raises.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from dataclasses import dataclass

from arq.jobs import deserialize_result
from redis.exceptions import RedisError, ResponseError

from messenger.collector import Transcript
from messenger.health import live_workers
from shared import connection, keys
from shared.errors import JobNotFound, shown_id
from shared.keys import JOB_EXPIRES_MS, KEEP_RESULT_SECONDS
from shared.models import JobResult, Question
from shared.serializer import deserialize

log = logging.getLogger("messenger.stored")


FIRST_POLL_SECONDS = 0.0005  # a waiter's first wait for arq's result record after a job's last event
LAST_POLL_SECONDS = 0.25  # ... doubling up to this


class _Waiter:
    __slots__ = ("early", "future", "key", "step", "until")

    def __init__(self, key: str, future: asyncio.Future[bytes | None], step: float, until: float):
        self.key, self.future, self.step, self.until = key, future, step, until
        self.early = 0.0  # how long before its due time it may be read (half the wait it is in)


class ResultReads:
    """Stored results (arq:result:<id>) read for the followers that wait for one. A job's result is
    stored a moment after its last event (0.4-1.7 s later with 1,000 jobs ending in one worker), so a
    follower polls: at once, then after 0.5 ms, doubling up to 0.25 s. The waiters share one poller
    and one schedule (a heap of due times, one timer): each wake reads, in one MGET, every waiter
    due or within half its step of due, and wakes a follower only with its answer. A sleep and a
    read of its own per follower and poll (its timer in the loop's heap, its future, its task's
    wake-up) were a third of the follower's CPU while 1,000 jobs ended. A key that holds no string
    reads as None (MGET's nil), as a result not stored yet."""

    def __init__(self, redis):
        self.redis = redis
        self._due: list[tuple[float, int, _Waiter]] = []  # heap: (when, order, waiter)
        self._order = 0
        self._poller: asyncio.Task[None] | None = None
        self._alarm: asyncio.Future[None] | None = None  # the sleeping poller's; set to wake it

    async def wait(self, job_id: str, patience: float) -> bytes | None:
        """The stored result, raw, read at once and then on the schedule; None when it has not come
        within `patience` seconds. A read Redis does not answer (RedisError, OSError, or no reply within
        BATCH_STUCK_SECONDS) is retried on the schedule; any other error is raised."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        waiter = _Waiter(keys.result(job_id), loop.create_future(), FIRST_POLL_SECONDS, now + patience)
        self._push(now, waiter)  # due now: read with the others asked this turn
        if self._poller is None or self._poller.done():
            self._poller = loop.create_task(self._poll())
        elif self._alarm is not None and not self._alarm.done():
            self._alarm.set_result(None)
        return await waiter.future

    def _push(self, when: float, waiter: _Waiter) -> None:
        self._order += 1
        heapq.heappush(self._due, (when, self._order, waiter))

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        batch: list[_Waiter] = []
        try:
            while self._due:
                now = loop.time()
                if self._due[0][0] > now:  # sleep until the first is due, or a new waiter comes
                    self._alarm = loop.create_future()
                    timer = loop.call_at(self._due[0][0], _wake, self._alarm)
                    try:
                        await self._alarm
                    finally:
                        timer.cancel()
                        self._alarm = None
                    continue
                batch = []
                while self._due and self._due[0][0] - self._due[0][2].early <= now:
                    waiter = heapq.heappop(self._due)[2]
                    if not waiter.future.done():  # (a follower that stopped waiting is dropped)
                        batch.append(waiter)
                if batch:
                    await self._read(batch, loop)
        except BaseException:  # (cancelled: the loop is closing) no follower waits for ever
            for waiter in [*batch, *(w for _, _, w in self._due)]:
                waiter.future.cancel()
            self._due.clear()
            raise

    async def _read(self, batch: list[_Waiter], loop: asyncio.AbstractEventLoop) -> None:
        names = list(dict.fromkeys(w.key for w in batch))
        try:
            # every waiter waits for this one read: one on a dead connection (half-open TCP after a
            # failover, no socket_timeout) must not hold all of them for the kernel's ~15 min;
            # cancelled, redis-py drops that connection (TimeoutError is an OSError)
            async with asyncio.timeout(connection.BATCH_STUCK_SECONDS):
                values = dict(zip(names, await self.redis.mget(names), strict=True))
        except (RedisError, OSError):
            values = {}  # as if not stored yet: read again on the schedule
        except Exception as e:  # every waiter of this read sees the failure its own GET would have
            for waiter in batch:
                if not waiter.future.done():
                    waiter.future.set_exception(e)
            return
        now = loop.time()
        for waiter in batch:
            if waiter.future.done():
                continue
            value = values.get(waiter.key)
            if value is not None or now >= waiter.until:
                waiter.future.set_result(value)
            else:
                waiter.early = waiter.step / 2
                self._push(now + waiter.step, waiter)
                waiter.step = min(2 * waiter.step, LAST_POLL_SECONDS)


def _wake(alarm: asyncio.Future[None]) -> None:
    if not alarm.done():
        alarm.set_result(None)


@dataclass
class StoredJob:
    result: bytes | None  # arq:result:<id>, raw
    running: bool  # arq:in-progress:<id> exists
    queued: bool  # arq:job:<id> exists
    owner: str | None  # mcpq:owner:<id>; None when missing or unreadable
    question: Question | None = None  # mcpq:input:<id>'s question: the job waits for its caller's answer


def _value(job_id: str, key: str, value: object) -> object:
    """One pipeline reply; a WRONGTYPE error (junk under the job's key) reads as a missing key."""
    if isinstance(value, ResponseError):
        log.warning("job %s: key %s cannot be read (%s); ignored", job_id, key, str(value).split("\n")[0])
        return None
    if isinstance(value, BaseException):
        raise value
    return value


async def read_job(redis, job_id: str) -> StoredJob:
    names = (
        keys.result(job_id), keys.in_progress(job_id), keys.job(job_id), keys.owner(job_id),
        keys.input_request(job_id),
    )  # fmt: skip
    async with redis.pipeline(transaction=False) as pipe:
        pipe.get(names[0])
        pipe.exists(names[1])
        pipe.exists(names[2])
        pipe.get(names[3])
        pipe.hget(names[4], "question")
        replies = await pipe.execute(raise_on_error=False)
    result, running, queued, owner, asked = (
        _value(job_id, k, v) for k, v in zip(names, replies, strict=True)
    )
    return StoredJob(
        result=result if isinstance(result, bytes) else None,
        running=bool(running),
        queued=bool(queued),
        owner=owner.decode(errors="replace") if isinstance(owner, bytes) else None,
        question=_question(job_id, asked),
    )


def _question(job_id: str, raw: object) -> Question | None:
    if not isinstance(raw, bytes):
        return None
    try:
        return Question.model_validate_json(raw)
    except ValueError:
        log.warning("job %s: the question in %s is damaged; ignored", job_id, keys.input_request(job_id))
        return None


def stored_result(job_id: str, raw: bytes, transcript: Transcript) -> JobResult:
    """The JobResult inside arq's result record; arq's own failures become a readable error, and a
    record that does not decode becomes a failed job that says so (logged, never raised)."""
    try:
        info = deserialize_result(raw, deserializer=deserialize)
        if info.success and isinstance(info.result, dict) and "status" in info.result:
            result = JobResult.model_validate(info.result)
            if result.job_id != job_id:
                raise ValueError("it names another job")
            return result
    except Exception as e:  # junk written by hand, or a result from an incompatible version
        log.warning(
            "job %s: its stored result cannot be read (%s); shown as failed", job_id, type(e).__name__
        )
        return JobResult(
            job_id=job_id,
            status="failed",
            error=f"the stored result of job {job_id} is damaged and cannot be read",
        )
    err = info.result if isinstance(info.result, dict) else {"error": "Error", "message": str(info.result)}
    if err.get("error") == "CancelledError":
        return JobResult(job_id=job_id, status="cancelled", error="cancelled", attempt=info.job_try)
    snapshot = transcript.result()
    snapshot.status = "failed"
    snapshot.error = f"{err.get('error')}: {err.get('message')}".strip(": ")
    snapshot.attempt = info.job_try
    return snapshot


async def held_by_worker(redis, job_id: str) -> bool:
    """A live worker's heartbeat lists the job as running: it exists even if Redis lost its keys."""
    for beat in await live_workers(redis):
        running = beat.get("running_jobs")
        if isinstance(running, dict | list) and job_id in running:
            return True
    return False


async def not_found(redis, job_id: str) -> JobNotFound:
    """ "No such job", saying when it may also have been lost: Redis without an append-only file
    restarted within a job's lifetime (a day queued, its run, its kept result) keeps none of its jobs."""
    try:
        info = await redis.info()
        uptime, aof = float(info["uptime_in_seconds"]), int(info.get("aof_enabled", 0))
    except Exception:
        return JobNotFound(job_id)
    if aof or uptime > JOB_EXPIRES_MS / 1000 + KEEP_RESULT_SECONDS:
        return JobNotFound(job_id)
    return JobNotFound(
        job_id,
        f"no job with id {shown_id(job_id)}: it never existed, it finished more than {KEEP_RESULT_SECONDS // 60} "
        "minutes ago and its result expired, or Redis lost it (Redis restarted less than a day ago, "
        "without persistence)",
    )


async def why_gone(redis, since: float) -> tuple[str, dict]:
    """Why Redis no longer holds what it held at `since` (epoch seconds): it restarted without its data,
    it failed over to a replica that had not received it (a promoted replica keeps, in INFO replication,
    the offset up to which its old primary's history is valid), or the keys were removed; and the INFO
    that tells (empty from a server without INFO: the embedded fakeredis)."""
    try:
        info = await redis.info()  # server and replication sections, one round trip
    except ResponseError:
        info = {}
    uptime = info.get("uptime_in_seconds")  # whole seconds, rounded down: up to one more
    if uptime is not None and float(uptime) + 1 < time.time() - since:
        return "Redis restarted without its data (no persistence?)", info
    if info.get("role") == "master" and int(info.get("second_repl_offset", -1)) != -1:
        return "Redis failed over to a replica that had not received it (replication is asynchronous)", info
    return "its keys were removed from Redis (FLUSHALL, eviction or by hand)", info


async def lost_message(redis, job_id: str, since: float) -> str:
    """What a caller is told of a job it followed since `since` that Redis no longer holds; logged
    (WARNING) with which Redis answered, so a loss can be told apart from a process reading a server it
    should not (the failover tests print it)."""
    why, info = await why_gone(redis, since)
    log.warning(
        "job %s: lost (%s); the Redis that answered: port %s, role %s, up %s s, run id %.8s, "
        "replication id %.8s at offset %s (valid from the old primary up to %s)",
        job_id, why, info.get("tcp_port"), info.get("role"), info.get("uptime_in_seconds"), info.get("run_id"),
        info.get("master_replid"), info.get("master_repl_offset"), info.get("second_repl_offset"),
    )  # fmt: skip
    return f"job {job_id} was lost: {why} before the job finished; submit it again"


async def lost_answer(redis, ended: float) -> str:
    """What a reader is told of a job that ended at `ended` (its last event) whose stored result, and
    some of its events, Redis no longer holds."""
    why, _ = await why_gone(redis, ended)
    return f"the job ended, but Redis lost its stored result and part of its text: {why}; submit it again"
