"""TCP relays to Redis. One loses one reply: what a failover or a network blip does to a command
Redis ran, whose answer never came back. redis-py then sends the command (a pipeline: all of it)
again on a new connection. The other freezes its connections: a half-open TCP connection after a
failover or partition (no answer, no RST). Importable by any suite."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


@contextlib.asynccontextmanager
async def losing_one_reply(
    redis_port: int, marker: bytes, reconnect: asyncio.Event | None = None
) -> AsyncIterator[int]:
    """A TCP relay to Redis (its port answered) that, once, lets through the first command holding
    `marker` and cuts that connection before the command's reply comes back; a connection made after
    the cut reaches Redis once `reconnect` is set (when given)."""
    cut = asyncio.Event()

    async def serve(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if cut.is_set() and reconnect is not None:
            await reconnect.wait()
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", redis_port)

        async def replies() -> None:
            while data := await redis_r.read(65536):
                if carried:  # the marked command's reply: Redis ran it, the client never hears so
                    break
                client_w.write(data)
                await client_w.drain()
            client_w.close()
            redis_w.close()

        carried = False  # this connection carries the marked command
        relaying = asyncio.create_task(replies())
        with contextlib.suppress(OSError):
            while data := await client_r.read(65536):
                if marker in data and not cut.is_set():
                    carried = True  # (before it reaches Redis: its reply is never relayed)
                    cut.set()
                redis_w.write(data)
                await redis_w.drain()
        await relaying

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        assert cut.is_set(), "no command held the marker"


class FreezingProxy:
    """TCP proxy to Redis; `freeze()` makes every connection open now a black hole (no RST);
    `freeze(subscriptions_only=True)` only those that SUBSCRIBEd (the idle ones, which a NAT forgets
    while the busy ones carry on)."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.frozen: list[asyncio.Event] = []
        self.subscribed: set[asyncio.Event] = set()  # those whose client sent a SUBSCRIBE

    async def handle(self, reader, writer):
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        cold = asyncio.Event()
        self.frozen.append(cold)

        async def pump(src, dst, upward: bool):
            while data := await src.read(65536):
                if cold.is_set():
                    await asyncio.Event().wait()  # swallowed: neither answer nor close
                if upward and b"SUBSCRIBE" in data:
                    self.subscribed.add(cold)
                dst.write(data)
                await dst.drain()

        await asyncio.gather(
            pump(reader, up_writer, True), pump(up_reader, writer, False), return_exceptions=True
        )

    def freeze(self, *, subscriptions_only: bool = False):
        for cold in self.frozen:
            if not subscriptions_only or cold in self.subscribed:
                cold.set()
