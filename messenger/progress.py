"""A job's story as MCP progress notifications: `message` is answer text only, the rest is in `_meta`.

Joined, the `message`s of one call are its answer (`aiResponse`). Everything that is not answer text
(queued, running on a worker, restarted, tool calls and results, keep-alives) rides in the
notification's `_meta` under the `mcp-queue/…` keys below, so a client that prints `message` prints
the answer and nothing else. A restart (the worker died, another runs the job again) carries
`mcp-queue/restart`: the client drops the text it has; the messages from that notification on are
the answer (a re-run that went on from the job's journal sends the text it kept first, once).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import time
import weakref
from typing import Any, TypeAlias

from mcp_types import ProgressNotification, ProgressNotificationParams
from pydantic_core import to_json

from messenger.collector import Transcript
from messenger.session_sdk import RequestStream, request_stream
from shared.events import TERMINAL, Event, TokenEvent, ToolCallEvent, ToolResultEvent

log = logging.getLogger("messenger.progress")

# seconds between text notifications: tokens are batched, not one per message. Held text waits up to
# this long, so it stays under a small model's token gap (~30 ms): 50 ms held its last token ~40 ms
PROGRESS_INTERVAL = 0.02
BUSY_CALLS = 100  # more calls than this streaming text in one process: each sends text less often,
BUSY_INTERVAL = 0.1  # every BUSY_INTERVAL seconds (fewer notifications: the CPU for more callers)
TICK_PHASES = 2  # on one of this many clocks, evenly apart: each tick's burst of writes a share of the calls
NOTICE_CHARS = 300  # a tool's arguments or result in `_meta` are cut to this many characters

JOB_ID = "mcp-queue/jobId"  # every notification: the job that answers this call
STATUS = "mcp-queue/status"  # every notification: queued | running | completed | failed | cancelled
ATTEMPT = "mcp-queue/attempt"  # every notification: 1, 2, … (0 while the job has not started)
SEQ = "mcp-queue/seq"  # every notification: the seq of the attempt's last event it tells (-1: none yet)
WORKER = "mcp-queue/worker"  # when an attempt starts: the worker id running it
RESTART = "mcp-queue/restart"  # the new attempt number: drop the text received so far
TOOL_CALL = "mcp-queue/toolCall"  # {callId, server, tool, arguments, round}
TOOL_RESULT = "mcp-queue/toolResult"  # {callId, server, tool, result, isError, durationMs}


def _cut(text: str) -> str:
    return text if len(text) <= NOTICE_CHARS else text[:NOTICE_CHARS] + "…"


def tool_meta(event: ToolCallEvent | ToolResultEvent) -> dict[str, Any]:
    """A tool call or result as its `_meta` entry (long arguments and results cut)."""
    if isinstance(event, ToolCallEvent):
        arguments: dict[str, Any] | str = event.arguments
        if isinstance(arguments, dict):
            dumped = json.dumps(arguments, ensure_ascii=False)
            arguments = arguments if len(dumped) <= NOTICE_CHARS else dumped  # a big object: its JSON, cut
        if isinstance(arguments, str):
            arguments = _cut(arguments)
        return {TOOL_CALL: {
            "callId": event.call_id, "server": event.server, "tool": event.tool,
            "arguments": arguments, "round": event.round,
        }}  # fmt: skip
    return {TOOL_RESULT: {
        "callId": event.call_id, "server": event.server, "tool": event.tool,
        "result": _cut(event.result), "isError": event.is_error, "durationMs": event.duration_ms,
    }}  # fmt: skip


class ProgressOut:
    """Sends one call's progress notifications with `_meta`.

    The SDK's `report_progress` has no `_meta`, so the notification is built here: over a
    2025-11-25 HTTP session it is written to the request's own SSE stream directly
    (messenger.session_sdk.RequestStream: one JSON dump, no per-message SDK chain), otherwise sent
    through the session on the request's stream (`send_notification` with the request id). Without
    a token in the request (the in-process client, which takes a callback instead), it falls back
    to `report_progress`, which carries no `_meta`.
    """

    def __init__(self, ctx, total: float | None):
        self.ctx = ctx
        self.total = total
        request = getattr(ctx, "request_context", None)  # None: a tool called as a plain method
        self.token = (request.meta or {}).get("progress_token") if request is not None else None
        self.request_id = request.request_id if request is not None else None
        self.direct = direct_stream(request)

    def together(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """Notifications sent inside go out at its end, together (RequestStream), where that is possible."""
        return self.direct if self.direct is not None and self.token is not None else _AT_ONCE

    async def send(self, progress: float, message: str | None, meta: dict[str, Any]) -> None:
        if self.token is None:
            await self.ctx.report_progress(progress, self.total, message)
            return
        if self.direct is not None:
            await self.direct.send(*self.encoded(progress, message, meta))
            return
        params_model = ProgressNotificationParams(
            progress_token=self.token, progress=progress, total=self.total, message=message, _meta=meta
        )
        await self.ctx.session.send_notification(ProgressNotification(params=params_model), self.request_id)

    def encoded(self, progress: float, message: str | None, meta: dict[str, Any]) -> tuple[str, str]:
        """The notification as RequestStream sends it: (its JSON, its job label)."""
        params: dict[str, Any] = {"progressToken": self.token, "progress": progress}
        if self.total is not None:
            params["total"] = self.total
        if message is not None:
            params["message"] = message
        params["_meta"] = meta
        return notification("notifications/progress", params), job_label(meta)

    def in_halves(self) -> RequestStream | None:
        """The request's stream, where a notification can be sent in halves (RequestStream.submit,
        finish) with other calls' (a tick's); None where it goes as `send` sends it."""
        direct = self.direct
        return direct if direct is not None and self.token is not None and direct.halves is not None else None


_AT_ONCE = contextlib.nullcontext()


def direct_stream(request) -> RequestStream | None:
    """The request's SSE stream to write notifications to directly, if it has one here."""
    if request is None:
        return None
    return request_stream(getattr(request, "request", None), request.request_id)


