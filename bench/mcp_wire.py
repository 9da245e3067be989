"""A bare streamable-HTTP MCP caller for load: one keep-alive HTTP/1.1 connection per caller,
hand-parsed chunked SSE, no SDK.

WHY not the SDK client: 1,000 SDK sessions in one process cost more CPU than the messenger under
test, so the load generator, not the messenger, would set the figures. This speaks the same wire
(initialize, notifications/initialized, tools/call with a progressToken) as any 2025-11-25 client.

WHY an asyncio.Protocol: the responses are framed in `data_received` as the bytes come, each body
piece stamped with the time it arrived, and `record` wakes its task once, at the response's end:
the load generator shares the messenger's two cores, so what it spends is taken from what it
measures (bench/callers.py parses every answer after the round, as wrk does). `call` and `stream`
still yield each message as it comes, stamped when the reading task gets it, as a reader of an
asyncio StreamReader (this module until 2026-12-04) or of an SDK would.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable

PROTOCOL = "2025-11-25"
IDLE_KEPT = 4.0  # seconds; uvicorn closes a keep-alive connection idle for 5


class WireError(Exception):
    """The server answered something a caller cannot use."""


class Reply:
    """One HTTP response: status, headers, then its body pieces (a chunk, or the whole
    Content-Length body), each with the time its last byte reached the caller."""

    __slots__ = ("_waiter", "ended", "error", "headers", "live", "pieces", "status")

    def __init__(self, live: bool) -> None:
        self.status = 0  # until the head is in
        self.headers: dict[str, str] = {}
        self.pieces: list[tuple[float, bytes]] = []
        self.ended = False
        self.error: Exception | None = None
        self.live = live  # wake the reader at every piece, not only at the end
        self._waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def changed(self) -> None:
        """Until more of the response is in (a live reply) or it has ended."""
        if self.ended or self.error:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        await self._waiter
        self._waiter = None

    async def whole(self) -> Reply:
        while not self.ended and self.error is None:
            await self.changed()
        if self.error is not None:
            raise self.error
        return self

    def reader(self) -> Callable[[bytes], list[dict]]:
        """The body's messages piece by piece: SSE events, or the one JSON document."""
        if self.headers.get("content-type", "").startswith("text/event-stream"):
            return Events().feed
        return lambda piece: [json.loads(piece)] if piece else []

    def messages(self) -> list[tuple[float, dict]]:
        """(arrival of the piece that completed it, message) for every JSON message of the body."""
        read = self.reader()
        return [(arrived, message) for arrived, piece in self.pieces for message in read(piece)]


class Events:
    """SSE `data:` payloads as JSON messages, however the body's pieces cut the events."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, piece: bytes) -> list[dict]:
        *events, self._rest = (self._rest + piece).replace(b"\r\n", b"\n").split(b"\n\n")
        out = []
        for event in events:
            data = b"\n".join(line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:"))
            if data and data != b"[DONE]":  # an OpenAI stream's last line is not JSON
                out.append(json.loads(data))
        return out


class _Link(asyncio.Protocol):
    """A connection's reading side: frames each HTTP/1.1 response (Content-Length or chunked,
    no trailers) into its Reply as the bytes arrive."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reply: Reply | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self._buffer = b""
        self._size = -1  # the chunk being read (its size line is in), or -1
        self._length = -1  # a Content-Length body's size, or -1 for a chunked one

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.reply is not None and not self.reply.ended:
            self.reply.error = WireError(f"the connection closed mid-response: {exc}")
            self.reply.wake()
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        arrived = time.time()  # when the bytes reached the caller: every figure is measured to this
        buffer = self._buffer + data if self._buffer else data
        reply, pos, grew = self.reply, 0, len(self.reply.pieces) if self.reply else 0
        while reply is not None and not reply.ended:
            if not reply.status:
                end = buffer.find(b"\r\n\r\n", pos)
                if end < 0:
                    break
                self._head(reply, buffer[pos:end].decode("latin-1"))
                pos = end + 4
            elif self._length >= 0:
                if len(buffer) - pos < self._length:
                    break
                reply.pieces.append((arrived, buffer[pos : pos + self._length]))
                pos, reply.ended = pos + self._length, True
            else:
                if self._size < 0:
                    end = buffer.find(b"\r\n", pos)
                    if end < 0:
                        break
                    self._size, pos = int(buffer[pos:end].split(b";")[0], 16), end + 2
                if len(buffer) - pos < self._size + 2:
                    break
                if self._size:
                    reply.pieces.append((arrived, buffer[pos : pos + self._size]))
                pos, reply.ended, self._size = pos + self._size + 2, not self._size, -1
        self._buffer = buffer[pos:]
        if reply is not None and (reply.ended or (reply.live and len(reply.pieces) > grew)):
            reply.wake()

    def _head(self, reply: Reply, head: str) -> None:
        lines = head.split("\r\n")
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                reply.headers[name.strip().lower()] = value.strip()
        reply.status = int(lines[0].split()[1])
        self._size = -1
        chunked = "chunked" in reply.headers.get("transfer-encoding", "")
        self._length = -1 if chunked else int(reply.headers.get("content-length", 0))
        reply.ended = self._length == 0
        if reply.live:
            reply.wake()


