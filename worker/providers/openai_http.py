"""A plain-HTTP model server's chat stream over the worker's own lean HTTP/1.1 connections.

Why: through the SDK and httpx2, a chat request took ~1.5 ms of the worker's CPU before it was on
the wire and ~0.3 ms more per chunk before the token was out (2-core box), more than the rest of the
worker's share of a first token. A self-hosted server on this machine or a LAN (llama.cpp, vLLM,
Ollama), where that matters most, speaks plain HTTP/1.1, so the worker speaks it itself there:
one request written at once, the answer's SSE parsed as it arrives, the connection kept for the
next job. Only for `http://` base URLs that no proxy setting applies to; TLS, proxies and every
other provider call (`check`, the models list) stay the SDK's. An answer other than 200 raises the
SDK's own error built from it (same classes, so the same messages and retry decisions); a
connection that fails before any answer is `Unreached`: the caller goes through the SDK then,
which retries as it always did.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from typing import Any
from urllib.parse import urlsplit

import httpx2
import openai

KEPT = 8  # idle keep-alive connections kept per server (the worker's jobs in flight reuse them)


class Unreached(Exception):
    """The request got no answer at all (refused, reset, closed): the SDK's path tries again."""


def lean_url(base_url: str | None) -> tuple[str, int, str] | None:
    """(host, port, path prefix) of a plain-HTTP base URL no proxy applies to; None otherwise."""
    if not base_url:
        return None
    url = urlsplit(base_url)
    if url.scheme != "http" or not url.hostname or url.username or url.password:
        return None
    proxies = urllib.request.getproxies()
    if (proxies.get("http") or proxies.get("all")) and not urllib.request.proxy_bypass(url.hostname):
        return None
    return url.hostname, url.port or 80, url.path.rstrip("/")


class LeanChat:
    """POSTs to one server's chat completions, streaming; keeps up to KEPT idle connections."""

    def __init__(
        self, where: tuple[str, int, str], headers: dict[str, str],
        make_error: Callable[[httpx2.Response], openai.APIStatusError], timeout: float = 600.0,
    ) -> None:  # fmt: skip
        """`headers`: what the SDK sends (its defaults and the key); `make_error`: the SDK client's
        error for an answer (`_make_status_error_from_response`)."""
        self.host, self.port, prefix = where
        path = f"{prefix}/chat/completions"
        named = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 address, bracketed
        self.url = f"http://{named}:{self.port}{path}"
        host = named if self.port == 80 else f"{named}:{self.port}"
        lines = [f"{k}: {v}\r\n" for k, v in headers.items() if k.lower() not in ("host", "content-length")]
        self.head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{''.join(lines)}".encode("latin-1")
        self.make_error = make_error
        self.timeout = timeout  # the SDK's: for the answer's head, and for each read after it
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    def close(self) -> None:
        while self.idle:
            self.idle.pop()[1].close()

    async def stream(self, body: dict[str, Any]) -> AsyncGenerator[Any, None]:
        """The server's chunks (parsed JSON) as they come; raises the SDK's errors, or Unreached."""
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer, status, headers = await self._ask(data)
        except TimeoutError:
            raise openai.APITimeoutError(request=self._request()) from None
        kept = False
        answer = _body(reader, headers)
        try:
            if status != 200:
                raise await self._status_error(answer, status, headers)
            async with aclosing(_events(answer)) as events:
                while True:
                    async with asyncio.timeout(self.timeout):
                        event = await anext(events, None)
                    if event is None:
                        break
                    if event == "[DONE]":
                        kept = headers.get("connection", "").lower() != "close" and await _finish(
                            answer, headers
                        )
                        return
                    yield self._chunk(event)
        except TimeoutError:  # (an OSError): the server went quiet mid-answer
            raise openai.APITimeoutError(request=self._request()) from None
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:  # cut or garbled mid-answer
            raise openai.APIConnectionError(
                message=f"the stream broke ({type(e).__name__})", request=self._request()
            ) from None
        finally:
            if kept and len(self.idle) < KEPT:
                self.idle.append((reader, writer))
            else:
                writer.close()

    def _chunk(self, event: str) -> Any:
        """One event's JSON; an error event raises it, as the SDK's stream does."""
        try:
            chunk = json.loads(event)
        except ValueError:
            raise openai.APIError(
                "the stream carried an event that is not JSON", self._request(), body=None
            ) from None
        if isinstance(chunk, dict) and chunk.get("error"):
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else None
            if not isinstance(message, str) or not message:
                message = "An error occurred during streaming"
            raise openai.APIError(message, self._request(), body=error)
        return chunk

    def _request(self) -> httpx2.Request:
        return httpx2.Request("POST", self.url)

    async def _ask(
        self, data: bytes
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int, dict[str, str]]:
        """Write the request on a kept connection (a fresh one if none is left open)."""
        request = self.head + b"Content-Length: %d\r\n\r\n" % len(data) + data
        while self.idle:
            reader, writer = self.idle.pop()
            if reader.at_eof() or writer.is_closing():
                writer.close()
                continue
            with contextlib.suppress(Unreached):  # closed by the server just now: a fresh one
                return reader, writer, *await self._send(reader, writer, request)
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError as e:
            raise Unreached(type(e).__name__) from None
        return reader, writer, *await self._send(reader, writer, request)

    async def _send(self, reader, writer, request: bytes) -> tuple[int, dict[str, str]]:
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
            writer.close()
            raise Unreached(type(e).__name__) from None
        except BaseException:  # cancelled (the timeout): the socket must not leak
            writer.close()
            raise
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            writer.close()
            raise Unreached("not an HTTP/1.x answer")
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return int(parts[1]), headers

    async def _status_error(self, answer: AsyncIterator[bytes], status: int, headers: dict[str, str]):
        content = b""
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, ValueError, TimeoutError):
            async with asyncio.timeout(5):
                content = b"".join([piece async for piece in answer])
        response = httpx2.Response(status, headers=headers, content=content, request=self._request())
        return self.make_error(response)


