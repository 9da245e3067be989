"""Turns a job's events, live and replayed, into one ordered story: its Transcript.

Events are ordered by (attempt, seq). A stale or duplicate event is dropped; a gap (a message lost
while disconnected) is filled from the job's stream; a new attempt (the job re-run after a worker
died) discards the text of the old one, except what a re-run that went on from the job's journal
(`start.resumed`) kept: everything up to the old attempt's last journaled step. A gap the stream cannot fill either (an event that never
got written) is counted in `Transcript.gaps`: such a transcript is progress only, and the caller's
answer is the job's stored result (messenger/jobs.py), never the text with a hole in it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Literal, Protocol, cast

from pydantic import ValidationError
from redis.exceptions import RedisError, ResponseError

from messenger.hub import RESYNC, Mailbox
from shared import keys
from shared.connection import Batch
from shared.events import (
    TERMINAL,
    CancelledEvent,
    DoneEvent,
    ErrorEvent,
    Event,
    InputRequiredEvent,
    StartEvent,
    TokenEvent,
    ToolCallEvent,
    ToolResultEvent,
    make_event,
    parse_event,
)
from shared.models import JobResult, ResultUsage, ToolCallRecord

log = logging.getLogger("messenger.collector")

IDLE_SECONDS = 5.0  # how often a quiet follower re-checks the stream and the job
IDLE = object()  # put into a follower's queue when it has heard nothing for IDLE_SECONDS


class Transcript:
    """What the events of one job say so far."""

    def __init__(self, job_id: str):
        self.job_id = job_id
        self.attempt = 0
        self.last_seq = -1
        self.parts: list[str] = []
        self.tokens = 0
        self.status = "queued"
        self.model: str | None = None
        self.fallback_from: str | None = None
        self.worker_id: str | None = None
        self.usage: ResultUsage | None = None
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.started_ts: float | None = None
        self.ended_ts: float | None = None
        self.tool_calls: dict[str, ToolCallRecord] = {}  # by call id, in the order they were made
        self.gaps = 0  # events of this attempt missing from the stream: the text has holes
        # after each event that announced a journal step: (len(parts), tokens, len(tool_calls)), so a
        # re-run that goes on from the journal keeps what its steps told; results told by index
        self._steps: list[tuple[int, int, int]] = []
        self._result_told: dict[str, int] = {}
        self.after_pause = False  # this attempt went on after the job paused for its caller's answer
        # messages already waiting for the follower after the event it hands over (follow_events):
        # a backlog, whose text a relay sends together once it has caught up, not a notification each
        self.behind = 0

    @property
    def whole(self) -> bool:
        """No event of this attempt is missing: the text is the answer the worker produced."""
        return self.gaps == 0

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def final(self) -> bool:
        return self.status in ("completed", "failed", "cancelled")

    def position(self, event: Event) -> Literal["stale", "next", "gap"]:
        if (event.attempt, event.seq) <= (self.attempt, self.last_seq) or self.final:
            return "stale"
        if (event.attempt == self.attempt and event.seq == self.last_seq + 1) or (
            event.attempt > self.attempt and event.seq == 0
        ):
            return "next"
        return "gap"

    def apply(self, event: Event) -> None:
        if type(event) is TokenEvent and event.attempt == self.attempt:  # the usual event, in short
            self.last_seq, self.status = event.seq, "running"
            self.started_ts = self.started_ts or event.ts
            self.parts.append(event.text)
            self.tokens += 1
            return
        if event.attempt != self.attempt:
            self.after_pause = self.status == "input_required"
            if isinstance(event, StartEvent) and event.resumed is not None and self._steps:
                self._resume()
            else:
                self.parts, self.tokens, self.started_ts, self.tool_calls = [], 0, None, {}
                self._steps, self._result_told = [], {}
            self.attempt, self.gaps = event.attempt, 0
        self.last_seq = event.seq
        self.started_ts = self.started_ts or event.ts
        if isinstance(event, StartEvent):
            self.status, self.model, self.worker_id = "running", event.model, event.worker_id
        elif isinstance(event, TokenEvent):
            self.status = "running"
            self.parts.append(event.text)
            self.tokens += 1
        elif isinstance(event, ToolCallEvent):
            self.status = "running"
            self.tool_calls[event.call_id] = ToolCallRecord(
                call_id=event.call_id, server=event.server, tool=event.tool,
                arguments=event.arguments, round=event.round,
            )  # fmt: skip
        elif isinstance(event, ToolResultEvent):
            record = self.tool_calls.get(event.call_id)
            if record is not None:
                record.result, record.is_error = event.result, event.is_error
                record.duration_ms = event.duration_ms
                self._result_told[event.call_id] = len(self._steps)
        elif isinstance(event, DoneEvent):
            self.status, self.model, self.finish_reason = "completed", event.model, event.finish_reason
            self.fallback_from = event.fallback_from
            self.usage = ResultUsage(**event.usage.model_dump(), estimated_cost=event.cost)
        elif isinstance(event, ErrorEvent):
            self.status, self.error = "failed", event.error
        elif isinstance(event, InputRequiredEvent):
            self.status = "input_required"  # the job's record holds the question (shared/approvals.py)
        else:
            self.status, self.error = "cancelled", "cancelled by request"
        if isinstance(event, ErrorEvent | CancelledEvent) and event.usage is not None:
            self.usage = ResultUsage(**event.usage.model_dump(), estimated_cost=event.cost)
        if event.type in TERMINAL:
            self.ended_ts = event.ts
        if isinstance(event, ToolCallEvent | ToolResultEvent) and event.step is not None:
            self._steps.append((len(self.parts), self.tokens, len(self.tool_calls)))

    def _resume(self) -> None:
        """Back to just after the last journaled step: the rest of the old attempt is void."""
        parts, self.tokens, calls = self._steps[-1]
        del self.parts[parts:]
        self.tool_calls = dict(list(self.tool_calls.items())[:calls])
        for call_id, told in list(self._result_told.items()):
            if told >= len(self._steps) and (record := self.tool_calls.get(call_id)) is not None:
                record.result, record.is_error, record.duration_ms = None, False, None
                del self._result_told[call_id]

    def result(self) -> JobResult:
        elapsed = None
        if self.started_ts is not None and self.ended_ts is not None:
            elapsed = round(self.ended_ts - self.started_ts, 4)
        return JobResult(
            job_id=self.job_id,
            status=self.status,  # type: ignore[arg-type]
            ai_response=self.text,
            model=self.model,
            fallback_from=self.fallback_from,
            usage=self.usage or ResultUsage(completion_tokens=self.tokens),
            processing_time=elapsed,
            finish_reason=self.finish_reason,
            error=self.error,
            worker_id=self.worker_id,
            attempt=self.attempt,
            tool_calls=[r.model_copy() for r in self.tool_calls.values()],
        )


async def replay(redis, transcript: Transcript, after: bytes = b"-") -> tuple[list[Event], bytes]:
    """Events from the job's stream that the transcript has not seen, and the last stream id read.

    The reads of one moment share a pipeline (the process's shared.connection.Batch): every follower
    reads its job's stream once it is subscribed, and 1,000 jobs submitted in half a second cost
    about 70 µs of CPU each as commands of their own, 20-25 µs in a shared pipeline.
    A key that is not a stream (junk written by hand) reads as an empty stream, with a warning."""
    start = b"-" if after == b"-" else b"(" + after
    try:
        entries = await Batch.of(redis).run(("XRANGE", keys.stream(transcript.job_id), start, b"+"))
    except ResponseError as e:
        log.warning("job %s: its event stream cannot be read (%s); skipped", transcript.job_id, e)
        return [], after
    return _fresh(transcript, entries, after)


async def replay_patiently(redis, transcript: Transcript, after: bytes) -> tuple[list[Event], bytes]:
    """replay(), waiting out a Redis restart instead of failing the caller (the caller's timeout bounds it)."""
    backoff = 0.05
    while True:
        try:
            return await replay(redis, transcript, after)
        except (RedisError, OSError) as e:
            log.warning("re-reading job %s from its stream failed (%s); retrying", transcript.job_id, e)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)


def _fresh(transcript: Transcript, entries, after: bytes) -> tuple[list[Event], bytes]:
    fresh: list[Event] = []
    for entry_id, fields in entries:
        after = entry_id
        event = _parse(fields.get(b"event", b""), transcript.job_id)
        where = "stale" if event is None else transcript.position(event)
        if event is None or where == "stale":
            continue
        transcript.apply(event)
        if where == "gap":  # the events between were never written: the stream cannot fill this
            transcript.gaps += 1
            log.warning("job %s: events before seq %d are missing from its stream", event.job_id, event.seq)
        fresh.append(event)
    return fresh, after


class _IdleAlarm:
    """Puts IDLE into a follower's queue once it has waited IDLE_SECONDS for a message. One timer
    per follower, moved on only when it rings: an asyncio.timeout around each wait armed and
    cancelled a timer per token (50,000 a second for 1,000 streams)."""

    def __init__(self, live: Mailbox):
        self._loop = asyncio.get_running_loop()
        self._live = live
        self.waiting_since: float | None = None  # loop time the follower began waiting on an empty queue
        self._timer = self._loop.call_later(IDLE_SECONDS, self._ring)

    def _ring(self) -> None:
        now, since = self._loop.time(), self.waiting_since
        if since is not None and now >= since + IDLE_SECONDS - 0.001:  # (timers may ring a hair early)
            self._live.put_nowait(IDLE)
            since = self.waiting_since = None
        self._timer = self._loop.call_at((now if since is None else since) + IDLE_SECONDS, self._ring)

    def close(self) -> None:
        self._timer.cancel()


class Holder(Protocol):
    """A follower's consumer that can take a token in the hub's turn (messenger.progress.ProgressRelay)."""

    def takes(self, event: TokenEvent, transcript: Transcript) -> bool:
        """Whether taking it is all its handling would do now (no await, nothing sent)."""
        ...

    def take(self, event: TokenEvent, transcript: Transcript) -> None: ...


def _taking(transcript: Transcript, holder: Holder, alarm: _IdleAlarm):
    """The Mailbox's `direct` for a follower parked on an empty mailbox: a token that is the next
    event and that its holder only holds is applied and taken in the hub's turn (the follower stays
    parked); anything else is queued for the follower, parsed. Why: at 1,000 callers most tokens
    only join their call's held text, and waking the follower (a future, a task step, the generator
    and the relay's coroutine) for each was a loop turn more on the token's way and ~15 % of the
    messenger's CPU a token (bench/NOTES.md)."""
    clock = asyncio.get_running_loop().time

    def direct(raw: object) -> object:
        if type(raw) is not bytes:
            return raw
        event = _parse(raw, transcript.job_id)
        if event is None:
            return None  # (logged; the follower would skip it)
        if (
            type(event) is TokenEvent
            and transcript.position(event) == "next"
            and holder.takes(event, transcript)
        ):
            transcript.apply(event)
            holder.take(event, transcript)
            alarm.waiting_since = clock()  # (it heard from the job: not idle)
            return None
        return event

    return direct


async def follow_events(
    redis, transcript: Transcript, live: Mailbox, holder: Holder | None = None
) -> AsyncIterator[Event | None]:
    """Yield the job's events in order until a terminal one; None on each idle tick. `holder`: the
    consumer that takes tokens in the hub's turn while the follower waits (`_taking`); the events it
    took are not yielded.

    `live` must already be subscribed (EventHub.follow), so replaying the stream first and then
    reading live messages misses nothing.
    """
    fresh, cursor = await replay(redis, transcript)
    for i, event in enumerate(fresh):
        transcript.behind = len(fresh) - 1 - i + live.qsize()
        yield event
    transcript.behind = 0
    alarm, clock = _IdleAlarm(live), asyncio.get_running_loop().time
    if holder is not None:
        live.direct = _taking(transcript, holder, alarm)
    try:
        while not transcript.final:
            if live.empty():  # (the usual case at 50 tokens/s: wait for the next message)
                alarm.waiting_since = clock()
                raw = await live.get()
                alarm.waiting_since = None
            else:
                raw = live.get_nowait()
            if raw is IDLE:
                raw = RESYNC
                yield None
            if raw is RESYNC:
                where, event = "gap", None
            else:
                # (a token `direct` parsed and did not take comes as its Event)
                event = _parse(raw, transcript.job_id) if type(raw) is bytes else cast("Event", raw)
                if event is None:
                    continue
                where = transcript.position(event)
            if where == "next" and event is not None:
                transcript.apply(event)
                transcript.behind = live.qsize()
                yield event
            elif where == "gap":
                fresh, cursor = await replay_patiently(redis, transcript, cursor)
                for i, event in enumerate(fresh):
                    transcript.behind = len(fresh) - 1 - i + live.qsize()
                    yield event
            transcript.behind = 0
    finally:
        live.direct = None
        alarm.close()


def retold(result: JobResult) -> list[Event]:
    """A finished job's story from its stored result, for a reader that comes after its stream
    expired (keys.ENDED_STREAM_SECONDS): start, its tool calls, the whole answer as one token event,
    the ending. The same event types a live follower sees, numbered from 0."""
    attempt, now = max(result.attempt, 1), time.time()
    told: list[dict] = [{"type": "start", "worker_id": result.worker_id or "?", "model": result.model or "?"}]
    for call in result.tool_calls:
        told.append(
            {
                "type": "tool_call",
                **call.model_dump(
                    include={"call_id", "server", "tool", "arguments", "round"}, by_alias=False
                ),
            }
        )
        if call.result is not None:
            told.append(
                {
                    "type": "tool_result",
                    **call.model_dump(
                        include={"call_id", "server", "tool", "result", "is_error"}, by_alias=False
                    ),
                    "duration_ms": call.duration_ms or 0.0,
                }
            )
    if result.ai_response:
        told.append({"type": "token", "text": result.ai_response})
    usage = result.usage.model_dump(
        include={"prompt_tokens", "completion_tokens", "total_tokens", "estimated"}, by_alias=False
    )
    ending: dict = {"usage": usage, "cost": result.usage.estimated_cost}
    if result.status == "completed":
        ending.update(type="done", finish_reason=result.finish_reason, model=result.model or "?")
    elif result.status == "cancelled":
        ending.update(type="cancelled")
    else:
        ending.update(type="error", error=result.error or result.status)
    told.append(ending)
    return [
        make_event({**fields, "job_id": result.job_id, "seq": seq, "attempt": attempt, "ts": now})
        for seq, fields in enumerate(told)
    ]


def _parse(raw: bytes, job_id: str) -> Event | None:
    try:
        event = parse_event(raw)
    except ValidationError:
        log.warning("ignoring a malformed event for job %s: %.200r", job_id, raw)
        return None
    return event if event.job_id == job_id else None
