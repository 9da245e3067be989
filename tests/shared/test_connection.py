"""The pool's quick checkout (shared/connection.py): no lock and no probe for a clean connection,
yet a connection left with an unread reply never hands that reply to the next command."""

from __future__ import annotations

import asyncio

from shared.connection import QuickCheckout, connect


async def test_a_connection_returned_with_an_unread_reply_is_reconnected_not_reused(redis_url):
    redis = connect(redis_url)
    try:
        pool = redis.connection_pool
        assert isinstance(pool, QuickCheckout)
        connection = await pool.get_connection()
        await connection.send_command("ECHO", "stale")
        async with asyncio.timeout(5):
            while not await connection.can_read_destructive():  # the reply is in the parser now
                pass
        await pool.release(connection)  # as a buggy caller would: its reply unread
        assert await redis.echo("fresh") == b"fresh"
        assert await redis.ping() is True
    finally:
        await redis.aclose()


async def test_concurrent_commands_each_get_their_own_answer(redis_url):
    redis = connect(redis_url)
    try:
        answers = await asyncio.gather(*(redis.echo(f"n{i}") for i in range(300)))
        assert answers == [f"n{i}".encode() for i in range(300)]
    finally:
        await redis.aclose()
