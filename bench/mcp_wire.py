"""A bare streamable-HTTP MCP caller for load: one keep-alive HTTP/1.1 connection per caller,
hand-parsed chunked SSE, no SDK.

WHY not the SDK client: 1,000 SDK sessions in one process cost more CPU than the messenger under
test, so the load generator, not the messenger, would set the figures. This speaks the same wire
(initialize, notifications/initialized, tools/call with a progressToken) as any 2025-11-25 client.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

PROTOCOL = "2025-11-25"
IDLE_KEPT = 4.0  # seconds; uvicorn closes a keep-alive connection idle for 5


class WireError(Exception):
    """The server answered something a caller cannot use."""


class Caller:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.session: str | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ids = 0
        self._used = 0.0  # monotonic time the connection last carried a request

    async def open(self) -> None:
        await self._connect()
        init = {
            "protocolVersion": PROTOCOL,
            "capabilities": {},
            "clientInfo": {"name": "bench-caller", "version": "1"},
        }
        async for _ in self._post("initialize", init):
            pass
        async for _ in self._post("notifications/initialized", None, notify=True):
            pass

    async def _connect(self) -> None:
        await self.close()
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def _fresh(self) -> None:
        if time.monotonic() - self._used > IDLE_KEPT:
            await self._connect()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            await asyncio.gather(self._writer.wait_closed(), return_exceptions=True)

    async def call(self, tool: str, arguments: dict) -> AsyncIterator[tuple[float, dict]]:
        """Yield (arrival time, message) for every progress notification, then for the result.

        A connection idle longer than uvicorn keeps one (5 s) is replaced first, as httpx would."""
        await self._fresh()
        async for arrived, message in self._post(
            "tools/call", {"name": tool, "arguments": arguments, "_meta": {"progressToken": 1}}
        ):
            yield arrived, message

    async def stream(self, path: str, message: dict) -> AsyncIterator[tuple[float, dict]]:
        """POST `message` as JSON to any path of the same server (an OpenAI-compatible
        /v1/chat/completions, say) and yield (arrival time, message) for each JSON event it answers."""
        await self._fresh()
        async for item in self._request(path, message, []):
            yield item

    async def _post(self, method: str, params: dict | None, notify: bool = False):
        message: dict = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        if not notify:
            self._ids += 1
            message["id"] = self._ids
        head = (
            [f"Mcp-Session-Id: {self.session}", f"Mcp-Protocol-Version: {PROTOCOL}"] if self.session else []
        )
        async for item in self._request("/mcp", message, head):
            yield item

    async def _request(self, path: str, message: dict, more_head: list[str]):
        assert self._reader is not None and self._writer is not None
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
        self._writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        status, headers = await self._head()
        if status >= 300:
            raise WireError(f"{path}: HTTP {status}: {(await self._body(headers))[:200]!r}")
        self.session = headers.get("mcp-session-id", self.session)
        if headers.get("content-type", "").startswith("text/event-stream"):
            async for item in self._events(headers):
                yield item
        else:
            data = await self._body(headers)
            if data:
                yield time.time(), json.loads(data)

    async def _head(self) -> tuple[int, dict[str, str]]:
        assert self._reader is not None
        raw = await self._reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        return status, headers

    async def _body(self, headers: dict[str, str]) -> bytes:
        assert self._reader is not None
        if "content-length" in headers:
            return await self._reader.readexactly(int(headers["content-length"]))
        return b"".join([chunk async for chunk in self._chunks()])

    async def _chunks(self) -> AsyncIterator[bytes]:
        assert self._reader is not None
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self._reader.readuntil(b"\r\n")
                return
            chunk = await self._reader.readexactly(size + 2)
            yield chunk[:-2]

    async def _events(self, headers: dict[str, str]) -> AsyncIterator[tuple[float, dict]]:
        """SSE `data:` lines as JSON messages, until the chunked body ends."""
        buffer = b""
        async for chunk in self._chunks():
            arrived = time.time()
            buffer += chunk
            *events, buffer = buffer.replace(b"\r\n", b"\n").split(b"\n\n")
            for event in events:
                data = b"\n".join(
                    line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:")
                )
                if data and data != b"[DONE]":  # an OpenAI stream's last line is not JSON
                    yield arrived, json.loads(data)
