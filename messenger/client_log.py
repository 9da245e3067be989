"""A job's lifecycle as MCP log messages (`notifications/message`) on the call's own stream: queued,
started on worker X, restarted (attempt N), tool call and result, completed / failed / cancelled.

2025-11-25 clients set the level with `logging/setLevel`; the level is kept in Redis under the MCP
session id (`mcpq:log-level:<sid>`), so a call that lands on another replica honours it (stdio has one
session: kept in the process). Until a client sets one, `info` and above are sent. The 2026-07-28
revision deprecates logging: the capability is not advertised there, `logging/setLevel` is not served,
and a message goes out only to a request that opted in with `_meta["io.modelcontextprotocol/logLevel"]`.

The messages may carry the caller's own data (tool arguments and results); nothing here goes to the
server's own log. `MCPServer` has no public way to serve `logging/setLevel`, so `serve_logging` reaches
below it once (`_lowlevel_server.add_request_handler`), pinned by tests/messenger/test_client_log.py.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, get_args

from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INTERNAL_ERROR,
    LOG_LEVEL_META_KEY,
    EmptyResult,
    LoggingLevel,
    LoggingMessageNotification,
    LoggingMessageNotificationParams,
    SetLevelRequestParams,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from redis.exceptions import RedisError

from messenger.calls import unavailable
from messenger.collector import Transcript
from messenger.progress import direct_stream, notification
from shared import damaged, keys
from shared.connection import Batch
from shared.events import Event, InputRequiredEvent, TokenEvent, ToolCallEvent, ToolResultEvent

if TYPE_CHECKING:
    from messenger.runtime import Runtime

LEVELS: tuple[str, ...] = get_args(LoggingLevel)  # debug … emergency, in rising order
DEFAULT_LEVEL = "info"
LOGGER = "mcp-queue"
SESSION_HEADER = "mcp-session-id"
_SESSION_ID = re.compile(r"[\x21-\x7e]{1,200}")  # visible ASCII, as the transport mints them
NOTICE_CHARS = 300


def _session_id(request: Any) -> str | None:
    headers = getattr(request, "headers", None)
    sid = headers.get(SESSION_HEADER) if headers is not None else None
    return sid if sid is not None and _SESSION_ID.fullmatch(sid) else None


class LevelStore:
    """Each session's level: in Redis by session id (any replica), in the process without one (stdio)."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.local = DEFAULT_LEVEL

    async def set(self, ctx: ServerRequestContext[Any], params: SetLevelRequestParams) -> EmptyResult:
        sid = _session_id(ctx.request)
        if sid is None:
            self.local = params.level
            return EmptyResult()
        try:
            await self.runtime.redis.set(keys.log_level(sid), params.level, ex=keys.LOG_LEVEL_TTL_SECONDS)
        except (RedisError, OSError) as e:
            raise MCPError(INTERNAL_ERROR, unavailable(e, self.runtime.settings).message) from None
        return EmptyResult()

    async def level(self, request: Any) -> str:
        level = await self.reading(request)
        if isinstance(level, BaseException):
            raise level
        return level

    def reading(self, request: Any) -> asyncio.Future[str | BaseException]:
        """level()'s read, started now in the next Batch pipeline, with no task of its own: a future of
        the level or of the error the read failed with (a result, never raised: a call dropped before
        its first event leaves no unread exception behind)."""
        answer: asyncio.Future[str | BaseException] = asyncio.get_running_loop().create_future()
        sid = _session_id(request)
        if sid is None:
            answer.set_result(self.local)
            return answer
        key = keys.log_level(sid)  # in the pipeline that reads the session's record (Batch.of)
        reply = Batch.of(self.runtime.redis).send(("GET", key))
        reply.add_done_callback(functools.partial(_level_read, answer, key))
        return answer


def _level_read(answer: asyncio.Future[str | BaseException], key: str, reply: asyncio.Future[Any]) -> None:
    if reply.cancelled():
        answer.cancel()
        return
    error = reply.exception()  # (read even when nobody waits for the answer any more)
    if answer.done():
        return
    try:  # a key of another type reads as unset, said once in the log
        stored = damaged.replies([error or reply.result()], [key], [None])[0]
    except Exception as e:  # any other error: the answer, not raised here
        answer.set_result(e)
        return
    level = stored.decode(errors="replace") if isinstance(stored, bytes) else None
    answer.set_result(level if level in LEVELS else DEFAULT_LEVEL)  # unset, expired or junk: the default


Listener = Callable[[Event | None, Transcript], Awaitable[None]]


def job_log(ctx, store: LevelStore | None) -> Listener | None:
    """The lifecycle log of this tool call, or None when no message may go out (a 2026-07-28 request
    that did not opt in, a tool called as a plain method). A 2025-11-25 session's level is a Redis GET:
    it starts now and the job's first event waits for it, so the read overlaps the job's enqueue
    instead of holding back the caller's first token (a failed read fails the call at that event)."""
    request = getattr(ctx, "request_context", None)
    if request is None or store is None:
        return None
    if request.protocol_version in MODERN_PROTOCOL_VERSIONS:
        return _at(ctx, (request.meta or {}).get(LOG_LEVEL_META_KEY))
    return _LevelRead(ctx, store.reading(request.request))


