"""Followers waiting for their jobs' stored results share one read a turn, and each gets its own."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from messenger.stored import ResultReads
from shared import keys

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
    got = await asyncio.gather(*(reads.get(j) for j in ("a", "b", "c", "a", "junk")))
    assert got == [b"result of a", None, b"result of c", b"result of a", None]
    assert counting.sent == [("MGET", 4)]
    assert await reads.get("c") == b"result of c"  # a later turn: a read of its own
    assert counting.sent == [("MGET", 4), ("MGET", 1)]


async def test_a_failed_read_fails_every_reader_of_its_turn():
    class Down:
        async def mget(self, names):
            raise RedisConnectionError("Redis is away")

    reads = ResultReads(Down())
    outcomes = await asyncio.gather(reads.get("a"), reads.get("b"), return_exceptions=True)
    assert [type(o) for o in outcomes] == [RedisConnectionError, RedisConnectionError]
