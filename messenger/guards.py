"""What every HTTP request passes before any route sees it (`Guard`, one ASGI middleware):

1. Host and Origin (DNS rebinding, cross-site pages): on every path, `/health` included, with the
   SDK's own check (`TransportSecurityMiddleware`) and the hosts of `transport_security`.
2. One identity: exactly one credential (messenger.tenants), else 400; a missing or wrong key is 401
   (`/health` stays open). The verified tenant goes into the ASGI scope (`scope["state"]["tenant"]`,
   read with `verified_tenant`) and the request's credential headers are cut down to that one key,
   so no later check can read a different one. The tenant is also the request's `user`, the
   principal the SDK binds an MCP session to (a session answers only the key that opened it).
3. Operator paths: `/dashboard*` and `/metrics` show every tenant's jobs and figures, so when keys
   are configured they need MCP_ADMIN_KEY (403 for a tenant key).
4. Body caps: `/dashboard*` bodies over DASHBOARD_BODY_MAX_BYTES get 413, a POST that opens a
   2025-11-25 session over SESSION_OPEN_MAX_BYTES too (`/mcp` and SSE's
   `/messages/` have the SDK's cap, MCP_BODY_MAX_BYTES, passed in by serve.py).

Every refusal is one line of JSON, `{"error": "..."}`, and never says which part of a key was wrong.
"""

from __future__ import annotations

import ipaddress
import json
import re

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.transport_security import (
    RequestBodyLimitMiddleware,
    TransportSecurityMiddleware,
    TransportSecuritySettings,
)
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from messenger.tenants import Tenant, Tenants, TooManyCredentials, credentials

MCP_BODY_MAX_BYTES = 4 * 1024 * 1024  # a JSON-RPC message: 100k-character prompts fit with room
DASHBOARD_BODY_MAX_BYTES = 64 * 1024  # the submit form's {"message", "model"}
# a 2025-11-25 initialize (no session yet): its params become the session's record in Redis, read on
# every request of the session, so megabytes of "capabilities" would be megabytes per session
SESSION_OPEN_MAX_BYTES = 64 * 1024
OPEN_PATHS = frozenset({"/health"})
QUERY_TOKEN_PATHS = frozenset({"/dashboard", "/dashboard/events"})  # EventSource cannot send headers
LOCAL_HOSTS = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})
_HOST = r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:[0-9]{1,5})?"
WELL_FORMED_HOST = re.compile(_HOST)  # what a browser sends: a name or [v6], then digits or nothing
WELL_FORMED_ORIGIN = re.compile(f"https?://{_HOST}")


