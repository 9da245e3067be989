"""Publishes one job attempt's events, numbering them and never making the model wait on Redis.

Tokens are written in the background: while one pipeline is in flight, the next tokens queue up and
are merged into a single token event, so a fast model costs one round trip per batch, not per token.
Terminal events wait until everything before them is written.
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
    publish_events,
)


class EventPublisher:
    def __init__(self, redis, job_id: str, attempt: int):
        self.redis = redis
        self.job_id = job_id
        self.attempt = attempt
        self._seq = 0
        self._pending: list[tuple[str, dict]] = []
        self._writer: asyncio.Task[None] | None = None

    async def start(self, worker_id: str, model: str) -> None:
        await self._finish_with("start", worker_id=worker_id, model=model)

    def token(self, text: str) -> None:
        """Queue a token; raises if an earlier background write failed."""
        if self._writer is not None and self._writer.done() and self._writer.exception():
            raise self._writer.exception()  # type: ignore[misc]
        if self._pending and self._pending[-1][0] == "token":
            self._pending[-1][1]["text"] += text  # coalesce while a write is in flight
        else:
            self._pending.append(("token", {"text": text}))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())

    async def done(
        self, *, usage: TokenUsage, cost: float | None, finish_reason: str | None, model: str
    ) -> None:
        await self._finish_with("done", usage=usage, cost=cost, finish_reason=finish_reason, model=model)

    async def error(self, message: str) -> None:
        await self._finish_with("error", error=message)

    async def cancelled(self) -> None:
        await self._finish_with("cancelled")

    async def _finish_with(self, kind: str, **fields) -> None:
        """Queue an event and wait until it (and everything before it) is in Redis."""
        self._pending.append((kind, fields))
        if self._writer is not None:
            await asyncio.shield(self._writer)
        await self._drain()

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            await publish_events(self.redis, [self._event(kind, fields) for kind, fields in batch])

    def _event(self, kind: str, fields: dict) -> Event:
        cls = {"start": StartEvent, "token": TokenEvent, "done": DoneEvent, "error": ErrorEvent}.get(
            kind, CancelledEvent
        )
        event = cls(job_id=self.job_id, seq=self._seq, attempt=self.attempt, ts=time.time(), **fields)
        self._seq += 1
        return event
