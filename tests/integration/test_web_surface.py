"""The browser surface of a real `messenger serve --transport http` (and `sse`) process: every route
refuses cross-site and DNS-rebinding requests, a request carries one identity, the dashboard and
/metrics are the operator's, bodies are capped, and serving beyond loopback needs a key."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp_helpers import ROOT, free_port, messenger_env, running_messengers

ALICE, BOB, OPERATOR = "tok-alice-1234", "tok-bob-5678", "ops-key-9012"
KEYS = json.dumps({"alice": ALICE, "bob": BOB})
AS_OPERATOR = {"Authorization": f"Bearer {OPERATOR}"}
AS_ALICE = {"Authorization": f"Bearer {ALICE}"}
JSON = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
INITIALIZE = {
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
}  # fmt: skip
HTTP_ROUTES = [("GET", "/mcp"), ("POST", "/mcp"), ("GET", "/dashboard"), ("GET", "/dashboard/events"),
               ("POST", "/dashboard/submit"), ("GET", "/health"), ("GET", "/metrics"), ("GET", "/no-such-page")]  # fmt: skip
SSE_ROUTES = [("GET", "/sse"), ("POST", "/messages/?session_id=0123456789abcdef0123456789abcdef")]
BODIES = {"/mcp": INITIALIZE, "/dashboard/submit": {"message": "hello"}}


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """One messenger over streamable HTTP and one over SSE, with two tenants and the operator key."""
    env = messenger_env("memory://", MCP_API_KEYS=KEYS, MCP_ADMIN_KEY=OPERATOR, MOCK_TOKEN_DELAY_MS="0")
    with running_messengers(tmp_path_factory.mktemp("web")) as messengers:
        yield {"http": messengers.http(env), "sse": messengers.http(env, transport="sse")}


def send(server, method: str, path: str, headers: dict | list | None = None, **kwargs) -> httpx2.Response:
    """One request; a streamed answer (SSE) is closed after its status line."""
    body = BODIES.get(path.split("?")[0]) if method == "POST" else None
    with httpx2.Client(timeout=10) as http:
        with http.stream(method, server.base_url + path, headers=headers, json=body, **kwargs) as response:
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                response.read()
            return response


def refusal(response: httpx2.Response) -> str:
    """A refusal's one-line JSON error."""
    assert response.headers["content-type"] == "application/json" and b"\n" not in response.content
    return json.loads(response.content)["error"]


@pytest.mark.parametrize("transport", ["http", "sse"])
def test_cross_site_and_dns_rebinding_requests_to_every_route_are_refused(servers, transport):
    server = servers[transport]
    routes = HTTP_ROUTES if transport == "http" else [*SSE_ROUTES, *HTTP_ROUTES[2:]]
    got = {}
    for method, path in routes:
        headers = AS_OPERATOR | JSON  # the right key: the site is the only thing wrong
        rebinding = send(server, method, path, headers | {"Host": "evil.example"})
        cross_site = send(server, method, path, headers | {"Origin": "https://evil.example"})
        got[method, path] = (rebinding.status_code, cross_site.status_code)
        assert "evil.example" not in refusal(rebinding) + refusal(cross_site)
    assert got == {route: (421, 403) for route in routes}


@pytest.mark.parametrize(
    ("header", "value", "status"),
    [("Host", "localhost:1@evil.example", 421), ("Host", "localhost:80.evil.example", 421),
     ("Host", "127.0.0.1:x", 421), ("Origin", "http://localhost:1.evil.example", 403),
     ("Origin", "http://127.0.0.1:1@evil.example", 403), ("Origin", "http://[::1]:1/evil", 403)],
)  # fmt: skip
def test_a_host_or_origin_that_only_starts_like_localhost_is_refused(servers, header, value, status):
    """The SDK's `localhost:*` matches any text after `localhost:`; a port is digits or nothing."""
    response = send(servers["http"], "POST", "/mcp", AS_OPERATOR | JSON | {header: value})
    assert response.status_code == status and "evil" not in refusal(response)


