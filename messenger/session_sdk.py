"""Where mcp-queue reaches below the mcp SDK's public API for shared HTTP sessions (with
messenger.session_post, a session's POST handed to its dispatcher), pinned by
tests/messenger/test_session_sdk.py so an SDK upgrade that moves any of it fails loudly there.

Why: the SDK keeps a 2025-11-25 session as a transport object in one process's session manager
(`StreamableHTTPSessionManager._server_instances`), and gives it one event store for all its
sessions (the store never learns the session id, so request ids would collide). To let any replica
serve any session (messenger.sessions), three things are done here and nowhere else:

- `give_each_session_a_store`: every session this process opens gets an event store of its own
  (the manager's `_admit_session` is wrapped and the new transport's `_event_store` set);
- `rehydrate`: a session opened on another replica becomes a local transport, run the way the
  manager's own `serve_loop` runs one, but with the connection already past its handshake (client
  params and protocol version from Redis, `initialized` set) and bound to the tenant that opened it;
- `is_local` / `discard`: whether this process holds the session, and forget it (ended elsewhere);
- `request_stream`: a request's SSE response written directly (RequestStream, Wire), for the
  notifications a long tool call sends by the thousand;
- `answer_posts_lightly`: such a request's response is a PostStream, not sse-starlette's
  EventSourceResponse (the module global the SDK's POST handler builds it by).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import anyio
from mcp.server import streamable_http
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, authorization_context
from mcp.server.connection import Connection
from mcp.server.runner import serve_connection
from mcp.server.streamable_http import EventMessage, EventStore, StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher
from mcp_types import InitializeRequestParams, JSONRPCError, JSONRPCResponse
from sse_starlette import EventSourceResponse
from sse_starlette.event import ensure_bytes
from starlette.types import Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

log = logging.getLogger("messenger")

MANAGER_SCOPE_KEY = "mcp-queue.session-manager"  # set by messenger.sessions.SessionGate on each request
WIRE_SCOPE_KEY = "mcp-queue.wire"  # a POST's Wire, set by messenger.sessions.SessionGate
STREAM_SCOPE_KEY = "mcp-queue.request-stream"  # a POST's RequestStream, made by request_stream


def give_each_session_a_store(
    manager: StreamableHTTPSessionManager, store_for: Callable[[str], EventStore]
) -> None:
    """Every session the manager opens from now on stores its events in `store_for(session_id)`."""
    admit = manager._admit_session

    def admit_with_store(requestor):
        transport = admit(requestor)
        if transport is not None and transport.mcp_session_id is not None:
            transport._event_store = store_for(transport.mcp_session_id)
        return transport

    manager._admit_session = admit_with_store


def is_local(manager: StreamableHTTPSessionManager, session_id: str) -> bool:
    return session_id in manager._server_instances


async def discard(manager: StreamableHTTPSessionManager, session_id: str) -> None:
    """Forget a session this process holds (it was ended on another replica, or expired)."""
    transport = manager._server_instances.get(session_id)
    if transport is not None:
        await manager._discard_session(session_id, transport)


async def rehydrate(
    manager: StreamableHTTPSessionManager,
    session_id: str,
    protocol_version: str,
    initialize_params: dict[str, Any],
    owner: AuthenticatedUser | None,
    store: EventStore,
) -> None:
    """Serve a session opened elsewhere from this process, as if its handshake had happened here.

    Raises pydantic's ValidationError when `initialize_params` are not an initialize request's."""
    client_params = InitializeRequestParams.model_validate(initialize_params, by_name=False)
    transport = StreamableHTTPServerTransport(
        mcp_session_id=session_id,
        is_json_response_enabled=manager.json_response,
        event_store=store,
        security_settings=manager.security_settings,
        retry_interval=manager.retry_interval,
        idle_timeout=manager.session_idle_timeout,
    )

    async def run(*, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        async with transport.connect() as (read_stream, write_stream):
            task_status.started()
            try:
                idle_scope = transport.idle_scope or anyio.CancelScope()
                with idle_scope:  # the same idle end as a session opened here
                    dispatcher = JSONRPCDispatcher(
                        read_stream, write_stream, inline_methods=frozenset({"initialize"})
                    )
                    connection = Connection.for_loop(
                        dispatcher, session_id=session_id, protocol_version_hint=protocol_version
                    )
                    connection.client_params = client_params
                    connection.protocol_version = protocol_version
                    connection.initialized.set()
                    await serve_connection(
                        manager.app, dispatcher, connection=connection, lifespan_state=manager._lifespan_state
                    )
            except Exception as e:  # the session ends; the client opens a new one on its next 404
                log.warning("session %s ended: %s", session_id[:12], type(e).__name__)
            finally:
                await manager._discard_session(session_id, transport)

    if manager._task_group is None:
        raise RuntimeError("the session manager is not running")
    manager._server_instances[session_id] = transport
    if owner is not None:
        manager._session_owners[session_id] = authorization_context(owner)
    await manager._task_group.start(run)


class _Encoded:
    """A JSON-RPC message already in its wire form: the transport's SSE writer asks it for its JSON."""

    __slots__ = ("body",)

    def __init__(self, body: str):
        self.body = body

    def model_dump_json(self, **_: Any) -> str:
        return self.body


