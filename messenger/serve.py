"""Serving the MCP server over stdio, streamable HTTP (/mcp) or SSE (/sse), with bearer auth on HTTP."""

from __future__ import annotations

import hmac
import logging
import re
from urllib.parse import parse_qs

import uvicorn
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Receive, Scope, Send

from messenger import dashboard
from messenger.runtime import Runtime
from messenger.server import build_server

log = logging.getLogger("messenger")
OPEN_PATHS = frozenset({"/health"})


class BearerAuth:
    """Requires `Authorization: Bearer <token>` (or `X-Api-Key: <token>`) on everything but /health.

    A wrong or missing token gets a bare 401: nothing about which part was wrong.
    """

    def __init__(self, app: ASGIApp, tokens: list[str]):
        self.app = app
        self.tokens = [t.encode() for t in tokens]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"error":"unauthorized"}'})

    def _allowed(self, scope: Scope) -> bool:
        headers = dict(scope["headers"])
        offered = headers.get(b"x-api-key", b"")
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer ":
            offered = auth[7:].strip()
        if not offered and scope["path"].startswith("/dashboard"):  # EventSource cannot send headers
            offered = parse_qs(scope.get("query_string", b"").decode()).get("token", [""])[0].encode()
        return bool(offered) and any(hmac.compare_digest(offered, t) for t in self.tokens)


def api_tokens(runtime: Runtime) -> list[str]:
    key = runtime.settings.mcp_api_key
    return [t.strip() for t in key.get_secret_value().split(",") if t.strip()] if key else []


LOCAL_HOSTS = ["127.0.0.1:*", "localhost:*", "[::1]:*"]


def transport_security(allowed_hosts: list[str]) -> TransportSecuritySettings | None:
    """The Host/Origin check (DNS-rebinding protection) for MCP_ALLOWED_HOSTS.

    Unset: the SDK's default (on for a localhost bind, off otherwise). Set: localhost plus the
    named hosts, on any port unless one is given; `*` turns the check off.
    """
    if not allowed_hosts:
        return None
    if "*" in allowed_hosts:
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    hosts = list(LOCAL_HOSTS)
    for host in allowed_hosts:
        hosts += [host] if re.search(r":(\d+|\*)$", host) else [host, f"{host}:*"]
    origins = [f"{scheme}://{host}" for host in hosts for scheme in ("http", "https")]
    return TransportSecuritySettings(allowed_hosts=hosts, allowed_origins=origins)


def http_app(runtime: Runtime, transport: str, host: str):
    mcp = build_server(runtime)
    security = transport_security(runtime.settings.allowed_hosts)
    if transport == "sse":
        app = mcp.sse_app(host=host, transport_security=security)
    else:
        app = mcp.streamable_http_app(host=host, transport_security=security)
    app.router.routes.extend(dashboard.routes(runtime))
    tokens = api_tokens(runtime)
    return BearerAuth(app, tokens) if tokens else app


async def serve(runtime: Runtime, transport: str, host: str, port: int) -> None:
    if transport == "stdio":
        await build_server(runtime).run_stdio_async()
        return
    app = http_app(runtime, transport, host)
    path = "/sse" if transport == "sse" else "/mcp"
    log.info("serving MCP over %s at http://%s:%d%s", transport, host, port, path)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    await uvicorn.Server(config).serve()
