"""Followers waiting for their jobs' stored results share one poll schedule: each wake reads every
waiter due (or nearly) in one MGET, and each gets its own result."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from messenger.stored import FIRST_POLL_SECONDS, ResultReads
from shared import keys
from shared.connection import connect
from tests.relays import FreezingProxy

pytestmark = pytest.mark.anyio


class Counting:
    """Passes commands to Redis, counting them by name."""

    def __init__(self, redis):
        self.redis, self.sent = redis, []

    async def mget(self, names):
        self.sent.append(("MGET", len(names)))
        return await self.redis.mget(names)


async def test_reads_asked_in_one_turn_go_out_as_one_command_and_each_reader_gets_its_own(redis):
    await redis.set(keys.result("a"), b"result of a")
    await redis.set(keys.result("c"), b"result of c")
    await redis.hset(keys.result("junk"), "not", "a string")  # reads as not stored yet
    counting = Counting(redis)
    reads = ResultReads(counting)
    got = await asyncio.gather(*(reads.wait(j, patience=0) for j in ("a", "b", "c", "a", "junk")))
    assert got == [b"result of a", None, b"result of c", b"result of a", None]
    assert counting.sent == [("MGET", 4)]
    assert await reads.wait("c", patience=0) == b"result of c"  # a later turn: a read of its own
    assert counting.sent == [("MGET", 4), ("MGET", 1)]


async def test_waiters_that_start_apart_are_read_together_once_their_waits_have_grown(redis):
    """200 followers whose waits began at 100 moments (a loop turn apart, each its own schedule) cost
    a read per start, then share reads: a waiter may be read up to half its wait early, so the later,
    longer waits fall together until one read takes them all. (Each follower on its own timer read
    a few waiters at a time, ~10 reads a waiter in the first second.)"""
    jobs = [f"j{i}" for i in range(200)]

    class StoredOnceReadTogether(Counting):
        async def mget(self, names):
            if len(names) == len(jobs):
                await redis.mset({keys.result(j): f"result of {j}".encode() for j in jobs})
            return await super().mget(names)

    counting = StoredOnceReadTogether(redis)
    reads = ResultReads(counting)
    waits = []
    async with asyncio.timeout(10):
        for pair in range(100):  # two a turn, each turn a little later
            waits += [
                asyncio.ensure_future(reads.wait(j, patience=60)) for j in jobs[2 * pair : 2 * pair + 2]
            ]
            await asyncio.sleep(FIRST_POLL_SECONDS / 2)
        got = await asyncio.gather(*waits)
    assert got == [f"result of {j}".encode() for j in jobs]
    # the first reads (one a start: 100), then fewer and fewer shared ones: ~200 in all (175-202 on a
    # 2-vCPU VM, as its timers fall), where a timer a follower read ~2,000 (~10 a waiter)
    assert len(counting.sent) <= 3 * 100, counting.sent


async def test_a_read_redis_does_not_answer_is_read_again_and_the_waiter_gets_its_result(redis):
    await redis.set(keys.result("a"), b"result of a")

    class Away:
        def __init__(self):
            self.tries = 0

        async def mget(self, names):
            self.tries += 1
            if self.tries < 3:
                raise RedisConnectionError("Redis is away")
            return await redis.mget(names)

    away = Away()
    assert await ResultReads(away).wait("a", patience=60) == b"result of a"
    assert away.tries == 3


async def test_a_result_that_does_not_come_within_the_patience_reads_as_none(redis):
    reads = ResultReads(Counting(redis))
    assert await reads.wait("never", patience=0.01) is None


async def test_a_waiter_that_stops_waiting_is_read_no_more_and_the_others_still_get_theirs(redis):
    polled = asyncio.Event()

    class Told(Counting):
        async def mget(self, names):
            if len(self.sent) == 2:  # (the third read)
                polled.set()
            return await super().mget(names)

    counting = Told(redis)
    reads = ResultReads(counting)
    gone = asyncio.ensure_future(reads.wait("gone", patience=60))
    kept = asyncio.ensure_future(reads.wait("kept", patience=60))
    await polled.wait()
    gone.cancel()
    await redis.set(keys.result("kept"), b"kept")
    assert await kept == b"kept"
    sent = len(counting.sent)
    assert await reads.wait("other", patience=0) is None
    assert counting.sent[sent:] == [("MGET", 1)]  # "gone" is not read with it


async def test_a_read_stuck_on_a_dead_connection_does_not_hold_every_waiter_for_ever(redis_url, monkeypatch):
    """The waiters share one MGET at a time: one sent on a connection that went dead (half-open TCP
    after a failover: no answer, no RST, no socket_timeout in SERVICE) held every follower of the
    process, each past its patience, for the kernel's ~15 min, where a GET of its own took another
    connection. Given up after BATCH_STUCK_SECONDS (as the Batch's pipeline), it is read again."""
    monkeypatch.setattr("shared.connection.BATCH_STUCK_SECONDS", 0.5)
    url = urlsplit(redis_url)
    proxy = FreezingProxy(url.hostname or "127.0.0.1", url.port or 6379)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    redis = connect(f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}{url.path}")
    try:
        await redis.set(keys.result("a"), b"result of a")
        reads = ResultReads(redis)
        assert await reads.wait("a", patience=0) == b"result of a"  # one pooled connection, now idle
        proxy.freeze()
        stuck = asyncio.ensure_future(reads.wait("b", patience=0.1))  # its MGET takes the frozen one
        await asyncio.sleep(0.1)
        try:
            assert await asyncio.wait_for(reads.wait("a", patience=60), 5) == b"result of a"
            assert await asyncio.wait_for(stuck, 5) is None
        except TimeoutError:
            pytest.fail("a waiter waited behind a read stuck on a dead connection")
    finally:
        server.close()
        await redis.aclose()
