"""A request POSTed in a 2025-11-25 session this process holds, handed to the session's dispatcher
from SessionGate, below the SDK's HTTP layers; pinned, with messenger.session_sdk, by
tests/messenger/test_session_post.py (the same requests through both ways, compared as a client sees them).

Why: between uvicorn and the session's dispatcher the SDK's way takes Starlette's router and error
middleware, the body-limit middleware (which reads the body and replays it), the session manager's
lookup, the transport's POST handler with a task group and a task for its response, and the
dispatcher's read stream (one more task wake-up); at 1,000 callers that was about a tenth of the
messenger's CPU per call. Here the same steps run in the POST's own task, with the SDK's own pieces
for everything a client sees: its checks (security, Accept, Content-Type, the message's validation),
its priming event, its session message (the metadata that ends an unanswered or cancelled request),
the dispatcher's own `_dispatch_request` (middleware, cancellation, errors and shutdown as before)
and the response written by PostStream. Anything this does not take exactly as the SDK would (no
such session here, another tenant's, a terminated or idle-ended one, a JSON-response session, a
body too large, not JSON, not one valid request, an initialize, a notification or response, a
request id already in flight) goes the SDK's way untouched, with the body it read replayed.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import math
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any

import anyio
import pydantic_core
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, authorization_context
from mcp.server.streamable_http import (
    CONTENT_TYPE_SSE,
    MCP_SESSION_ID_HEADER,
    REQUEST_STREAM_BUFFER_SIZE,
    EventMessage,
    StreamableHTTPServerTransport,
    check_accept_headers,
)
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher
from mcp_types import DEFAULT_NEGOTIATED_VERSION, INTERNAL_ERROR, JSONRPCRequest, jsonrpc_message_adapter
from starlette.requests import Request
from starlette.types import Message, Receive, Scope

from messenger.session_sdk import PostStream, Wire

log = logging.getLogger("messenger")

_RUNNING: dict[
    int, tuple[Any, JSONRPCDispatcher, Any]
] = {}  # id(read stream) -> (it, dispatcher, on_request)


def watch_dispatchers() -> None:
    """From now on each session's dispatcher is found by its transport's read stream, while it runs."""
    run = JSONRPCDispatcher.run
    if getattr(run, "_mcp_queue_watched", False):
        return

    @functools.wraps(run)
    async def watched(self, on_request, on_notify, *args, **kwargs):
        stream = self._read_stream
        _RUNNING[id(stream)] = (stream, self, on_request)
        try:
            return await run(self, on_request, on_notify, *args, **kwargs)
        finally:
            if _RUNNING.get(id(stream), (None,))[0] is stream:
                del _RUNNING[id(stream)]

    watched._mcp_queue_watched = True  # type: ignore[attr-defined]
    JSONRPCDispatcher.run = watched  # type: ignore[method-assign]


def _dispatcher(transport: StreamableHTTPServerTransport) -> tuple[JSONRPCDispatcher, Any] | None:
    found = _RUNNING.get(id(transport._read_stream))
    if found is None or found[0] is not transport._read_stream:
        return None
    _, dispatcher, on_request = found
    if not dispatcher._running or dispatcher._tg is None or dispatcher._closed:
        return None
    return dispatcher, on_request


def replay(read: list[Message], receive: Receive) -> Receive:
    """`receive` with the messages already read from it given again first."""
    pending = list(read)

    async def again() -> Message:
        return pending.pop(0) if pending else await receive()

    return again


async def _body(scope: Scope, receive: Receive, cap: int) -> tuple[bytes | None, list[Message]]:
    """The request's body (None if it is over `cap` or the client left) and the messages read."""
    declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
    if declared is not None and (not declared.isdigit() or int(declared) > cap):
        return None, []  # (the SDK's body-limit middleware answers a declared size over its cap)
    read: list[Message] = []
    size = 0
    while True:
        message = await receive()
        read.append(message)
        if message["type"] != "http.request":
            return None, read
        size += len(message.get("body", b""))
        if size > cap:
            return None, read
        if not message.get("more_body", False):
            return b"".join(m.get("body", b"") for m in read), read