@pytest.mark.parametrize(("header", "status"), [("Host", 421), ("Origin", 403)])
def test_two_hosts_or_two_origins_are_refused(servers, header, status):
    """Sent over a raw socket: HTTP clients refuse to send two Host headers (and browsers two of
    either); the Guard refuses them whatever parser uvicorn runs with."""
    server = servers["http"]
    own = f"localhost:{server.port}" if header == "Host" else server.base_url
    evil = "evil.example" if header == "Host" else "https://evil.example"
    for pair in ([own, evil], [evil, own]):
        lines = [f"{header}: {v}" for v in pair] + (
            [] if header == "Host" else [f"Host: localhost:{server.port}"]
        )
        request = "\r\n".join(["GET /metrics HTTP/1.1", *lines, f"Authorization: Bearer {OPERATOR}",
                                "Connection: close", "", ""])  # fmt: skip
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(request.encode())
            answer = b"".join(iter(lambda: sock.recv(65536), b""))
        head, _, body = answer.partition(b"\r\n\r\n")
        refused = {status, 400} if header == "Host" else {status}  # uvicorn's h11 parser: 400 itself
        assert int(head.split()[1]) in refused and b"evil" not in body


@pytest.mark.parametrize("path", ["/health", "/dashboard", "/metrics"])
def test_the_same_requests_from_the_servers_own_site_are_served(servers, path):
    server = servers["http"]
    own = {"Origin": server.base_url, "Host": f"localhost:{server.port}"}
    assert send(server, "GET", path, AS_OPERATOR | own).status_code == 200


@pytest.mark.parametrize(
    ("path", "headers", "query"),
    [
        ("/mcp", [("Authorization", f"Bearer {ALICE}"), ("Authorization", f"Bearer {BOB}")], ""),
        ("/mcp", [("Authorization", f"Bearer {ALICE}"), ("Authorization", f"Bearer {ALICE}")], ""),
        ("/mcp", [("Authorization", f"Bearer {ALICE}"), ("X-Api-Key", BOB)], ""),
        ("/mcp", [("X-Api-Key", ALICE)], f"?token={BOB}"),
        ("/dashboard", [("Authorization", f"Bearer {OPERATOR}")], f"?token={OPERATOR}"),
        ("/dashboard/events", [], f"?token={OPERATOR}&token={ALICE}"),
        ("/health", [("X-Api-Key", ALICE), ("X-Api-Key", BOB)], ""),
    ],
    ids=[
        "two-bearers",
        "same-key-twice",
        "bearer-and-x-api-key",
        "header-and-query",
        "dashboard-header-and-query",
        "two-query-tokens",
        "health",
    ],
)
def test_more_than_one_credential_is_refused_with_400(servers, path, headers, query):
    server = servers["http"]
    method = "POST" if path == "/mcp" else "GET"
    response = send(server, method, path + query, [*headers, *JSON.items()])
    assert response.status_code == 400
    message = refusal(response)
    assert "credentials" in message and ALICE not in message and BOB not in message


@pytest.mark.parametrize("key", [ALICE, OPERATOR], ids=["tenant", "operator"])
def test_a_tenant_key_and_the_operator_key_are_both_accepted_on_mcp(servers, key):
    for header in ({"Authorization": f"Bearer {key}"}, {"X-Api-Key": key}):
        assert send(servers["http"], "POST", "/mcp", header | JSON).status_code == 200


@pytest.mark.parametrize("header", ["Authorization", "X-Api-Key"])
async def test_an_sse_client_with_a_key_is_served_through_the_guard(servers, header):
    value = f"Bearer {ALICE}" if header == "Authorization" else ALICE
    with anyio.fail_after(60):
        async with Client(sse_client(servers["sse"].url, headers={header: value})) as client:
            result = await client.call_tool("list_models", {})
    assert not result.is_error and result.structured_content["provider"] == "mock"