class Wire:
    """The ASGI `send` of one POST's SSE response, as the server (uvicorn) gave it, wrapped to see
    what the SDK's response writes: once its first event (the priming one) is out, RequestStream may
    write notifications to the socket itself; once the response is complete, nothing more goes.

    Why: from the request's stream to the socket the SDK's path takes two memory streams, two task
    wake-ups, sse-starlette's encoder, a cancel scope per event and the ASGI middleware chain, more
    CPU than all the rest of relaying a token (bench/callers.py)."""

    __slots__ = ("ended", "head", "headed", "pinging", "queued", "send", "started")

    def __init__(self, send: Send):
        self.send = send
        self.headed = False  # the response's head went out: pings may follow (as sse-starlette's)
        self.started = False  # the response's first event (the priming event) went out
        self.ended = False  # the response is complete (or failed): the stream is gone
        self.queued = False  # a notification went the SDK's way: the rest follow it, in order
        self.pinging = False  # a ping is being written (waits while the client does not read)
        self.head: Message | None = None  # the response's head, held for its first body (`headed`)

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.headed = True  # (a 2025-06-18 call has no priming event: its first may come late)
        elif message["type"] == "http.response.body":
            if message.get("more_body", False):
                self.started = True
            else:
                self.ended = True
        await self.send(message)

    def hold_head(self, head: Message) -> bool:
        """Keep the response's head for its first body, to go out in one socket write with it (uvicorn's
        httptools writes each ASGI message at once: the head and the priming event were two writes of
        the five a call makes); False where `send` is not uvicorn's httptools response (send it)."""
        cycle = getattr(self.send, "__self__", None)
        if type(cycle) is not RequestResponseCycle or not isinstance(cycle.transport, asyncio.Transport):
            return False
        self.head = head
        return True

    def takes_now(self) -> bool:
        """Whether a body sent now is written without a wait: uvicorn's httptools response whose
        transport is not paused (the client reads); False where it may wait, or this cannot tell."""
        cycle = getattr(self.send, "__self__", None)
        return type(cycle) is RequestResponseCycle and not cycle.flow.write_paused

    async def body(self, message: Message) -> None:
        """A body message of the response, with its held head (`hold_head`) if any, in one write."""
        head, self.head = self.head, None
        if head is None:
            await self(message)
            return
        cycle = self.send.__self__  # type: ignore[attr-defined]  # (hold_head saw uvicorn's)
        real = cycle.transport
        cycle.transport = joined = _Joined(real)
        try:
            await self(head)
            await self(message)
        finally:
            cycle.transport = real
            joined.flush()


class _Joined:
    """A transport's writes kept and written as one (Wire.body); anything else is the transport's."""

    def __init__(self, transport: asyncio.Transport):
        self.transport = transport
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    def flush(self) -> None:
        if self.parts:
            data, self.parts = b"".join(self.parts), []
            if not self.transport.is_closing():
                self.transport.write(data)

    def close(self) -> None:  # (uvicorn closes after a response's end when the client asked it to)
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


def sse(event_id: str | None, body: str) -> bytes:
    """One event as sse-starlette encodes the SDK's (`id`, `event`, `data`, CRLF): a JSON body has
    no line break in it."""
    head = f"id: {event_id}\r\n" if event_id else ""
    return f"{head}event: message\r\ndata: {body}\r\n\r\n".encode()