async def post(manager: StreamableHTTPSessionManager, scope: Scope, receive: Receive, wire: Wire,
               session_id: str, cap: int) -> Receive | None:  # fmt: skip
    """Answer a session's POST as the SDK would: None once answered, else the `receive` to hand the
    SDK (the body read so far replayed)."""
    transport = manager._server_instances.get(session_id)
    if transport is None or transport.is_json_response_enabled or transport.is_terminated:
        return receive
    user = scope.get("user")
    requestor = authorization_context(user) if isinstance(user, AuthenticatedUser) else None
    idle = transport.idle_scope
    if requestor != manager._session_owners.get(session_id) or (idle is not None and idle.cancel_called):
        return receive
    found = _dispatcher(transport)
    if found is None:
        return receive
    request = Request(scope, receive)
    has_json, has_sse = check_accept_headers(request)
    if not (has_json and has_sse and transport._check_content_type(request)):
        return receive
    if await transport._security.validate_request(request, is_post=True) is not None:
        return receive
    body, read = await _body(scope, receive, cap)
    if body is None:
        return replay(read, receive)
    try:
        message = jsonrpc_message_adapter.validate_python(pydantic_core.from_json(body), by_name=False)
    except ValueError:  # (pydantic's ValidationError too): the SDK says what is wrong
        return replay(read, receive)
    if not isinstance(message, JSONRPCRequest) or message.method == "initialize":
        return replay(read, receive)
    request_id = str(message.id)
    if request_id in transport._request_streams or request_id in transport._sse_stream_writers:
        return replay(read, receive)  # the same id in flight: what the SDK does then is its own
    async with _held(transport):
        version = request.headers.get(MCP_PROTOCOL_VERSION_HEADER, DEFAULT_NEGOTIATED_VERSION)
        try:
            priming = await transport._mint_priming_event(request_id, version)
        except Exception:
            log.exception("Error handling POST request")
            response = transport._create_error_response(
                "Error handling POST request", HTTPStatus.INTERNAL_SERVER_ERROR, INTERNAL_ERROR
            )
            await response(scope, receive, wire)
            return None
        found = _dispatcher(transport)  # (the session may have ended while the priming event was stored)
        if found is None or transport.is_terminated or request_id in transport._request_streams:
            return replay(read, receive)  # (a stored priming event no one saw is skipped by every replay)
        await _answer(transport, found, request, message, (request_id, version, priming), scope, wire)
    if transport.is_terminated:
        await manager._discard_session(session_id, transport)
    return None


@contextlib.asynccontextmanager
async def _held(transport: StreamableHTTPServerTransport) -> AsyncIterator[None]:
    """A request in flight holds the session's idle countdown, as the transport's `handle_request`."""
    if transport.idle_scope is None or transport._idle_timeout is None:
        yield
        return
    transport._requests_in_flight += 1
    transport.idle_scope.deadline = math.inf
    try:
        yield
    finally:
        transport._requests_in_flight -= 1
        if not transport._requests_in_flight:
            transport.idle_scope.deadline = anyio.current_time() + transport._idle_timeout


async def _answer(transport: StreamableHTTPServerTransport, found: tuple[JSONRPCDispatcher, Any],
                  request: Request, message: JSONRPCRequest, minted: tuple[str, str, Any], scope: Scope,
                  wire: Wire) -> None:  # fmt: skip
    """The SDK's SSE branch of `_handle_post_request` after its priming event (`minted`: the request's
    stream id, protocol version and priming event), its response in this task."""
    dispatcher, on_request = found
    request_id, version, priming = minted
    sse_writer, sse_reader = anyio.create_memory_object_stream[Any](0)
    transport._sse_stream_writers[request_id] = sse_writer
    streams = transport._request_streams[request_id] = anyio.create_memory_object_stream[EventMessage](
        REQUEST_STREAM_BUFFER_SIZE
    )
    headers = {
        "Cache-Control": "no-cache, no-transform",
        "Connection": "keep-alive",
        "Content-Type": CONTENT_TYPE_SSE,
        **({MCP_SESSION_ID_HEADER: transport.mcp_session_id} if transport.mcp_session_id else {}),
    }
    sender = functools.partial(transport._run_sse_writer, request_id, sse_writer, streams[1], priming)
    response = PostStream(sse_reader, data_sender_callable=sender, headers=headers)
    try:
        session_message = transport._create_session_message(message, request, request_id, version)
        await dispatcher._dispatch_request(
            message, session_message.metadata, on_request, contextvars.copy_context()
        )
        await response(scope, request.receive, wire)
    except Exception:
        log.exception("SSE response error")
        await sse_writer.aclose()
        await transport._clean_up_memory_streams(request_id)
    finally:
        await sse_reader.aclose()
