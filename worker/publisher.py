"""Publishes every job's events without making the model wait on Redis.

One EventWriter per worker process keeps at most one pipeline in flight: whatever events all of the
process's jobs produce meanwhile go out together in the next one. A job's tokens that pile up while
a write is in flight merge into a single token event, so a fast model costs one round trip per
batch, not per token, and 200 concurrent streams cost one pipeline per round trip, not 200.
Terminal events wait until everything before them is in Redis.
"""

from __future__ import annotations

import asyncio
import time

from shared.events import (
    CancelledEvent,
    DoneEvent,
    ErrorEvent,
    Event,
    StartEvent,
    TokenEvent,
    TokenUsage,
    ToolCallEvent,
    ToolResultEvent,
    publish_events,
)

_EVENT_TYPES = {
    "start": StartEvent,
    "token": TokenEvent,
    "tool_call": ToolCallEvent,
    "tool_result": ToolResultEvent,
    "done": DoneEvent,
    "error": ErrorEvent,
}


class EventWriter:
    def __init__(self, redis):
        self.redis = redis
        self._dirty: dict[EventPublisher, None] = {}  # insertion-ordered set
        self._flusher: asyncio.Task[None] | None = None

    def publisher(self, job_id: str, attempt: int) -> EventPublisher:
        return EventPublisher(self, job_id, attempt)

    def _schedule(self, publisher: EventPublisher) -> None:
        self._dirty[publisher] = None
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        while self._dirty:
            publishers = list(self._dirty)
            self._dirty.clear()
            events: list[Event] = []
            waiters: list[asyncio.Future[None]] = []
            for publisher in publishers:
                events += publisher._take_events()
                waiters += publisher._take_waiters()
            try:
                await publish_events(self.redis, events)
            except Exception as e:
                for publisher in publishers:
                    publisher._failure = e
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(e)
            else:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)


class EventPublisher:
    """Numbers one job attempt's events and hands them to the process's EventWriter."""

    def __init__(self, writer: EventWriter, job_id: str, attempt: int):
        self.writer = writer
        self.job_id = job_id
        self.attempt = attempt
        self._seq = 0
        self._pending: list[tuple[str, dict]] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._failure: Exception | None = None

    async def start(self, worker_id: str, model: str) -> None:
        await self._write("start", worker_id=worker_id, model=model)

    def token(self, text: str) -> None:
        """Queue a token; raises if an earlier write of this job failed."""
        if self._failure is not None:
            raise self._failure
        if self._pending and self._pending[-1][0] == "token":
            self._pending[-1][1]["text"] += text
        else:
            self._pending.append(("token", {"text": text}))
        self.writer._schedule(self)

    async def done(
        self, *, usage: TokenUsage, cost: float | None, finish_reason: str | None, model: str
    ) -> None:
        await self._write("done", usage=usage, cost=cost, finish_reason=finish_reason, model=model)

    async def tool_call(self, **fields) -> None:
        await self._write("tool_call", **fields)

    async def tool_result(self, **fields) -> None:
        await self._write("tool_result", **fields)

    async def error(self, message: str) -> None:
        await self._write("error", error=message)

    async def cancelled(self) -> None:
        await self._write("cancelled")

    async def _write(self, kind: str, **fields) -> None:
        """Queue an event and wait until it, and everything before it, is in Redis."""
        self._failure = None
        self._pending.append((kind, fields))
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.writer._schedule(self)
        await waiter

    def _take_events(self) -> list[Event]:
        events = []
        for kind, fields in self._pending:
            cls = _EVENT_TYPES.get(kind, CancelledEvent)
            events.append(
                cls(job_id=self.job_id, seq=self._seq, attempt=self.attempt, ts=time.time(), **fields)
            )
            self._seq += 1
        self._pending = []
        return events

    def _take_waiters(self) -> list[asyncio.Future[None]]:
        waiters, self._waiters = self._waiters, []
        return waiters
