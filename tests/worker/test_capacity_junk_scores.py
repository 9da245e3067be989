"""Junk in the capacity keys that has the right type but impossible values: a slot leased until
the end of time, a cool-down far past what any 429 may set. A hostile or mistaken hand must not
stop a model for good; the admission script drops what no worker could have written."""

from __future__ import annotations

import pytest
from test_capacity import MODEL, take

from shared import keys
from shared.connection import connect


@pytest.fixture
async def redis(redis_url):
    """A real redis-server: the admission script is Lua, and its clock is Redis's."""
    client = connect(redis_url)
    yield client
    await client.aclose()


async def test_a_slot_leased_forever_by_hand_is_dropped_not_held(redis):
    slots = keys.capacity("slots", MODEL)
    await redis.zadd(slots, {"junk-inf": float("inf")})
    await redis.zadd(slots, {"junk-far": 1e18})
    assert await take(redis, holder="h1", concurrency=1) == ("ok", 0)
    assert await redis.zscore(slots, "junk-inf") is None and await redis.zscore(slots, "junk-far") is None


async def test_a_cool_down_longer_than_any_429_may_set_is_dropped(redis):
    await redis.set(keys.capacity("cooldown", MODEL), "x", px=10**12)  # 31 years
    assert await take(redis, concurrency=1) == ("ok", 0)
