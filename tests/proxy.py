"""A per-request round-robin HTTP proxy for tests: what a load balancer with no affinity does.

Each request goes to the next backend in turn (no sticky sessions, no cookie, no hashing), so an MCP
client's initialize, its `notifications/initialized`, its GET stream and each call land on different
replicas. Responses stream chunk by chunk (SSE included, byte for byte); request bodies are read
whole first (MCP messages are small, and the log names their JSON-RPC method). When the client
drops, the backend's response is closed too, so the backend sees the disconnect. A backend that refuses the
connection is skipped for the next one (like nginx's `proxy_next_upstream error`).

Three ways to run it, each with `backends` as base URLs or MCP URLs ("http://127.0.0.1:8001/mcp"):

    async with round_robin_proxy([url1, url2, url3]) as proxy:   # in the test's event loop
        async with mcp.Client(proxy.url, mode="legacy") as client: ...
    with proxy_in_thread([url1, url2, url3]) as proxy:           # sync tests, or a Node subprocess
        subprocess.run(["node", "client.mjs", proxy.url])
    python tests/proxy.py --listen 127.0.0.1:9000 http://127.0.0.1:8001 http://127.0.0.1:8002

`proxy.url` is the proxy's address plus the first backend's path (so MCP URLs in, an MCP URL out);
`proxy.base_url` has no path. `proxy.served` lists every request in the order it was answered
(`Served`: backend index, method, path, JSON-RPC methods of the body, status, the session id and
Last-Event-ID it carried); `proxy.backends_of("tools/call")` says which backends served a method.
Each request is also logged on the "proxy" logger (the CLI prints them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import anyio
import httpx2
import uvicorn

log = logging.getLogger("proxy")

HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer",
     b"transfer-encoding", b"upgrade"}
)  # fmt: skip
SNIFF_BYTES = 64 * 1024  # enough of a request body to read its JSON-RPC method for the log


@dataclass
class Served:
    """One request the proxy passed on (`backend` is an index into the backend list; -1: none answered)."""

    backend: int
    method: str
    path: str
    rpc: list[str] = field(default_factory=list)  # JSON-RPC methods in the body ("response" for a reply)
    status: int = 0
    session_id: str | None = None
    last_event_id: str | None = None

    def __str__(self) -> str:
        extra = f" session={self.session_id}" if self.session_id else ""
        extra += f" last-event-id={self.last_event_id}" if self.last_event_id else ""
        return (
            f"backend {self.backend}: {self.method} {self.path} {','.join(self.rpc)} -> {self.status}{extra}"
        )


class RoundRobinProxy:
    """The ASGI app: per request, the next backend; streams both ways; records each request in `served`."""

    def __init__(self, backends: list[str]):
        if not backends:
            raise ValueError("a proxy needs at least one backend")
        self.backends = [_origin(b) for b in backends]
        self.served: list[Served] = []
        self._next = 0
        self._client = httpx2.AsyncClient(timeout=httpx2.Timeout(5.0, read=None), follow_redirects=False)

    def backends_of(self, rpc_method: str) -> list[int]:
        """The backends that served requests carrying `rpc_method`, in order."""
        return [s.backend for s in self.served if rpc_method in s.rpc]

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        body = await _read_body(receive)  # MCP bodies are small; the response is what must stream
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP]
        record = Served(-1, scope["method"], scope["path"], _rpc_methods(body))
        record.session_id = _header(headers, b"mcp-session-id")
        record.last_event_id = _header(headers, b"last-event-id")
        target = scope["path"] + (f"?{scope['query_string'].decode()}" if scope.get("query_string") else "")
        response = await self._open(scope["method"], target, headers, body, record)
        if response is None:
            await _answer(send, 502, b'{"error": "no backend answered"}')
            self._done(record)
            return
        record.status = response.status_code
        self._done(record)
        try:
            await _relay(response, receive, send)
        finally:
            await response.aclose()

    async def _open(self, method, target, headers, body, record: Served) -> httpx2.Response | None:
        """Send to the next backend; one that refuses the connection is skipped (each tried once)."""
        for _ in range(len(self.backends)):
            index = self._next % len(self.backends)
            self._next += 1
            request = self._client.build_request(
                method, self.backends[index] + target, headers=headers, content=body
            )
            try:
                response = await self._client.send(request, stream=True)
            except httpx2.ConnectError:
                log.info("backend %d refused the connection: trying the next", index)
                continue
            record.backend = index
            return response
        return None

    def _done(self, record: Served) -> None:
        self.served.append(record)
        log.info("%s", record)


async def _relay(response: httpx2.Response, receive, send) -> None:
    """The backend's response to the client, chunk by chunk; a client that goes away ends it."""
    headers = [(k, v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP]
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    async with anyio.create_task_group() as tg:

        async def until_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            tg.cancel_scope.cancel()

        tg.start_soon(until_disconnect)
        with contextlib.suppress(httpx2.HTTPError):  # the backend died mid-stream: end the client's too
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        tg.cancel_scope.cancel()


async def _read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def _answer(send, status: int, body: bytes) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": body})


def _rpc_methods(body: bytes) -> list[str]:
    try:
        parsed = json.loads(body[:SNIFF_BYTES]) if body else []
    except ValueError:
        return []
    messages = parsed if isinstance(parsed, list) else [parsed]
    return [
        m.get("method") or "response" for m in messages if isinstance(m, dict) and m.get("jsonrpc") == "2.0"
    ]


def _header(headers: list, name: bytes) -> str | None:
    return next((v.decode("latin-1") for k, v in headers if k.lower() == name), None)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass
class RunningProxy:
    """A started proxy: where it listens, and what it served."""

    app: RoundRobinProxy
    base_url: str
    path: str

    @property
    def url(self) -> str:
        return self.base_url + self.path

    @property
    def served(self) -> list[Served]:
        return self.app.served

    def backends_of(self, rpc_method: str) -> list[int]:
        return self.app.backends_of(rpc_method)

    def __str__(self) -> str:
        return self.url


@contextlib.asynccontextmanager
async def round_robin_proxy(
    backends: list[str], host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningProxy]:
    """Serve a round-robin proxy over `backends` in this event loop until the block ends."""
    app = RoundRobinProxy(backends)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False, log_config=None,
                            timeout_graceful_shutdown=1)  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the proxy did not start")
            await asyncio.sleep(0.01)
        bound = sock.getsockname()[1]
        yield RunningProxy(app, f"http://{host}:{bound}", urlsplit(backends[0]).path)
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        await app.aclose()
        sock.close()


