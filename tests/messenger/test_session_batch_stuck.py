"""SessionRegistry.touch (every session request's GETEX) now waits in the process's one Batch,
one pipeline at a time: a pipeline stuck on one dead connection (a half-open TCP connection after a
failover or partition: no RST, no socket_timeout in SERVICE) holds up every session request of the
messenger, where a GETEX of its own took another connection from the pool and was answered."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest

from messenger.sessions import SessionRecord, SessionRegistry
from shared import keys
from shared.connection import connect
from tests.relays import FreezingProxy


async def test_one_stuck_connection_does_not_hold_up_every_session_request(redis_url, monkeypatch):
    monkeypatch.setattr("shared.connection.BATCH_STUCK_SECONDS", 0.5, raising=False)  # (the patch's)
    url = urlsplit(redis_url)
    proxy = FreezingProxy(url.hostname, url.port)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    redis = connect(f"redis://127.0.0.1:{port}{url.path}")
    try:
        registry = SessionRegistry(redis, 60)
        await registry.create("good", SessionRecord("2025-11-25", {"a": 1}, None, 1.0))
        assert await registry.touch("good") is not None  # one pooled connection, now idle
        proxy.freeze()
        stuck = asyncio.create_task(registry.touch("good"))  # takes the frozen connection
        await asyncio.sleep(0.2)
        # what a GETEX of its own does (before 5fe414e): another connection, answered
        assert await asyncio.wait_for(redis.getex(keys.session("good"), ex=60), 2) is not None
        try:
            assert await asyncio.wait_for(registry.touch("good"), 3) is not None
        except TimeoutError:
            pytest.fail("a session request waited behind a pipeline stuck on another connection")
        stuck.cancel()
    finally:
        server.close()
        await redis.aclose()