def notification(method: str, params: dict[str, Any]) -> str:
    """A JSON-RPC notification in its wire form: pydantic-core's encoder (a progress notification
    5.7 -> 0.9 us), json.dumps's for what it refuses (text with a lone surrogate)."""
    message = {"jsonrpc": "2.0", "method": method, "params": params}
    try:
        return to_json(message, inf_nan_mode="constants").decode()
    except ValueError:  # (PydanticSerializationError is one)
        return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


def job_label(meta: dict[str, Any] | None) -> str:
    """`@<job id>:<attempt>.<seq>` for a job's progress notification (its `_meta`), so an SSE event's
    id names the job and its event seq (messenger.sessions resumes a job's story by it); '' otherwise."""
    if not isinstance(meta, dict):
        return ""
    job, attempt, seq = meta.get(JOB_ID), meta.get(ATTEMPT), meta.get(SEQ)
    if not isinstance(job, str) or not isinstance(attempt, int) or not isinstance(seq, int):
        return ""
    return f"@{job}:{attempt}.{seq}"


_RELAYS = itertools.count()  # relays made so far: each takes the next tick clock
STREAMING: weakref.WeakSet[ProgressRelay] = weakref.WeakSet()  # this process's relays of started jobs
_ENDING: set[asyncio.Task[Any]] = set()  # bursts' holds and ticks' writes being sent off the follower's path


def _off_path(coro) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _ENDING.add(task)
    task.add_done_callback(_ENDING.discard)


def _bursting(event: Event | None, transcript: Transcript, hold: Any) -> bool:
    """Whether this event's notifications wait for the next events' (messages wait behind it for the
    follower, and the call goes on: an ending or a pause for the caller's answer goes out at once)."""
    return (
        isinstance(hold, RequestStream)
        and bool(hold.held)  # (a backlog of tokens whose text waits holds nothing: no need)
        and transcript.behind > 0
        and event is not None
        and event.type not in TERMINAL
        and event.type != "input_required"
    )