def test_an_mcp_session_answers_only_the_key_that_opened_it(servers):
    """Another tenant holding alice's Mcp-Session-Id (a proxy log, a shared debug dump) can neither
    call on it, read its notification stream nor end it: as if the session did not exist."""
    server = servers["http"]
    as_bob = {"Authorization": f"Bearer {BOB}"}
    with httpx2.Client(timeout=10) as http:
        opened = http.post(server.url, json=INITIALIZE, headers=AS_ALICE | JSON)
        session = {"Mcp-Session-Id": opened.headers["mcp-session-id"], "Mcp-Protocol-Version": "2025-11-25"}
        listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        posted = http.post(server.url, json=listing, headers=as_bob | JSON | session)
        with http.stream(
            "GET", server.url, headers=as_bob | session | {"Accept": "text/event-stream"}
        ) as got:
            stream = got  # the status is enough: a 200 would be alice's notification stream
        ended = http.delete(server.url, headers=as_bob | session)
        operator = http.post(server.url, json=listing, headers=AS_OPERATOR | JSON | session)
        alices = http.post(server.url, json=listing, headers=AS_ALICE | JSON | session)
    assert (posted.status_code, stream.status_code, ended.status_code, operator.status_code) == (404,) * 4
    assert alices.status_code == 200 and "send_message_to_ai" in alices.text  # still hers, still open


async def test_an_sse_session_takes_messages_only_from_the_key_that_opened_it(servers):
    server = servers["sse"]
    with anyio.fail_after(30):
        async with (
            httpx2.AsyncClient(base_url=server.base_url, timeout=10) as http,
            http.stream("GET", "/sse", headers=AS_ALICE) as stream,
        ):
            lines = stream.aiter_lines()
            endpoint = ""
            while not endpoint.startswith("data: "):
                endpoint = await anext(lines)
            path = endpoint.removeprefix("data: ")
            bobs = await http.post(path, json=INITIALIZE, headers={"Authorization": f"Bearer {BOB}"})
            alices = await http.post(path, json=INITIALIZE, headers=AS_ALICE)
    assert bobs.status_code == 404 and alices.status_code == 202


def test_the_dashboard_and_metrics_are_the_operators(servers):
    server = servers["http"]
    submitted = {key: send(server, "POST", "/dashboard/submit", auth | JSON)
                 for key, auth in (("none", {}), ("alice", AS_ALICE), ("operator", AS_OPERATOR))}  # fmt: skip
    pages = {(path, key): send(server, "GET", path, auth).status_code
             for path in ("/dashboard", "/dashboard/events", "/metrics")
             for key, auth in (("none", {}), ("alice", AS_ALICE), ("operator", AS_OPERATOR))}  # fmt: skip
    assert {k: r.status_code for k, r in submitted.items()} == {"none": 401, "alice": 403, "operator": 200}
    assert "MCP_ADMIN_KEY" in refusal(submitted["alice"]) and submitted["operator"].json()["job_id"]
    assert pages == {(path, key): {"none": 401, "alice": 403, "operator": 200}[key]
                     for path in ("/dashboard", "/dashboard/events", "/metrics")
                     for key in ("none", "alice", "operator")}  # fmt: skip