class RequestStream:
    """Notifications of one request of a 2025-11-25 session this process holds, written without the
    SDK's per-message chain.

    Why: a notification sent through the session goes through the dispatcher, two memory streams and
    the session's one message-router task, and is built and dumped as pydantic models; at 1,000
    callers × 20 notifications a second that chain was most of the messenger's CPU. Here the JSON is
    made once, stored in the session's event store (what a `Last-Event-ID` resumes on any replica),
    and written to the response's socket (Wire) once the priming event is out, else put on the
    request's own stream, the one the SDK's SSE writer drains after its priming event and before the
    response: either way the same order, ids and replay as the SDK's path. No stream (the client
    went away; it resumes from the store) drops the live copy only.

    `async with` it: what is sent inside goes out at the end, together (one Batch entry, one socket
    write), so a job event's log message, status and text cost one round trip and one write, not
    three; an error inside drops them (the call is failing or cancelled: its response ends it).
    """

    def __init__(self, transport: StreamableHTTPServerTransport, request_id: str, wire: Wire | None):
        self.transport = transport
        self.request_id = request_id
        self.wire = wire
        self.store = getattr(transport._event_store, "store_bodies", None)  # messenger.sessions.SessionEvents
        self.halves = transport._event_store if hasattr(transport._event_store, "submit_bodies") else None
        self.held: list[tuple[str, str]] | None = None  # inside `async with`: sent at its end
        self.holds = 0  # the `async with`s open (nested or overlapping: the last to end sends)

    async def __aenter__(self) -> RequestStream:
        self.holds += 1
        if self.held is None:
            self.held = []
        return self

    async def __aexit__(self, kind, *_: Any) -> None:
        self.holds -= 1
        if self.holds:
            return
        held, self.held = self.held, None
        if held and kind is None:
            await self._send(held)

    async def send(self, body: str, label: str = "") -> None:
        if self.held is not None:
            self.held.append((body, label))
            return
        await self._send([(body, label)])

    async def _send(self, events: list[tuple[str, str]]) -> None:
        ids = await self.store(self.request_id, events) if self.store is not None else [None] * len(events)
        await self._write(events, ids)

    def submit(self, events: list[tuple[str, str]]) -> asyncio.Future[list[Any]] | None:
        """`send`'s first half, for a caller that sends many requests' events together (messenger.
        progress's tick: their stores in one Batch pipeline, one task to wait for them): `events` go in
        the session store's next pipeline now, and `finish` writes them once that future is done. None:
        nothing to finish (inside `async with`: they go at its end, as `send`'s). Only where `halves`
        is set (the session's store is messenger.sessions.SessionEvents)."""
        if self.held is not None:
            self.held.extend(events)
            return None
        return self.halves.submit_bodies(self.request_id, events)  # type: ignore[union-attr]

    def writes_now(self) -> bool:
        """Whether `finish` writes without a wait once its store is done: straight to a socket that
        takes it (Wire.takes_now), or nowhere (the response ended); not on the request's own stream."""
        wire = self.wire
        return wire is not None and wire.started and not wire.queued and (wire.ended or wire.takes_now())

    async def finish(self, events: list[tuple[str, str]], stored: asyncio.Future[list[Any]]) -> None:
        """`send`'s second half (`submit`): the events' ids from the store's replies, then their write."""
        await self._write(events, await self.halves.stored_ids(self.request_id, events, stored))  # type: ignore[union-attr]

    async def _write(self, events: list[tuple[str, str]], ids: list[str] | list[None]) -> None:
        wire = self.wire
        if wire is not None and wire.started and not wire.queued:
            if not wire.ended:
                body = b"".join(sse(event_id, body) for event_id, (body, _) in zip(ids, events, strict=True))
                try:
                    await wire.send({"type": "http.response.body", "body": body, "more_body": True})
                except (RuntimeError, OSError):  # the server has closed the response meanwhile
                    wire.ended = True
            return
        streams = self.transport._request_streams.get(self.request_id)
        if streams is None:
            return
        if wire is not None:
            wire.queued = True
        try:
            for event_id, (body, _) in zip(ids, events, strict=True):
                await streams[0].send(EventMessage(_Encoded(body), event_id))  # type: ignore[arg-type]
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):  # the client went away meanwhile
            pass


PING_SECONDS = 15.0  # as sse-starlette: a comment line keeps proxies from closing a quiet stream
PING = b": ping\r\n\r\n"