class _LevelRead:
    """A 2025-11-25 call's JobLog, made once the session's level is read (its first event waits)."""

    def __init__(self, ctx, reading):
        self.ctx = ctx
        self.reading = reading
        self.read = False
        self.log: JobLog | None = None

    async def __call__(self, event: Event | None, transcript: Transcript) -> None:
        if not self.read:
            level = await self.reading
            if isinstance(level, BaseException):
                raise level
            self.log, self.read = _at(self.ctx, level), True
        elif type(event) is TokenEvent:  # (the usual event: never a log message, and not the first)
            return
        if self.log is not None:
            await self.log(event, transcript)

    @property
    def tokens_pass(self) -> bool:
        """Whether a token may skip this listener: it would do nothing with it (ProgressRelay)."""
        return self.read


def _at(ctx, level: object) -> JobLog | None:
    return JobLog(ctx, LEVELS.index(level)) if isinstance(level, str) and level in LEVELS else None


def _cut(text: str) -> str:
    return text if len(text) <= NOTICE_CHARS else text[:NOTICE_CHARS] + "…"


def describe(event: Event | None, transcript: Transcript, first: bool) -> tuple[str, str] | None:
    """(level, text) for an event worth a log message; None for tokens and keep-alives."""
    job = f"job {transcript.job_id}"
    if event is None:
        return ("info", f"{job} queued") if first and transcript.status == "queued" else None
    if event.type == "start":
        if event.attempt == 1:
            return "info", f"{job} started on worker {event.worker_id}"
        if transcript.after_pause:
            return (
                "info",
                f"{job} resumed after the answer on worker {event.worker_id}, attempt {event.attempt}",
            )
        return "warning", f"{job} restarted on worker {event.worker_id}, attempt {event.attempt}"
    if isinstance(event, ToolCallEvent):
        arguments = (
            json.dumps(event.arguments, ensure_ascii=False)
            if isinstance(event.arguments, dict)
            else event.arguments
        )
        return "info", f"{job} tool call {event.server}/{event.tool} {_cut(arguments)}"
    if isinstance(event, ToolResultEvent):
        outcome = "error" if event.is_error else "result"
        return (
            "warning" if event.is_error else "info"
        ), f"{job} tool {outcome} {event.server}/{event.tool}: {_cut(event.result)}"
    if isinstance(event, InputRequiredEvent):
        return (
            "notice",
            f"{job} waits for your answer: {_cut(event.question)} (respond_to_job, key {event.key})",
        )
    if event.type == "done":
        return "info", f"{job} completed: {event.usage.completion_tokens} tokens"
    if event.type == "error":
        return "error", f"{job} failed: {event.error}"
    if event.type == "cancelled":
        return "notice", f"{job} cancelled"
    return None


class JobLog:
    """Sends the job's lifecycle at or above the client's level (an extra listener of ProgressRelay)."""

    def __init__(self, ctx, threshold: int):
        self.ctx = ctx
        self.threshold = threshold
        request = ctx.request_context  # (a pydantic private attribute: looked up once)
        self.request_id = request.request_id
        self.direct = direct_stream(request)  # the same stream as the call's progress
        self.first = True

    @property
    def tokens_pass(self) -> bool:
        """Whether a token may skip this listener: it would do nothing with it (ProgressRelay)."""
        return not self.first

    async def __call__(self, event: Event | None, transcript: Transcript) -> None:
        if type(event) is TokenEvent:  # the usual event, in short: never a message (describe)
            self.first = False
            return
        said, self.first = describe(event, transcript, self.first), False
        if said is None or LEVELS.index(said[0]) < self.threshold:
            return
        if self.direct is not None:
            message = {"level": said[0], "logger": LOGGER, "data": said[1]}
            await self.direct.send(notification("notifications/message", message))
            return
        params = LoggingMessageNotificationParams(level=said[0], data=said[1], logger=LOGGER)  # type: ignore[arg-type]
        await self.ctx.session.send_notification(LoggingMessageNotification(params=params), self.request_id)


def serve_logging(mcp: MCPServer, store: LevelStore) -> None:
    """Serve logging/setLevel (which makes 2025-11-25 advertise `logging`; the runner refuses the
    method on 2026-07-28) and keep the capability out of 2026-07-28's `server/discover`."""
    mcp._lowlevel_server.add_request_handler("logging/setLevel", SetLevelRequestParams, store.set)  # pyright: ignore[reportPrivateUsage]

    async def no_logging_in_2026(ctx, call_next):
        result = await call_next(ctx)
        if ctx.method == "server/discover" and isinstance(result, dict):
            result.get("capabilities", {}).pop("logging", None)
        return result

    mcp.middleware.append(no_logging_in_2026)