def test_a_dashboard_submit_a_web_page_could_forge_is_refused(servers):
    server = servers["http"]
    url = server.base_url + "/dashboard/submit"
    with httpx2.Client(timeout=10, headers=AS_OPERATOR) as http:
        form = http.post(
            url, content=b"message=hi", headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        text = http.post(url, content=b'{"message": "hi"}', headers={"Content-Type": "text/plain"})
        fetched = http.post(url, json={"message": "hi"}, headers={"Sec-Fetch-Site": "cross-site"})
        same_origin = http.post(url, json={"message": "hi"}, headers={"Sec-Fetch-Site": "same-origin"})
    assert (form.status_code, text.status_code, fetched.status_code) == (415, 415, 403)
    assert same_origin.status_code == 200 and same_origin.json()["job_id"]


def test_the_dashboard_page_cannot_be_framed_or_leak_its_key_in_a_referer(servers):
    response = send(servers["http"], "GET", "/dashboard", AS_OPERATOR)
    assert response.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_oversized_bodies_are_refused_with_413_and_the_server_keeps_serving(servers, chunked):
    server = servers["http"]

    def body(size: int):
        data = b'{"message": "' + b"x" * size + b'"}'
        return (data[i : i + 65536] for i in range(0, len(data), 65536)) if chunked else data

    with httpx2.Client(timeout=30, headers=AS_OPERATOR | JSON) as http:
        dashboard = http.post(server.base_url + "/dashboard/submit", content=body(100 * 1024))
        mcp = http.post(server.url, content=body(10 * 1024 * 1024))
        under = http.post(server.base_url + "/dashboard/submit", content=body(60 * 1024))
        health = http.get(server.base_url + "/health")
    assert (dashboard.status_code, mcp.status_code) == (413, 413)
    assert under.status_code == 200 and under.json()["job_id"]  # under the cap: queued
    assert health.status_code == 200


@pytest.mark.parametrize(
    "body",
    [b"[" * 20_000 + b"]" * 20_000, b'{"message": ' * 5_000 + b"1" + b"}" * 5_000, b'{"message": "\xff"}',
     b'{"message":', b"[1]", b'{"message": 5}', b"null"],
    ids=["nested-arrays", "nested-objects", "not-utf8", "cut-short", "a-list", "a-number", "null"],
)  # fmt: skip
def test_a_malformed_dashboard_submit_gets_one_line_and_the_server_keeps_serving(servers, body):
    server = servers["http"]
    with httpx2.Client(timeout=10, headers=AS_OPERATOR | JSON) as http:
        response = http.post(server.base_url + "/dashboard/submit", content=body)
        health = http.get(server.base_url + "/health")
    assert response.status_code == 400 and "\n" not in response.json()["error"]
    assert health.status_code == 200
    assert "Traceback" not in server.log()


def test_metrics_hold_no_prompt_key_or_tenant_name(servers):
    server = servers["http"]
    prompt = "planted-prompt-for-metrics-7f3a"
    with httpx2.Client(timeout=10) as http:
        queued = http.post(
            server.base_url + "/dashboard/submit", json={"message": prompt}, headers=AS_OPERATOR
        )
        assert queued.status_code == 200
        metrics = http.get(server.base_url + "/metrics", headers=AS_OPERATOR).text
    assert "mcpq_queue_depth" in metrics
    for planted in (prompt, ALICE, BOB, OPERATOR, "alice", "bob"):
        assert planted not in metrics


def _serve(host: str, **env: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "messenger.cli", "serve", "--transport", "http", "--host", host, "--port", str(port)],
        env=messenger_env("memory://", **env), cwd=ROOT, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return proc, port


def test_serving_beyond_loopback_without_a_key_refuses_to_start():
    proc, _ = _serve("0.0.0.0")
    _, err = proc.communicate(timeout=60)
    lines = err.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, err
    assert "MCP_HOST=0.0.0.0" in lines[0] and "MCP_ALLOW_UNAUTHENTICATED=true" in lines[0]


@pytest.mark.parametrize("env", [{"MCP_ALLOW_UNAUTHENTICATED": "true"}, {"MCP_ADMIN_KEY": OPERATOR}],
                         ids=["explicitly-open", "with-a-key"])  # fmt: skip
def test_serving_beyond_loopback_starts_when_meant_or_keyed(env):
    proc, port = _serve("0.0.0.0", **env)
    deadline = time.monotonic() + 30
    try:
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            with contextlib.suppress(httpx2.TransportError):
                if httpx2.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "no answer on /health"
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