def text_interval() -> float:
    """Seconds between one call's text notifications: longer when many calls stream at once."""
    return BUSY_INTERVAL if len(STREAMING) > BUSY_CALLS else PROGRESS_INTERVAL


def next_text_at(sent: float, due: float, phase: float = 0.0) -> float:
    """When a call's text may go out again after text sent at `sent` (due at `due`): PROGRESS_INTERVAL
    later, and while more than BUSY_CALLS calls stream on the tick of the clock the call keeps (ticks
    BUSY_INTERVAL apart, `phase` of an interval after the whole ones, so the held text of the calls
    on that clock goes out together): the tick after the one it was due at, or a later one when it
    went out over a fifth of an interval late (a busy loop sends no more often for it).

    Why TICK_PHASES clocks, not one: a tick stores and writes each of its calls' text in turn, 30-45
    ms for 1,000 calls, and the last call's tokens waited all of it; two clocks half an interval
    apart each write half the calls, for the same CPU (bench/NOTES.md)."""
    if len(STREAMING) <= BUSY_CALLS:  # a few calls: each at its own pace (a small model's ~30 ms gaps)
        return sent + PROGRESS_INTERVAL
    earliest = max(due + BUSY_INTERVAL, sent + BUSY_INTERVAL * 0.8)
    # (the same float for every call on the clock: the tick's key)
    return (math.ceil(earliest / BUSY_INTERVAL - phase - 1e-6) + phase) * BUSY_INTERVAL


_TICKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, list[_Held]]] = (
    weakref.WeakKeyDictionary()
)


class _Held:
    """A call's held text, sent at its tick (`_ring`) with every other call's due then.

    Why: a task a call (started at the tick, or started when the text was held to wait for it) was
    two of its notification's loop callbacks (its start, its wake-up after the store) and a task;
    the tick stores every due call's text in one pipeline and one task writes them all."""

    __slots__ = ("cancelled", "relay", "task", "transcript")

    def __init__(self, relay: ProgressRelay, transcript: Transcript):
        self.relay = relay
        self.transcript = transcript
        self.cancelled = False
        self.task: asyncio.Task[None] | None = None

    def due(self) -> None:
        """Flush it in a task of its own (its call is sending: it waits its turn; or it cannot go in
        halves)."""
        if not self.cancelled:
            self.task = asyncio.get_running_loop().create_task(self.relay._flush_held(self.transcript))

    def cancel(self) -> None:
        self.cancelled = True
        if self.task is not None:
            self.task.cancel()


def _at_tick(at: float, held: _Held) -> None:
    """Send `held` at `at` (time.monotonic), by one timer for every call's held text due then: their
    stores go in one Batch pipeline and their socket writes one after another (a timer and a few
    calls a pipeline, each at its own moment, cost more CPU a token: bench/NOTES.md)."""
    loop = asyncio.get_running_loop()
    ticks = _TICKS.setdefault(loop, {})
    waiting = ticks.get(at)
    if waiting is None:
        waiting = ticks[at] = []
        loop.call_later(max(0.0, at - time.monotonic()), _ring, ticks, at)
    waiting.append(held)


# a held text under way at a tick: its relay (its `sending` taken), stream, events, their store, job id
_Sent: TypeAlias = tuple[
    "ProgressRelay", RequestStream, list[tuple[str, str]], "asyncio.Future[list[Any]]", str
]


