"""What Redis holds about one job, read so that junk in one key never breaks a read: arq's keys, the
stored result, the owner record, and which live worker still runs it when Redis has lost the rest.

A key with the wrong type or a value that does not decode is logged (key and reason, never the
value) and read as damaged; only a lost connection raises.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from arq.jobs import deserialize_result
from redis.exceptions import ResponseError

from messenger.collector import Transcript
from messenger.health import live_workers
from shared import keys
from shared.errors import JobNotFound, shown_id
from shared.keys import JOB_EXPIRES_MS, KEEP_RESULT_SECONDS
from shared.models import JobResult, Question
from shared.serializer import deserialize

log = logging.getLogger("messenger.stored")


class ResultReads:
    """Stored results (arq:result:<id>) read for the followers that wait for one: every read asked for
    in the same event-loop turn goes out as one MGET. A job's result is stored a moment after its last
    event, so 1,000 jobs ending together polled with 1,000 GETs a turn, each a command of its own.
    A key that holds no string reads as None (MGET's nil), as a result not stored yet."""

    def __init__(self, redis):
        self.redis = redis
        self._asked: dict[str, list[asyncio.Future[bytes | None]]] = {}
        self._reading: set[asyncio.Task[None]] = set()  # (a task nobody holds may be collected)

    async def get(self, job_id: str) -> bytes | None:
        """The stored result, raw; raises what the read raised (RedisError, OSError)."""
        loop = asyncio.get_running_loop()
        if not self._asked:
            loop.call_soon(self._send)  # after every follower this turn has asked
        waiter = loop.create_future()
        self._asked.setdefault(keys.result(job_id), []).append(waiter)
        return await waiter

    def _send(self) -> None:
        asked, self._asked = self._asked, {}
        task = asyncio.ensure_future(self._read(asked))
        self._reading.add(task)
        task.add_done_callback(self._reading.discard)

    async def _read(self, asked: dict[str, list[asyncio.Future[bytes | None]]]) -> None:
        try:
            values = await self.redis.mget(list(asked))
        except BaseException as e:  # every reader of this batch sees the failure its own GET would have
            for waiters in asked.values():
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(e) if isinstance(e, Exception) else waiter.cancel()
            if not isinstance(e, Exception):
                raise
            return
        for waiters, value in zip(asked.values(), values, strict=True):
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(value)


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
