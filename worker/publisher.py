"""Publishes every job's events without making the model wait on Redis, and never loses one quietly.

One EventWriter per worker process keeps at most one write in flight: whatever events all of the
process's jobs produce meanwhile go out together in the next one (one script call, so an event is
published only if it was also stored: shared.events.write_wired). A job's tokens that pile up
while a write is in flight merge into a single token event, so 200 concurrent streams cost one
command per batch, not two per token.

A write that fails keeps the job's events, in order, and retries them with backoff until Redis takes
them or the job's deadline passes; later tokens queue behind them, and `settle()` and every
terminal event wait until everything before them is written. Failures are per job: the script
answers each job's own error (never text that quotes other jobs' events), so one job's broken
stream key fails that job alone. Past the deadline the job is stopped with a JobStopped that
says why, so it never reports an answer its followers could not get.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Protocol

from pydantic_core import to_json
from redis.exceptions import BusyLoadingError, OutOfMemoryError, ReadOnlyError, RedisError, ResponseError

from shared import keys
from shared.errors import JobStopped
from shared.events import (
    CancelledEvent,
    DoneEvent,
    ErrorEvent,
    InputRequiredEvent,
    StartEvent,
    TokenEvent,
    TokenUsage,
    ToolCallEvent,
    ToolResultEvent,
    done_body,
    dump_event,
    event_head,
    start_body,
    token_body,
    write_wired,
)

log = logging.getLogger("worker.publisher")

_EVENT_TYPES = {
    "start": StartEvent,
    "token": TokenEvent,
    "tool_call": ToolCallEvent,
    "tool_result": ToolResultEvent,
    "done": DoneEvent,
    "error": ErrorEvent,
    "input_required": InputRequiredEvent,
}
FIRST_BACKOFF, MAX_BACKOFF = 0.05, 2.0
DEFAULT_PATIENCE = 60.0  # seconds a publisher keeps retrying when its job gave no deadline


def why_not_written(error: BaseException, job_id: str) -> tuple[str, bool]:
    """(what went wrong, in words that name only this job; whether waiting can help)."""
    if isinstance(error, OutOfMemoryError):
        return "Redis is out of memory (maxmemory reached, and its policy evicts nothing)", True
    if isinstance(error, BusyLoadingError):
        return "Redis is loading its data after a restart", True
    if isinstance(error, ReadOnlyError):
        return "Redis is a read-only replica", True
    if isinstance(error, ResponseError):
        if keys.JOURNAL_PREFIX in str(error):
            return f"{keys.journal(job_id)} holds a value that is not a hash (written by hand?)", False
        if str(error).startswith("WRONGTYPE") or "WRONGTYPE" in str(error):
            return f"{keys.stream(job_id)} holds a value that is not a stream (written by hand?)", False
        return f"Redis refused the write ({type(error).__name__})", False
    if isinstance(error, RedisError | OSError):
        return "Redis is unreachable", True
    return f"the write failed ({type(error).__name__})", False


class _SentOnce:
    """Sends each write once per try. redis-py's own retry would send the script again after a
    connection lost while its reply was on the way, storing those events twice; the publisher
    retries itself instead, telling the script to skip what had landed."""

    def __init__(self, redis):
        self.pool = redis.connection_pool

    async def _once(self, *args):
        connection = await self.pool.get_connection()
        try:
            await connection.send_command(*args)  # packed by hiredis (shared/connection.py)
            return await connection.read_response()
        except BaseException:
            await connection.disconnect()
            raise
        finally:
            await self.pool.release(connection)

    async def evalsha(self, *args):
        return await self._once("EVALSHA", *args)

    async def eval(self, *args):
        return await self._once("EVAL", *args)


class Leases(Protocol):
    """What a worker knows of its leases (worker/job.py WorkerState): a job another worker took from
    it (its lease lapsed while this process was stalled) gets no more events from its run here."""

    def stale(self) -> bool: ...  # not renewed for a whole lease: any job may be another's by now
    async def leases_looked_at(self) -> None: ...  # the heartbeat's next look (renewed, or lost)
    def lost(self, job_id: str) -> bool: ...


class EventWriter:
    def __init__(self, redis):
        self.redis = _SentOnce(redis) if hasattr(redis, "connection_pool") else redis
        # set by a worker (worker/runner.py): writes wait while its leases are stale, and a job it lost
        # writes nothing more (its followers would drop its events by attempt; the stream keeps them)
        self.leases: Leases | None = None
        self._dirty: dict[EventPublisher, None] = {}  # insertion-ordered set
        self._flusher: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def publisher(self, job_id: str, attempt: int, patience: float = DEFAULT_PATIENCE) -> EventPublisher:
        """`patience`: seconds from now this job's events may take to reach Redis before it is stopped."""
        return EventPublisher(self, job_id, attempt, time.monotonic() + patience)

    def _schedule(self, publisher: EventPublisher) -> None:
        self._dirty[publisher] = None
        self._wake.set()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        while self._dirty:
            self._wake.clear()
            now = time.monotonic()
            ready = [p for p in self._dirty if p._retry_at <= now]
            if not ready:  # every job with events is backing off: wait for the first, or for news
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(p._retry_at for p in self._dirty) - now):
                        await self._wake.wait()
                continue
            if self.leases is not None and self.leases.stale():  # stalled: whose are our jobs now?
                await self.leases.leases_looked_at()  # (once: Redis away, the write fails as before)
            for publisher in ready:
                self._dirty.pop(publisher, None)  # (gone already: its job lost while we waited)
            await self._write(ready)

    def lose(self, job_id: str) -> None:
        """Another worker took `job_id` from us: what our run of it has not written yet never is, and
        its next event raises JobStopped."""
        for publisher in [p for p in self._dirty if p.job_id == job_id]:
            del self._dirty[publisher]
            publisher._stop(JobStopped("another worker took this job; this run of it was stopped"))

    async def _write(self, publishers: list[EventPublisher]) -> None:
        if self.leases is not None:
            for publisher in [p for p in publishers if self.leases.lost(p.job_id)]:
                publisher._stop(JobStopped("another worker took this job; this run of it was stopped"))
        now = time.time()  # one time for the write's events: all were pending when it began
        stamp = to_json(now)
        batch: list[tuple[EventPublisher, list[tuple[str, bytes]], list[asyncio.Future[None]]]] = []
        jobs: dict[str, list[tuple[str, bytes]]] = {}
        journal: dict[str, list[tuple[int, bytes]]] = {}
        retried: set[str] = set()
        short: set[str] = set()
        for p in publishers:  # (one pass: 1,000 streams make 1,000 publishers a write)
            if p._failure is not None:
                continue
            taken = p._take_events(now, stamp)
            batch.append((p, taken, p._take_waiters()))
            if p._journal:
                journal[p.job_id] = p._take_journal()
            if taken:
                jobs[p.job_id] = taken
                if p._failing_since is not None:
                    retried.add(p.job_id)
                if p._short():
                    short.add(p.job_id)
        failures: Mapping[str, BaseException] = {}
        try:
            if jobs:
                failures = await write_wired(self.redis, jobs, frozenset(retried), journal, frozenset(short))
        except Exception as e:  # the whole write failed: Redis away, or every write refused (OOM)
            failures = {p.job_id: e for p, _, _ in batch}
        for publisher, taken, waiters in batch:
            error = failures.get(publisher.job_id) if failures else None
            if error is None:
                publisher._written(len(taken), waiters)
            elif publisher._failed(error, waiters):
                self._dirty[publisher] = None  # retried once its backoff is over