@contextlib.contextmanager
def proxy_in_thread(backends: list[str], host: str = "127.0.0.1", port: int = 0) -> Iterator[RunningProxy]:
    """The same proxy on an event loop of its own thread, for sync code (or to hand a URL to a subprocess)."""
    started: list[tuple[RunningProxy, asyncio.AbstractEventLoop, asyncio.Event]] = []
    failed: list[BaseException] = []

    async def run() -> None:
        try:
            async with round_robin_proxy(backends, host, port) as proxy:
                stop = asyncio.Event()
                started.append((proxy, asyncio.get_running_loop(), stop))
                await stop.wait()
        except BaseException as e:  # handed to the caller's thread
            failed.append(e)

    thread = threading.Thread(target=asyncio.run, args=(run(),), name="round-robin-proxy", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not started:
        if failed:
            raise failed[0]
        if time.monotonic() > deadline:
            raise RuntimeError("the proxy did not start")
        time.sleep(0.01)
    proxy, loop, stop = started[0]
    try:
        yield proxy
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(15)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Per-request round-robin HTTP proxy (tests only).")
    parser.add_argument(
        "--listen", default="127.0.0.1:0", help="host:port to listen on (port 0: any free port)"
    )
    parser.add_argument("backends", nargs="+", help="backend URLs, e.g. http://127.0.0.1:8001/mcp")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    log.addHandler(logging.StreamHandler(sys.stdout))  # one line per request; nothing of httpx's
    log.setLevel(logging.INFO)

    async def run() -> None:
        async with round_robin_proxy(args.backends, host or "127.0.0.1", int(port)) as proxy:
            print(f"proxy listening on {proxy.url}", flush=True)
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