def _ring(ticks: dict[float, list[_Held]], at: float) -> None:
    """The tick: every due call's held text stored now (one Batch pipeline), and one task to write
    them once it is back (`_write_tick`). A call that is sending (an event's notification on its
    way: its text goes after it) or cannot be sent in halves flushes in a task of its own, as does a
    call whose socket may make its write wait; a call that ended since it held text is skipped."""
    sent: list[_Sent] = []
    for held in ticks.pop(at, ()):
        if held.cancelled:
            continue
        relay = held.relay
        stream = relay.out.in_halves()
        if stream is None or not _take_now(relay.sending):
            held.due()
            continue
        events, stored = None, None
        try:
            events = relay._take_held(held.transcript)
            stored = stream.submit(events) if events else None
        except Exception as e:  # (its own call's: the others go on)
            log.debug("held-back progress of job %s not sent: %r", held.transcript.job_id, e)
        if events is None or stored is None:  # nothing to send, or the stream's open hold sends it
            relay.sending.release()
        else:
            sent.append((relay, stream, events, stored, held.transcript.job_id))
    if sent:
        _off_path(_write_tick(sent))


def _take_now(lock: asyncio.Lock) -> bool:
    """Take `lock` if that needs no wait: asyncio.Lock.acquire ends at its first step when the lock
    is free and nobody waits for it. False, and no wait begun, otherwise (a waiter woken by its
    release has not taken it yet)."""
    if lock.locked():
        return False
    acquiring = lock.acquire()
    try:
        acquiring.send(None)
    except StopIteration:
        return True
    acquiring.close()
    return False


async def _write_tick(sent: list[_Sent]) -> None:
    """A tick's writes once their stores are back, one after another in one task; a call whose write
    may wait (its client does not read: RequestStream.writes_now) writes in a task of its own, so
    it holds up no other call."""
    handed = 0
    try:
        for relay, stream, events, stored, job_id in sent:
            if not stored.done():  # (the first: the tick's pipeline; the others came back with it)
                with contextlib.suppress(Exception):
                    await stored
            handed += 1
            if stream.writes_now():
                await _finish(relay, stream, events, stored, job_id)
            else:
                _off_path(_finish(relay, stream, events, stored, job_id))
    finally:
        for relay, *_ in sent[handed:]:  # (cancelled: the loop closes)
            relay.sending.release()


async def _finish(
    relay: ProgressRelay, stream: RequestStream, events: list[tuple[str, str]],
    stored: asyncio.Future[list[Any]], job_id: str,
) -> None:  # fmt: skip
    try:
        await stream.finish(events, stored)
    except Exception as e:  # the call ended meanwhile: its stream is gone, and so is the need
        log.debug("held-back progress of job %s not sent: %r", job_id, e)
    finally:
        relay.sending.release()