class Caller:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.session: str | None = None
        self._link: _Link | None = None
        self._ids = 0
        self._used = 0.0  # monotonic time the connection last carried a request

    async def open(self) -> None:
        await self._connect()
        init = {
            "protocolVersion": PROTOCOL,
            "capabilities": {},
            "clientInfo": {"name": "bench-caller", "version": "1"},
        }
        await self._checked(await self._post("initialize", init).whole())
        await self._checked(await self._post("notifications/initialized", None, notify=True).whole())

    async def _connect(self) -> None:
        await self.close()
        _, self._link = await asyncio.get_running_loop().create_connection(_Link, self.host, self.port)

    async def _fresh(self) -> None:
        if time.monotonic() - self._used > IDLE_KEPT:
            await self._connect()

    async def close(self) -> None:
        if self._link is not None and self._link.transport is not None:
            self._link.transport.close()
            await self._link.closed

    async def record(self, tool: str, arguments: dict) -> Reply:
        """Call `tool` and return its whole reply once it has ended (`messages()` parses it): the
        task sleeps until then, however many notifications stream meanwhile."""
        await self._fresh()
        return await self._checked(await self._post("tools/call", _call(tool, arguments)).whole())

    async def call(self, tool: str, arguments: dict) -> AsyncIterator[tuple[float, dict]]:
        """Yield (arrival time, message) for every progress notification, then for the result.

        A connection idle longer than uvicorn keeps one (5 s) is replaced first, as httpx would."""
        await self._fresh()
        async for item in self._read(self._post("tools/call", _call(tool, arguments), live=True)):
            yield item

    async def stream(self, path: str, message: dict) -> AsyncIterator[tuple[float, dict]]:
        """POST `message` as JSON to any path of the same server (an OpenAI-compatible
        /v1/chat/completions, say) and yield (arrival time, message) for each JSON event it answers."""
        await self._fresh()
        async for item in self._read(self._send(path, message, [], live=True)):
            yield item

    def _post(self, method: str, params: dict | None, notify: bool = False, live: bool = False) -> Reply:
        message: dict = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        if not notify:
            self._ids += 1
            message["id"] = self._ids
        head = (
            [f"Mcp-Session-Id: {self.session}", f"Mcp-Protocol-Version: {PROTOCOL}"] if self.session else []
        )
        return self._send("/mcp", message, head, live)

    def _send(self, path: str, message: dict, more_head: list[str], live: bool) -> Reply:
        """Write the request; its Reply fills in as the response arrives."""
        assert self._link is not None and self._link.transport is not None
        body = json.dumps(message).encode()
        head = [
            f"POST {path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Content-Type: application/json",
            "Accept: application/json, text/event-stream",
            f"Content-Length: {len(body)}",
            *more_head,
        ]
        self._used = time.monotonic()
        self._link.reply = Reply(live)
        self._link.transport.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        return self._link.reply

    async def _checked(self, reply: Reply) -> Reply:
        if reply.status >= 300:
            raise WireError(f"HTTP {reply.status}: {b''.join(p for _, p in reply.pieces)[:200]!r}")
        self.session = reply.headers.get("mcp-session-id", self.session)
        return reply

    async def _read(self, reply: Reply) -> AsyncIterator[tuple[float, dict]]:
        """Each message as it comes, stamped when this task takes the piece that completed it."""
        while not reply.status and reply.error is None:
            await reply.changed()
        if reply.error is None and reply.status >= 300:
            await reply.whole()
        await self._checked(reply)
        read, taken = reply.reader(), 0
        while True:
            if reply.error is not None:
                raise reply.error
            while taken < len(reply.pieces):
                piece = reply.pieces[taken][1]
                taken += 1
                arrived = time.time()
                for message in read(piece):
                    yield arrived, message
            if reply.ended:
                return
            await reply.changed()


def _call(tool: str, arguments: dict) -> dict:
    return {"name": tool, "arguments": arguments, "_meta": {"progressToken": 1}}