class PostStream:
    """The SSE response of a POST in a 2025-11-25 session (SessionGate gave its scope a Wire), built
    where the SDK builds sse-starlette's EventSourceResponse, with the same arguments; any other
    response (a GET's stream, a replay, another transport) is sse-starlette's, unchanged.

    Why: sse-starlette runs five tasks per response (stream, ping, shutdown watch, the SDK's SSE
    writer, disconnect watch) and cancels three at the end; at 1,000 callers that was a tenth of the
    messenger's py-spy samples, and the frames and tracebacks of the cancelled tasks were most of
    the cyclic garbage the collector then spent more on. Here the SDK's SSE writer's work is done in
    this one task (`_write_events`: no writer task, no second memory stream per call), a ping every
    PING_SECONDS from one task for all streams. A client that goes away does not end the call (in
    2025-11-25 it resumes by `Last-Event-ID`): the server drops what is written to a closed
    connection, and the response ends with the call.
    """

    def __init__(self, content, *, data_sender_callable, headers: dict[str, str], **options: Any):
        self.content = content
        self.sender = data_sender_callable
        self.headers = headers
        self.options = options

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        wire = scope.get(WIRE_SCOPE_KEY)
        if wire is None or scope.get("method") != "POST" or _sse_writer_args(self.sender) is None:
            response = EventSourceResponse(
                self.content, headers=self.headers, data_sender_callable=self.sender, **self.options
            )
            await response(scope, receive, send)
            return
        headers = [(k.lower().encode(), v.encode()) for k, v in self.headers.items()]
        headers.append((b"x-accel-buffering", b"no"))
        head = {"type": "http.response.start", "status": 200, "headers": headers}
        priming = _sse_writer_args(self.sender)[4]  # type: ignore[index]
        if send is not wire or priming is None or not wire.hold_head(head):  # (held: with the priming
            await send(head)  # event, in one write; without one, the first event may be long in coming)
        _keep_pinging()
        _PINGED.add(wire)
        try:
            async with self.content:
                ended = await self._write_events(wire, send)
            if not ended:
                await (wire.body if send is wire else send)(
                    {"type": "http.response.body", "body": b"", "more_body": False}
                )
        finally:
            _PINGED.discard(wire)

    async def _write_events(self, wire: Wire, send: Send) -> bool:
        """The SDK's `_run_sse_writer` (the priming event, then the request's stream up to its
        response; a stream closed under it, by `close_sse_stream` or the session's end, ends it),
        each event written as the SDK's `sse_stream_reader` would have handed it over. The response
        goes with the body's end (one socket write with uvicorn's httptools): True once it went."""
        transport, request_id, sse_writer, request_reader, priming = _sse_writer_args(self.sender)  # type: ignore[misc]
        try:
            async with sse_writer, request_reader:
                if priming is not None and not wire.ended:  # (with the response's head, if held: one write)
                    first = {"type": "http.response.body", "body": sse_event(priming), "more_body": True}
                    await (wire.body if send is wire else send)(first)
                async for event_message in request_reader:
                    last = isinstance(event_message.message, JSONRPCResponse | JSONRPCError)
                    if not wire.ended:
                        body = _event_bytes(transport, event_message)
                        await send({"type": "http.response.body", "body": body, "more_body": not last})
                        if last:
                            return True
                    if last:
                        break
        except anyio.ClosedResourceError:
            log.debug("SSE stream closed by close_sse_stream()")
        except Exception:
            log.exception("Error in SSE writer")
        finally:
            transport._sse_stream_writers.pop(request_id, None)
            await transport._clean_up_memory_streams(request_id)
        return False


def _plain(value: Any) -> bool:
    return value is None or (type(value) is str and "\n" not in value and "\r" not in value)


def sse_event(event: dict[str, Any]) -> bytes:
    """An SDK event (`id`, `event`, `data`, `retry`) as sse-starlette's `ensure_bytes(event, "\\r\\n")`
    writes it, without its StringIO and a regex split per field (the priming event and the response,
    each call); anything else, or a line break to split or strip, goes its way."""
    ident, name, data, retry = event.get("id"), event.get("event"), event.get("data"), event.get("retry")
    if not (
        _plain(ident) and _plain(name) and _plain(data) and (retry is None or type(retry) is int)
        and len(event) == (ident is not None) + (name is not None) + (data is not None) + (retry is not None)
    ):  # fmt: skip
        return ensure_bytes(event, "\r\n")
    head = f"id: {ident}\r\n" if ident is not None else ""
    if name is not None:
        head += f"event: {name}\r\n"
    if data is not None:
        head += f"data: {data}\r\n"
    return f"{head}retry: {retry}\r\n\r\n".encode() if retry is not None else f"{head}\r\n".encode()


