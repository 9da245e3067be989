"""messenger/serve.py and http_head.py: the HTTP server the messenger runs (uvicorn on httptools),
on a real socket."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import anyio

from messenger import serve


async def app(scope, receive, send):
    """Answers lifespan, and every request with its body's length."""
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": message["type"] + ".complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    size, more = 0, True
    while more:
        message = await receive()
        size, more = size + len(message.get("body", b"")), message.get("more_body", False)
    answer = str(size).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(answer))]}
    )
    await send({"type": "http.response.body", "body": answer})


@contextlib.asynccontextmanager
async def served():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = serve.uvicorn.Server(serve.server_config(app, "127.0.0.1", port))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn says so by a flag, not an event)
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        await task


async def exchange(port: int, *parts: bytes) -> tuple[bool, bytes]:
    """Send the parts as long as the server reads them, then read until it closes: (all sent, reply)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    reply = b""
    try:
        for part in parts:
            writer.write(part)
            await writer.drain()
        writer.write_eof()
        while chunk := await reader.read(65536):
            reply += chunk
        return True, reply
    except ConnectionError:  # the server closed with what we sent unread: the kernel says so by RST
        return False, reply
    finally:
        writer.close()


async def test_a_request_head_without_end_is_refused_at_h11s_cap_not_kept_whole(caplog):
    """httptools keeps a request's head until its end, however long (uvicorn caps it only with h11):
    one endless header line, URL or trailer would grow the messenger by what a client sends (200 MB: +230 MB)."""
    with anyio.fail_after(30):
        async with served() as port:
            endless = [b"a" * 65536] * 160  # 10 MB, never ended
            header = await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ", *endless)
            url = await exchange(port, b"GET /", *endless)
            chunked = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            trailer = await exchange(port, chunked + b"2\r\n{}\r\n0\r\nX-T: ", *endless)
            # what a client may send, pipelined: a body of any size, chunked in small pieces, trailers and a
            # long head under the cap
            body = b"b" * 3_000_000
            post = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
            long_head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"c" * 12_000 + b"\r\n\r\n"
            chunks = b"".join(b"%x\r\n%b\r\n" % (n, b"d" * n) for n in range(1, 3000, 7))
            trailers = b"0\r\nX-T: " + b"e" * 12_000 + b"\r\n\r\n"
            fine = await exchange(port, post + chunked + chunks + trailers + long_head)
    assert not header[0] and not url[0] and not trailer[0], "the server stopped reading"
    assert caplog.text.count("Request head too large.") == 3
    sent, reply = fine
    assert sent and reply.count(b"HTTP/1.1 200 OK") == 3, reply
    sizes = [part.split(b"\r\n\r\n")[1] for part in reply.split(b"HTTP/1.1 200 OK")[1:]]
    assert sizes == [b"3000000", b"%d" % sum(range(1, 3000, 7)), b"0"], sizes
