"""An error reply (NOPERM for a SUBSCRIBE an ACL refuses) read inside a burst, through the
hub's direct hiredis read, reaches handle_message as a ResponseError object: TypeError, and the
hub's one reader task is dead (every call on this messenger stops getting live events). Before,
parse_response raised it as a RedisError and the loop went on."""

from __future__ import annotations

import asyncio
import time

import redis as sync_redis

from messenger.hub import KEEPALIVE_CHANNEL, EventHub
from shared import keys
from shared.connection import connect


async def test_an_error_reply_inside_a_burst_does_not_kill_the_hubs_reader(redis_url):
    admin = sync_redis.Redis.from_url(redis_url)
    admin.acl_setuser(
        "hubonly", enabled=True, passwords=["+pw-123456"], keys=["*"], commands=["+@all"],
        channels=[KEEPALIVE_CHANNEL, keys.events("ok*")], reset_channels=True,
    )  # fmt: skip
    host, port = (
        admin.connection_pool.connection_kwargs["host"],
        admin.connection_pool.connection_kwargs["port"],
    )
    client = connect(f"redis://hubonly:pw-123456@{host}:{port}/0")
    hub = EventHub(client)
    await hub.start()
    try:
        async with hub.follow("ok1") as queue:
            for i in range(100):
                admin.publish(keys.events("ok1"), b"a%d" % i)  # the loop is blocked: all wait in the socket
            await hub._pubsub.subscribe(keys.events("refused"))  # NOPERM, behind the first 100
            for i in range(100):
                admin.publish(keys.events("ok1"), b"b%d" % i)
            time.sleep(0.1)  # noqa: ASYNC251 (blocks the loop on purpose: the messages pile up into one burst)
            admin.publish(keys.events("ok1"), b"after")
            got: list[bytes] = []
            async with asyncio.timeout(10):  # a dead reader never delivers "after"
                while b"after" not in got:
                    got.append(await queue.get())
            assert hub._reader is not None and not hub._reader.done()
    finally:
        await hub.close()
        await client.aclose()
        admin.acl_deluser("hubonly")


async def test_a_confirmation_and_an_unknown_channel_inside_a_burst(redis_url):
    """Held: a SUBSCRIBE confirmation and messages on a channel nobody follows (any more), read
    mid-burst, are handled; the followed channel's messages all come, in order."""
    admin = sync_redis.Redis.from_url(redis_url)
    client = connect(redis_url)
    hub = EventHub(client)
    await hub.start()
    try:
        async with hub.follow("a") as queue:
            for i in range(300):
                admin.publish(keys.events("a"), b"%d" % i)
            await hub._pubsub.subscribe(keys.events("stray"))  # confirmed mid-burst, followed by nobody
            for i in range(300, 600):
                admin.publish(keys.events("a"), b"%d" % i)
                admin.publish(keys.events("stray"), b"x")
            time.sleep(0.1)  # noqa: ASYNC251 (blocks the loop on purpose: the messages pile up into one burst)

            async def second():
                async with hub.follow("b") as q:
                    admin.publish(keys.events("b"), b"hello")
                    return await asyncio.wait_for(q.get(), 5)

            assert await asyncio.wait_for(second(), 10) == b"hello"
            got = [queue.get_nowait() for _ in range(queue.qsize())]
            assert got == [b"%d" % i for i in range(600)]
            assert not hub._reader.done()
    finally:
        await hub.close()
        await client.aclose()


async def test_follows_that_start_together_share_one_subscribe_and_their_ends_one_unsubscribe(redis_url):
    """200 follows at once on a real Redis: each is confirmed and gets its job's message, in a few
    SUBSCRIBE commands, not 200; once all have ended, Redis holds none of their channels."""
    admin = sync_redis.Redis.from_url(redis_url)
    client = connect(redis_url)
    hub = EventHub(client)
    await hub.start()
    jobs = [f"together-{i}" for i in range(200)]
    try:
        admin.config_resetstat()

        async def one(job: str) -> bytes:
            async with hub.follow(job) as queue:
                admin.publish(keys.events(job), job.encode())
                return await asyncio.wait_for(queue.get(), 10)

        got = await asyncio.gather(*(one(job) for job in jobs))
        channels = [keys.events(job) for job in jobs]
        async with asyncio.timeout(10):  # the UNSUBSCRIBEs are sent; Redis runs them a moment later
            while any(count for _, count in admin.pubsub_numsub(*channels)):  # noqa: ASYNC110 (Redis has no event for it)
                await asyncio.sleep(0.01)
        stats = admin.info("commandstats")
    finally:
        await hub.close()
        await client.aclose()
    assert got == [job.encode() for job in jobs]
    assert stats["cmdstat_subscribe"]["calls"] <= 20, stats["cmdstat_subscribe"]
    assert stats["cmdstat_unsubscribe"]["calls"] <= 20, stats["cmdstat_unsubscribe"]
