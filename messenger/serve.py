"""Serving the MCP server over stdio, streamable HTTP (/mcp) or SSE (/sse); on HTTP every request
passes messenger.guards first (Host/Origin, one identity, operator paths, body caps)."""

from __future__ import annotations

import asyncio
import logging

import anyio
import uvicorn

from messenger import dashboard
from messenger.guards import MCP_BODY_MAX_BYTES, Guard, is_loopback, transport_security
from messenger.runtime import Runtime
from messenger.server import build_server
from messenger.sessions import RETRY_MS, SessionGate, beat, replica_id
from messenger.tenants import Tenants
from shared import prices
from shared.errors import SettingsError
from shared.settings import Settings

log = logging.getLogger("messenger")

# On SIGTERM or Ctrl-C, requests still open (a long send_message_to_ai, a client's stream) get this
# long to finish before they are cut: under docker compose's 10 s, so the process ends on its own.
# The dashboard's streams end at once (sse-starlette watches for the shutdown).
SHUTDOWN_GRACE_SECONDS = 5


def http_app(runtime: Runtime, transport: str, host: str, replica: str | None = None):
    """The HTTP app; on streamable HTTP, 2025-11-25 sessions and their streams live in Redis
    (messenger.sessions), so any replica (`replica`: this one's id) serves any request."""
    mcp = build_server(runtime)
    settings = runtime.settings
    security = transport_security(settings.allowed_hosts, host)
    if transport == "sse":
        app = mcp.sse_app(host=host, transport_security=security, max_request_body_size=MCP_BODY_MAX_BYTES)
    else:
        app = mcp.streamable_http_app(
            host=host,
            transport_security=security,
            max_request_body_size=MCP_BODY_MAX_BYTES,
            retry_interval=RETRY_MS,
            session_idle_timeout=settings.mcp_session_idle_seconds,
        )
    app.router.routes.extend(dashboard.routes(runtime))
    if transport != "sse":
        idle = settings.mcp_session_idle_seconds
        gated = SessionGate(app, mcp.session_manager, runtime.redis, idle, replica or replica_id())
        return Guard(gated, Tenants.from_settings(settings), security)
    return Guard(app, Tenants.from_settings(settings), security)


def refuse_open_network(settings: Settings) -> None:
    """Serving HTTP beyond this machine with no key at all would let anyone queue paid jobs and read
    every answer: refuse, unless MCP_ALLOW_UNAUTHENTICATED=true says it is meant."""
    host = settings.mcp_host
    if settings.mcp_transport == "stdio" or is_loopback(host) or settings.mcp_allow_unauthenticated:
        return
    if not Tenants.from_settings(settings).required:
        raise SettingsError(
            f"MCP_HOST={host} serves HTTP beyond this machine without a key: set MCP_API_KEYS (or "
            "MCP_API_KEY) and MCP_ADMIN_KEY, or MCP_ALLOW_UNAUTHENTICATED=true if something in front "
            "of it already authenticates"
        )


async def serve(runtime: Runtime, transport: str, host: str, port: int) -> None:
    prices.warm(runtime.settings.default_model)
    if transport == "stdio":
        await build_server(runtime).run_stdio_async()
        return
    refuse_open_network(runtime.settings.model_copy(update={"mcp_transport": transport, "mcp_host": host}))
    replica = replica_id()
    app = http_app(runtime, transport, host, replica)
    path = "/sse" if transport == "sse" else "/mcp"
    log.info("serving MCP over %s at http://%s:%d%s", transport, host, port, path)
    if not is_loopback(host) and not runtime.settings.allowed_hosts:
        log.warning(
            "listening on %s but answering only to Host localhost (and %s itself): set "
            "MCP_ALLOWED_HOSTS to the names clients use", host, host,
        )  # fmt: skip
    _name_the_loop()
    async with anyio.create_task_group() as tg:
        tg.start_soon(beat, runtime.redis, replica)  # resumed streams learn when this replica is gone
        await uvicorn.Server(server_config(app, host, port)).serve()
        tg.cancel_scope.cancel()


def _name_the_loop() -> None:
    """Tell anyio (through sniffio's context variable, inherited by every task started from here)
    that this is asyncio, as trio-asyncio does: anyio asks which loop runs for each memory-stream
    send and receive, event and cancel scope (about 20 times a tool call), and without the answer set
    sniffio finds it by `asyncio.current_task()` each time (1.5 -> 0.4 us a question)."""
    try:
        import sniffio
    except ImportError:  # (anyio then asks asyncio for the running loop itself: as quick)
        return
    sniffio.current_async_library_cvar.set("asyncio")


def server_config(app, host: str, port: int) -> uvicorn.Config:
    # log_config=None: uvicorn's records go through our handler (format, redaction), not its own
    # httptools, a dependency: the C parser, and a response's last event and its end in one socket
    # write (h11 parses and frames in Python, and writes the end apart: ~9 % of the messenger's CPU
    # at 1,000 callers, bench/callers.py), with h11's cap on a request's head (messenger.http_head)
    return uvicorn.Config(
        app, host=host, port=port, log_level="warning", lifespan="on", log_config=None,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS, http=_http_protocol(),
    )  # fmt: skip


def _http_protocol() -> type[asyncio.Protocol] | str:
    """httptools with the head cap; in an environment not yet synced, uvicorn's "auto": h11, which
    caps a head itself."""
    try:
        from messenger.http_head import CappedHead
    except ImportError:
        return "auto"
    return CappedHead