class ProgressRelay:
    """Relays a job's events to the caller as progress (an `OnEvent` for JobClient.run / wait).

    Text goes out at most once per PROGRESS_INTERVAL (about every BUSY_INTERVAL, on a clock all calls
    share, while more than BUSY_CALLS calls stream in this process: next_text_at), except the first
    text of each attempt, which goes out at once; text held back goes out when the interval ends even
    if no event follows (a model that pauses mid-answer does not hold its last words). Nor does the follower wait for a
    notification of its call on its way (a busy messenger's store round trip: 0.1-1 s at 1,000
    callers) or send text while messages wait behind the token (a backlog): what comes meanwhile
    goes out together after it, so a stream catches up instead of a token per round trip.
    `progress` counts the attempt's tokens and rises with every notification (the spec asks it to):
    a notification without new tokens adds a hair.
    """

    def __init__(self, ctx, total: int | None, lifecycle=None):
        self.out = ProgressOut(ctx, total)
        self.lifecycle = lifecycle  # messenger.client_log.JobLog: the same story as log messages
        self.pending: list[str] = []
        self.text_free_at = 0.0  # when text may go out again (next_text_at; status notices do not hold it)
        self.sent_text_of = 0  # the attempt whose text has started going out
        self.progress = 0.0
        self.job_id: str | None = None  # the followed job, once its first event (or tick) came
        self.sending = asyncio.Lock()  # the held-back flush and the events' notifications, in order
        self.held: _Held | None = None  # the flush of text held back, due at the interval's end
        self.burst: Any = None  # the hold (RequestStream) kept open across a burst's events
        self.burst_ends = False  # the loop turned while an event of the burst was being relayed
        self.relaying = False  # inside `_relay` (it may wait: for the sending lock, the SDK's stream)
        self.phase = next(_RELAYS) % TICK_PHASES / TICK_PHASES  # its tick clock's (next_text_at)

    async def __call__(self, event: Event | None, transcript: Transcript) -> None:
        """Relay one event. Its log message, text and status go out together (one store entry, one
        write); so do those of a burst, events already waiting behind it in the follower's mailbox
        (`transcript.behind`: an instant job's start, text and ending come in one hub read): the hold
        stays open until the burst's last event, or the loop's next turn, whichever comes first."""
        self.job_id = transcript.job_id
        if self._joins_held(event, transcript):
            return
        hold = self.burst
        if hold is None:
            hold = self.out.together()
            await hold.__aenter__()
        self.relaying = True
        try:
            await self._relay(event, transcript)
        except BaseException:
            if self.burst is None:  # its own hold: dropped (the call is failing or cancelled: its
                await hold.__aexit__(RuntimeError, None, None)  # response ends it; nothing waits here)
            elif self.burst_ends:  # (else _burst_due has it sent at the loop's next turn)
                _off_path(self._end_burst())
            raise
        finally:
            self.relaying = False
        if self.burst_ends or not _bursting(event, transcript, hold):
            self.burst, self.burst_ends = None, False
            await hold.__aexit__(None, None, None)
        elif self.burst is None:
            self.burst = hold
            asyncio.get_running_loop().call_soon(self._burst_due)

    def _joins_held(self, event: Event | None, transcript: Transcript) -> bool:
        """Hold a token's text for the call's next tick, if that is all its relay would do (the usual
        token while many calls stream): no hold opened and closed, no listener called, no await;
        `_relay`'s token branch in short, where it sends nothing. Why: most tokens while many calls
        stream, each a hold's enter and exit and the listener's call for nothing (bench/NOTES.md)."""
        if type(event) is not TokenEvent or not self.takes(event, transcript):
            return False
        self.take(event, transcript)
        return True

    def takes(self, event: TokenEvent, transcript: Transcript) -> bool:
        """Whether holding the token's text is all this relay would do with it (collector.Holder)."""
        return (
            self.burst is None
            and self.sent_text_of == event.attempt
            and (self.lifecycle is None or getattr(self.lifecycle, "tokens_pass", False))
            and not self._due(transcript)
        )

    def take(self, event: TokenEvent, transcript: Transcript) -> None:
        """Hold the token's text for the call's next tick (`takes` said so)."""
        self.job_id = transcript.job_id
        self.pending.append(event.text)
        self._hold(transcript)

    def _hold(self, transcript: Transcript) -> None:
        """The pending text waits for the call's next tick (booked once: later tokens join it)."""
        if self.held is None:
            self.held = _Held(self, transcript)
            _at_tick(self.text_free_at, self.held)

    def _burst_due(self) -> None:
        """The loop's next turn after a burst began: mostly its last event has sent it by now (an
        instant job's start, text and ending came in one read), and nothing is left to do: a task to
        send it only when it is still open (a task a call, and its done callback, were most of that)."""
        if self.burst is not None:
            _off_path(self._end_burst())

    async def _end_burst(self) -> None:
        """Send what a burst's hold has once the loop has turned (the follower waits, or ended, or was
        cancelled, or its next message was no event of the job's), in order: its store entry is queued
        before anything the call sends after it. A task: a follower that failed or was cancelled
        cannot wait for the store."""
        if self.burst is None:  # (the burst's last event sent it)
            return
        if self.relaying:  # the follower waits inside an event's relay: it sends at that event's end
            self.burst_ends = True
            return
        hold, self.burst, self.burst_ends = self.burst, None, False
        await hold.__aexit__(None, None, None)

    async def _relay(self, event: Event | None, transcript: Transcript) -> None:
        if self.lifecycle is not None:
            await self.lifecycle(event, transcript)
        if event is None:  # the job's id at once, then keep-alives: no message, the text stays the answer
            await self._status(transcript)
        elif event.type == "token":
            self.pending.append(event.text)
            if self.sent_text_of != event.attempt or self._due(transcript):
                await self._flush(transcript)
            else:
                self._hold(transcript)
        elif event.type == "start":
            STREAMING.add(self)  # (once an attempt, not a new weak reference every token)
            self.pending.clear()  # a re-run: its tokens replace the old attempt's
            extra: dict[str, Any] = {WORKER: event.worker_id}
            if event.attempt > 1:
                extra[RESTART] = event.attempt
            await self._status(transcript, extra)
            if event.resumed is not None and transcript.text:  # what the journal kept, said again
                self.pending.append(transcript.text)
                await self._flush(transcript)
        elif isinstance(event, ToolCallEvent | ToolResultEvent):
            await self._flush(transcript)
            await self._status(transcript, tool_meta(event))
        else:  # the end: the last text, then the outcome
            STREAMING.discard(self)
            await self._flush(transcript)
            await self._status(transcript)
            if self.held is not None:  # (its text went out above; a job that goes on holds text anew:
                self.held.cancel()  # an input_required its caller answered, the follower goes on past)
                self.held = None

    def _due(self, transcript: Transcript) -> bool:
        """Whether text goes out with this token: its interval has passed, no notification of this
        call is on its way (a text send waits for it: the one after takes what came meanwhile), no
        message waits behind it for the follower (a backlog goes out together once caught up), and,
        while the calls share ticks, no held text waits for its tick (a busy loop runs it late: the
        token joins the text there, in the tick's one pipeline and task, not alone a moment before)."""
        if transcript.behind or self.sending.locked() or time.monotonic() < self.text_free_at:
            return False
        return self.held is None or len(STREAMING) <= BUSY_CALLS

    async def _flush_held(self, transcript: Transcript) -> None:
        try:
            await self._flush(transcript, held=True)
        except Exception as e:  # the call ended meanwhile: its stream is gone, and so is the need
            log.debug("held-back progress of job %s not sent: %r", transcript.job_id, e)

    def _meta(self, transcript: Transcript) -> dict[str, Any]:
        return {
            JOB_ID: transcript.job_id, STATUS: transcript.status, ATTEMPT: transcript.attempt,
            SEQ: transcript.last_seq,
        }  # fmt: skip

    async def _flush(self, transcript: Transcript, held: bool = False) -> None:
        async with self.sending:
            if held:  # from here on a token schedules the next held flush (this one has its text)
                self.held = None
            note = self._text(transcript)
            if note is not None:
                await self.out.send(*note)

    def _text(self, transcript: Transcript) -> tuple[float, str, dict[str, Any]] | None:
        """The pending text's notification (progress, text, `_meta`), the relay moved on as it goes
        out (under `sending`); None: no text pending."""
        if not self.pending:
            return None
        text, self.pending = "".join(self.pending), []
        self._advance(transcript)
        self.text_free_at = next_text_at(time.monotonic(), self.text_free_at, self.phase)
        self.sent_text_of = transcript.attempt
        return self.progress, text, self._meta(transcript)

    def _take_held(self, transcript: Transcript) -> list[tuple[str, str]] | None:
        """_flush(held=True)'s text as RequestStream events, for the tick to send (under `sending`)."""
        self.held = None
        note = self._text(transcript)
        return [self.out.encoded(*note)] if note is not None else None

    def _advance(self, transcript: Transcript) -> None:
        # the attempt's token count, but never back down (a restart counts from 0 again)
        self.progress = max(float(transcript.tokens), self.progress + 0.001)

    async def _status(self, transcript: Transcript, extra: dict[str, Any] | None = None) -> None:
        async with self.sending:
            self._advance(transcript)
            meta = self._meta(transcript)
            if extra:
                meta.update(extra)
            await self.out.send(self.progress, None, meta)