def is_loopback(host: str) -> bool:
    """Whether a bind address reaches this machine only (127.0.0.0/8, ::1, localhost)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def operator_path(path: str) -> bool:
    return path == "/metrics" or path == "/dashboard" or path.startswith("/dashboard/")


def transport_security(allowed_hosts: list[str], bind_host: str = "127.0.0.1") -> TransportSecuritySettings:
    """The Host/Origin check for every route: localhost, the address bound (unless a wildcard),
    and MCP_ALLOWED_HOSTS, each on any port unless one is given; `*` in MCP_ALLOWED_HOSTS turns it off."""
    if "*" in allowed_hosts:
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    named = list(allowed_hosts)
    if bind_host not in WILDCARD_BINDS and not is_loopback(bind_host):
        named.append(f"[{bind_host}]" if ":" in bind_host else bind_host)
    hosts = list(LOCAL_HOSTS)
    for host in named:
        hosts += [host] if re.search(r":(\d+|\*)$", host) else [host, f"{host}:*"]
    origins = [f"{scheme}://{host}" for host in hosts for scheme in ("http", "https")]
    origins += [
        f"{scheme}://{host.removesuffix(':*')}"
        for host in hosts
        if host.endswith(":*")
        for scheme in ("http", "https")
    ]  # fmt: skip  (an Origin on the scheme's default port)
    return TransportSecuritySettings(allowed_hosts=hosts, allowed_origins=origins)


def verified_tenant(request: Request) -> Tenant | None:
    """The tenant `Guard` verified for this HTTP request (None: the request did not come through it)."""
    return request.scope.get("state", {}).get("tenant")


class Guard:
    """The checks above, in that order, as one ASGI middleware around the whole app."""

    def __init__(self, app: ASGIApp, tenants: Tenants, security: TransportSecuritySettings):
        self.app = app
        self.tenants = tenants
        self.origin_check = TransportSecurityMiddleware(security)
        self.checks_site = security.enable_dns_rebinding_protection
        self.capped = RequestBodyLimitMiddleware(app, DASHBOARD_BODY_MAX_BYTES)
        self.opening = RequestBodyLimitMiddleware(app, SESSION_OPEN_MAX_BYTES)

    def malformed_site(self, scope: Scope) -> Response | None:
        return _malformed_site(scope["headers"]) if self.checks_site else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # no route speaks it: closed before any of the checks are skipped
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":  # lifespan
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        refused = self.malformed_site(scope) or await self.origin_check.validate_request(Request(scope))
        if refused is not None:
            reason = bytes(refused.body).decode(errors="replace")
            await refuse(send, refused.status_code, f"{reason}: this server does not answer to that site")
            return
        try:
            tenant = self.tenants.from_request(
                scope["headers"], scope.get("query_string", b""), allow_query=path in QUERY_TOKEN_PATHS
            )
        except TooManyCredentials as e:
            await refuse(send, 400, e.message)
            return
        if tenant is None and path not in OPEN_PATHS:
            await refuse(send, 401, "unauthorized", [(b"www-authenticate", b"Bearer")])
            return
        if tenant is not None and not tenant.operator and operator_path(path):
            await refuse(
                send, 403, "this page shows every tenant's jobs: it needs the operator key (MCP_ADMIN_KEY)"
            )
            return
        scope.setdefault("state", {})["tenant"] = tenant
        if tenant is not None and self.tenants.required:
            scope["user"] = session_owner(tenant)
        scope["headers"] = one_credential(scope["headers"], scope.get("query_string", b""), tenant)
        app = self.capped if path.startswith("/dashboard") else self.opening if _opening(scope) else self.app
        await app(scope, receive, send)


def session_owner(tenant: Tenant) -> AuthenticatedUser:
    """The tenant as the SDK's principal: an MCP session (streamable HTTP's Mcp-Session-Id, SSE's
    session_id) then answers only requests of the tenant that opened it; any other key gets the
    SDK's "session not found" 404, so a leaked session id reads or ends nothing of another tenant."""
    return AuthenticatedUser(AccessToken(token=f"tenant:{tenant.name}", client_id=tenant.name, scopes=[]))


def owner_name(scope: Scope) -> str | None:
    """The tenant an MCP session of this request belongs to (`session_owner`'s name); None when the
    server needs no key (then a session has no owner)."""
    user = scope.get("user")
    return user.access_token.client_id if isinstance(user, AuthenticatedUser) else None


def _opening(scope: Scope) -> bool:
    """A streamable-HTTP POST that may open a 2025-11-25 session: no session id, no 2026 version."""
    if scope["method"] != "POST" or scope["path"] != "/mcp":
        return False
    headers = dict(scope["headers"])
    version = headers.get(b"mcp-protocol-version")
    legacy = version is None or version.decode("latin-1") in HANDSHAKE_PROTOCOL_VERSIONS
    return legacy and b"mcp-session-id" not in headers


def _malformed_site(headers: list) -> Response | None:
    """A Host or Origin no browser would send: two of either (which one a proxy routed by is a guess),
    or `localhost:1@evil.example` (the SDK's `localhost:*` pattern matches any text after
    `localhost:`, so the port must be digits before it looks)."""
    hosts = [v.decode("latin-1") for k, v in headers if k.lower() == b"host"]
    origins = [v.decode("latin-1") for k, v in headers if k.lower() == b"origin"]
    if len(hosts) > 1 or (hosts and not WELL_FORMED_HOST.fullmatch(hosts[0])):
        return Response("Invalid Host header", status_code=421)
    if len(origins) > 1 or (origins and not WELL_FORMED_ORIGIN.fullmatch(origins[0])):
        return Response("Invalid Origin header", status_code=403)
    return None


def one_credential(headers: list, query_string: bytes, tenant: Tenant | None) -> list:
    """The request's headers with its credential as the only `authorization` header (or none)."""
    kept = [(k, v) for k, v in headers if k.lower() not in (b"authorization", b"x-api-key")]
    offered = credentials(headers, query_string)
    if tenant is not None and offered:
        kept.append((b"authorization", b"Bearer " + offered[0][1]))
    return kept


async def refuse(send: Send, status: int, message: str, extra: list | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": body})