class EventPublisher:
    """Numbers one job attempt's events and hands them to the process's EventWriter."""

    def __init__(self, writer: EventWriter, job_id: str, attempt: int, deadline: float):
        self.writer = writer
        self.job_id = job_id
        self.attempt = attempt
        self.deadline = deadline  # monotonic
        self._seq = 0
        self._pending: list[tuple[str, dict]] = []  # not numbered yet
        self._open: dict | None = None  # the fields of the token last in _pending, which the next joins
        # (type, JSON after the event's head: shared.events.write_wired) numbered, not yet in Redis, in order
        self._unwritten: list[tuple[str, bytes]] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._failure: JobStopped | None = None
        self._retry_at = 0.0
        self._backoff = FIRST_BACKOFF
        self._failing_since: float | None = None
        self._journal: list[tuple[int, bytes]] = []  # (step, entry) not yet confirmed in Redis, in order
        self._journal_sent = 0

    async def start(
        self, worker_id: str, model: str, resumed: int | None = None, *, at: float | None = None
    ) -> None:
        self.start_soon(worker_id, model, resumed, at=at)
        await self._wait()

    def start_soon(
        self, worker_id: str, model: str, resumed: int | None = None, *, at: float | None = None
    ) -> None:
        """Queue the start event without waiting for its write (the model call need not wait that round
        trip): it is written before every later event, and should it never be, the job stops at its
        next event (token, settle or ending) with the JobStopped that says why. Its `ts` is `at` (the
        job's start: worker/run.py JobRun.started_at) or now, not when the write goes out."""
        if self._failure is not None:
            raise self._failure
        more = {"resumed": resumed} if resumed is not None else {}
        ts = time.time() if at is None else at
        self._pending.append(("start", {"ts": ts, "worker_id": worker_id, "model": model, **more}))
        self._open = None
        self.writer._schedule(self)

    async def journaled(self, entries: list[tuple[int, bytes]], events: list[tuple[str, dict]]) -> None:
        """Queue `events` with the journal entries they announce (worker/journal.py) and wait until
        they are in Redis: one script writes both, so a step is journaled exactly when it is told."""
        if self._failure is not None:
            raise self._failure
        self._pending += events
        self._open = events[-1][1] if events and events[-1][0] == "token" else None
        self._journal += entries
        await self._wait()

    def token(self, text: str) -> None:
        """Queue a token; raises JobStopped once this job's events can no longer be written."""
        if self._failure is not None:
            raise self._failure
        if (open_ := self._open) is not None:
            # (scheduled already: what is pending stays in the writer's dirty set until a write takes
            # it, so a model's burst of tokens costs one _schedule, not one a token)
            open_["text"] += text
            return
        self._open = fields = {"text": text}
        self._pending.append(("token", fields))
        self.writer._schedule(self)

    def done(
        self, *, usage: TokenUsage, cost: float | None, finish_reason: str | None, model: str,
        fallback_from: str | None = None,
    ) -> asyncio.Future[None]:  # fmt: skip
        more = (
            {"fallback_from": fallback_from} if fallback_from else {}
        )  # the usual done event stays as it was
        return self._queue("done", usage=usage, cost=cost, finish_reason=finish_reason, model=model, **more)

    def error(
        self, message: str, *, usage: TokenUsage | None = None, cost: float | None = None
    ) -> asyncio.Future[None]:
        return self._queue("error", error=message, usage=usage, cost=cost)

    async def input_required(self, question) -> None:
        """The job pauses on `question` (a shared.models.Question); written before this returns."""
        await self._write(
            "input_required", key=question.key, server=question.server, tool=question.tool,
            arguments=question.arguments, question=question.question, expires_at=question.expires_at,
        )  # fmt: skip

    def cancelled(
        self, *, usage: TokenUsage | None = None, cost: float | None = None
    ) -> asyncio.Future[None]:
        return self._queue("cancelled", usage=usage, cost=cost)

    def stopped(self) -> JobStopped | None:
        """Why this job's events can no longer be written (None: they still can), without waiting."""
        return self._failure

    async def settle(self) -> None:
        """Wait until every event queued so far is in Redis; raises JobStopped if it never can be."""
        if self._failure is not None:
            raise self._failure
        if self._pending or self._unwritten:
            await self._wait()

    async def _write(self, kind: str, **fields) -> None:
        """Queue an event and wait until it, and everything before it, is in Redis."""
        await self._queue(kind, **fields)

    def _queue(self, kind: str, **fields) -> asyncio.Future[None]:
        """Queue an event now; answers the future of its write and everything's before it. (A terminal
        event is queued at once, not in a task of its own a loop turn later, so it goes in the same
        write as the events still pending: a no-op job's start, text and done are one round trip.)"""
        if self._failure is not None:
            raise self._failure
        self._pending.append((kind, fields))
        self._open = None
        return self._waiter()

    async def _wait(self) -> None:
        await self._waiter()

    def _waiter(self) -> asyncio.Future[None]:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.writer._schedule(self)
        return waiter

    def _take_events(self, now: float, stamp: bytes) -> list[tuple[str, bytes]]:
        """Number what is pending, written at `now` (`stamp`: its JSON), and answer every unwritten
        event (a retry sends them all again)."""
        seq, attempt = self._seq, self.attempt
        for kind, fields in self._pending:
            if kind == "token":  # (the usual event: its JSON without a model)
                data = token_body(seq, attempt, stamp, fields["text"])
            elif kind == "start" and "resumed" not in fields:  # (every job's first and last: the same)
                data = start_body(seq, attempt, fields["ts"], fields["worker_id"], fields["model"])
            elif kind == "done" and "fallback_from" not in fields:
                data = done_body(seq, attempt, stamp, **fields)
            else:
                cls = _EVENT_TYPES.get(kind, CancelledEvent)
                event = cls(job_id=self.job_id, seq=seq, attempt=attempt, **{"ts": now, **fields})
                data = dump_event(event)[len(event_head(self.job_id)) :]
            self._unwritten.append((kind, data))
            seq += 1
        self._seq = seq
        self._pending, self._open = [], None
        return list(self._unwritten)

    def _short(self) -> bool:
        """Whether the job's stream holds fewer than STREAM_MAXLEN events with those taken: a first
        attempt's are all its own (numbered from 0; a queued job's `cancelled` is its only other),
        a later attempt's follow its earlier ones."""
        return self.attempt == 1 and self._seq < keys.STREAM_MAXLEN

    def _take_journal(self) -> list[tuple[int, bytes]]:
        self._journal_sent = len(self._journal)
        return list(self._journal)

    def _take_waiters(self) -> list[asyncio.Future[None]]:
        waiters, self._waiters = self._waiters, []
        return waiters

    def _written(self, count: int, waiters: list[asyncio.Future[None]]) -> None:
        del self._unwritten[:count]
        del self._journal[: self._journal_sent]
        self._journal_sent = 0
        if self._failing_since is not None:
            log.info(
                "events of job %s written after %.1f s", self.job_id, time.monotonic() - self._failing_since
            )
        self._backoff, self._failing_since = FIRST_BACKOFF, None
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _failed(self, error: BaseException, waiters: list[asyncio.Future[None]]) -> bool:
        """Keep the events for another try (True), or stop the job if waiting cannot help (False)."""
        self._waiters[:0] = waiters
        now = time.monotonic()
        reason, transient = why_not_written(error, self.job_id)
        if self._failing_since is None:
            self._failing_since = now
            log.warning("events of job %s not written: %s; retrying", self.job_id, reason)
        if transient and now < self.deadline:
            self._retry_at = min(now + self._backoff, self.deadline)
            self._backoff = min(self._backoff * 2, MAX_BACKOFF)
            return True
        waited = f" for {now - self._failing_since:.0f} s" if transient else ""
        failure = JobStopped(
            f"this job's events could not be written to Redis{waited}: {reason}; "
            "the job was stopped so that nobody gets an answer with parts missing"
        )
        log.warning("job %s stopped: %s", self.job_id, failure.message)
        self._stop(failure)
        return False

    def _stop(self, failure: JobStopped) -> None:
        """No event of this job's is written from now on: what waits raises `failure`, as will the next."""
        self._failure = failure
        self._pending, self._unwritten, self._journal = [], [], []
        self._open = None
        for waiter in self._take_waiters():
            if not waiter.done():
                waiter.set_exception(failure)
