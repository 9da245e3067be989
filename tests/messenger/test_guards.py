"""messenger/guards.py: what an app behind the Guard sees is the identity the Guard verified, once,
whatever headers the caller sent; what it refuses never reaches the app."""

from __future__ import annotations

import json

import pytest

from messenger.guards import Guard, is_loopback, transport_security
from messenger.tenants import Tenant, Tenants

ALICE, OPERATOR = "tok-alice-1234", "ops-key-9012"


class Recorder:
    """An ASGI app that keeps the scope it was called with and answers 204."""

    def __init__(self):
        self.scopes: list[dict] = []

    async def __call__(self, scope, receive, send):
        self.scopes.append(scope)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def call(guard: Guard, path: str, headers: list[tuple[bytes, bytes]], query: bytes = b""):
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    host = [] if any(k == b"host" for k, _ in headers) else [(b"host", b"127.0.0.1:8000")]
    scope = {"type": "http", "method": "GET", "path": path, "query_string": query, "state": {},
             "headers": [*host, *headers]}  # fmt: skip
    await guard(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], body


@pytest.fixture
def guarded():
    app = Recorder()
    tenants = Tenants({"alice": ALICE}, admin=OPERATOR)
    return app, Guard(app, tenants, transport_security([]))


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ([(b"x-api-key", ALICE.encode())], b""),
        ([(b"authorization", b"Bearer " + ALICE.encode())], b""),
        ([(b"Authorization", b"bearer " + ALICE.encode())], b""),
    ],
)
async def test_the_app_sees_the_verified_tenant_and_only_its_key(guarded, headers, query):
    app, guard = guarded
    assert (await call(guard, "/mcp", headers, query))[0] == 204
    (scope,) = app.scopes
    assert scope["state"]["tenant"] == Tenant("alice")
    credentials = [(k, v) for k, v in scope["headers"] if k.lower() in (b"authorization", b"x-api-key")]
    assert credentials == [(b"authorization", b"Bearer " + ALICE.encode())]


async def test_a_query_token_on_the_dashboard_becomes_its_one_header(guarded):
    app, guard = guarded
    assert (await call(guard, "/dashboard/events", [], b"token=" + OPERATOR.encode()))[0] == 204
    (scope,) = app.scopes
    assert scope["state"]["tenant"].operator
    assert [v for k, v in scope["headers"] if k == b"authorization"] == [b"Bearer " + OPERATOR.encode()]


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/mcp", [(b"authorization", b"Bearer " + ALICE.encode()), (b"x-api-key", ALICE.encode())], 400),
        ("/mcp", [(b"authorization", b"Bearer wrong")], 401),
        ("/mcp", [(b"authorization", b"Basic " + ALICE.encode())], 401),
        ("/metrics", [(b"x-api-key", ALICE.encode())], 403),
        ("/dashboard/submit", [(b"x-api-key", ALICE.encode())], 403),
        ("/mcp", [(b"host", b"evil.example")], 421),
        ("/health", [(b"origin", b"https://evil.example")], 403),
    ],
)
async def test_refusals_never_reach_the_app_and_are_one_json_line(guarded, path, headers, status):
    app, guard = guarded
    got, body = await call(guard, path, headers)
    assert got == status and app.scopes == []
    assert b"\n" not in body and json.loads(body)["error"] and ALICE.encode() not in body


async def test_health_is_open_and_sees_no_key(guarded):
    app, guard = guarded
    assert (await call(guard, "/health", [(b"authorization", b"Bearer wrong")]))[0] == 204
    (scope,) = app.scopes
    assert scope["state"]["tenant"] is None
    assert not [k for k, _ in scope["headers"] if k in (b"authorization", b"x-api-key")]


def test_the_host_check_is_on_unless_star_and_admits_named_and_bound_hosts():
    assert transport_security(["*"]).enable_dns_rebinding_protection is False
    named = transport_security(["mcp.example.com", "ops.example.com:8443"], bind_host="10.0.0.5")
    assert named.enable_dns_rebinding_protection
    assert {
        "mcp.example.com",
        "mcp.example.com:*",
        "ops.example.com:8443",
        "10.0.0.5:*",
        "localhost:*",
    } <= set(named.allowed_hosts)
    assert {"https://mcp.example.com", "http://localhost:*"} <= set(named.allowed_origins)
    assert "0.0.0.0:*" not in transport_security([], bind_host="0.0.0.0").allowed_hosts


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("mcp.example.com", False)],
)  # fmt: skip
def test_only_loopback_addresses_count_as_this_machine(host, loopback):
    assert is_loopback(host) is loopback


async def test_a_websocket_never_reaches_the_app(guarded):
    """No route speaks WebSocket, and with `websockets` installed uvicorn would hand one over
    without any of the checks above: it is closed before the app sees it."""
    app, guard = guarded
    sent: list[dict] = []

    async def receive():
        return {"type": "websocket.connect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "websocket",
        "path": "/mcp",
        "query_string": b"",
        "headers": [(b"host", b"evil.example")],
    }
    await guard(scope, receive, send)
    assert app.scopes == [] and [m["type"] for m in sent] == ["websocket.close"]