async def _body(reader: asyncio.StreamReader, headers: dict[str, str]) -> AsyncGenerator[bytes, None]:
    """The answer's body as it arrives: chunked, sized, or up to the connection's close."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers, then the end
                    pass
                return
            piece = await reader.readexactly(size + 2)
            yield piece[:-2]
    elif "content-length" in headers:
        left = int(headers["content-length"])
        while left > 0:
            piece = await reader.read(min(left, 65536))
            if not piece:
                raise asyncio.IncompleteReadError(b"", left)
            left -= len(piece)
            yield piece
    else:
        while piece := await reader.read(65536):
            yield piece


_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


async def _events(pieces: AsyncIterator[bytes]) -> AsyncGenerator[str, None]:
    """The `data` of each server-sent event (multi-line data joined with newlines). Linear in the
    bytes: a piece holding thousands of events is not copied once per event."""
    buffer = b""
    for_end = 0  # where the next event's end may start (what was searched before had none)
    async for piece in pieces:
        buffer += piece
        at = 0
        while (found := _EVENT_END.search(buffer, max(at, for_end))) is not None:
            block = buffer[at : found.start()]
            at = found.end()
            while at < len(buffer) and buffer[at] in b"\r\n":
                at += 1
            data = [line[5:].removeprefix(b" ") for line in block.splitlines() if line.startswith(b"data:")]
            if data:  # a broken UTF-8 byte becomes U+FFFD, as a lone surrogate does
                yield b"\n".join(data).decode(errors="replace")
        buffer = buffer[at:]
        for_end = max(0, len(buffer) - 3)


async def _finish(answer: AsyncIterator[bytes], headers: dict[str, str]) -> bool:
    """Read the answer to its end after [DONE], so the connection can carry the next request."""
    if "chunked" not in headers.get("transfer-encoding", "").lower() and "content-length" not in headers:
        return False  # its end is the connection's close
    try:
        async with asyncio.timeout(1):
            async for _ in answer:
                pass
    except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError):
        return False
    return True