def _event_bytes(transport: StreamableHTTPServerTransport, event_message: EventMessage) -> bytes:
    """The SDK's `_create_event_data` for a message of the request's stream, encoded; a message the
    session's store has just dumped (the response, stored by the message router on its way here) is
    not dumped again."""
    message = event_message.message
    dumped = getattr(transport._event_store, "dumped", None)  # messenger.sessions.SessionEvents
    if dumped is not None and dumped[0] is message:
        event: dict[str, Any] = {"event": "message", "data": dumped[1]}
        if event_message.event_id:
            event["id"] = event_message.event_id
        return sse_event(event)
    return sse_event(transport._create_event_data(event_message))  # type: ignore[arg-type]


def _sse_writer_args(sender: Any) -> tuple[StreamableHTTPServerTransport, Any, Any, Any, Any] | None:
    """(transport, request id, SSE stream writer, request stream reader, priming event) of the SDK's
    `partial(transport._run_sse_writer, …)`; None for any other sender."""
    func = getattr(sender, "func", None)
    transport = getattr(func, "__self__", None)
    if not isinstance(transport, StreamableHTTPServerTransport) or len(getattr(sender, "args", ())) != 4:
        return None
    if getattr(func, "__func__", None) is not StreamableHTTPServerTransport._run_sse_writer:
        return None
    return (transport, *sender.args)


_PINGED: set[Wire] = set()  # the open PostStreams' wires
_pinger: list[asyncio.Task[None]] = []  # the one task that pings them, in this event loop


def _keep_pinging() -> None:
    if not _pinger or _pinger[0].done() or _pinger[0].get_loop() is not asyncio.get_running_loop():
        _pinger[:] = [asyncio.create_task(_ping_forever(), name="sse-pings")]


_pings: set[asyncio.Task[None]] = set()  # pings being written (kept referenced until done)


async def _ping_forever() -> None:
    """Each stream's ping in a task of its own: a client that stops reading makes the server's send
    wait (uvicorn: flow.drain() while the transport is paused), and must not hold up the others'."""
    while True:
        await asyncio.sleep(PING_SECONDS)
        for wire in list(_PINGED):
            if wire.headed and not wire.ended and not wire.pinging:
                wire.pinging = True
                task = asyncio.create_task(_ping(wire))
                _pings.add(task)
                task.add_done_callback(_pings.discard)


async def _ping(wire: Wire) -> None:
    try:
        if not wire.ended:  # (it may have ended since the pinger looked)
            with contextlib.suppress(RuntimeError, OSError):
                await wire.send({"type": "http.response.body", "body": PING, "more_body": True})
    finally:
        wire.pinging = False


def answer_posts_lightly() -> None:
    """From now on the SDK answers a session's POST with a PostStream (see there)."""
    streamable_http.EventSourceResponse = PostStream  # type: ignore[misc]


def request_stream(request: Any, request_id: Any) -> RequestStream | None:
    """The direct stream of a request that came as a POST in a session this process holds, with an
    SSE response (None otherwise: stdio, 2026-07-28, JSON responses, the old SSE transport)."""
    scope = getattr(request, "scope", None)
    if not isinstance(scope, dict) or request_id is None:
        return None
    manager = scope.get(MANAGER_SCOPE_KEY)
    if manager is None:
        return None
    session_id = request.headers.get("mcp-session-id")
    transport = manager._server_instances.get(session_id) if session_id else None
    if transport is None or transport.is_json_response_enabled:
        return None
    stream = scope.get(STREAM_SCOPE_KEY)  # one per POST: the call's progress and log messages hold together
    if stream is None or stream.transport is not transport or stream.request_id != str(request_id):
        stream = scope[STREAM_SCOPE_KEY] = RequestStream(
            transport, str(request_id), scope.get(WIRE_SCOPE_KEY)
        )
    return stream
