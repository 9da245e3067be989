"""Subscribe_forever's direct read_response takes the connection's socket_timeout (listen()
read with none): with socket_timeout in REDIS_URL, a quiet channel is 'lost' every socket_timeout,
one WARNING each time, and resubscribed (the worker's full poll each time)."""

from __future__ import annotations

import asyncio
import logging

from shared.connection import connect, subscribe_forever


async def test_a_quiet_subscription_with_a_socket_timeout_is_not_lost(redis_url, caplog):
    client = connect(redis_url + "?socket_timeout=0.3")
    subscribed: list[int] = []
    task = asyncio.create_task(
        subscribe_forever(
            client,
            {"quiet": lambda _: None},
            on_subscribed=lambda: subscribed.append(1),
            what="a quiet channel",
        )
    )
    try:
        with caplog.at_level(logging.WARNING):
            await asyncio.sleep(2.0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()
    assert "subscription lost" not in caplog.text
    assert len(subscribed) == 1, f"subscribed {len(subscribed)} times in 2 s of quiet"
