"""Held: Batch on a real Redis: a damaged session key is 'unknown' (None), a junk string too, and
neither spoils the other callers' replies in the same pipeline."""

from __future__ import annotations

import asyncio

from messenger.sessions import SessionRecord, SessionRegistry
from shared import keys
from shared.connection import connect


async def test_damaged_session_keys_in_one_pipeline_with_good_ones(redis_url):
    redis = connect(redis_url)
    try:
        registry = SessionRegistry(redis, 60)
        await redis.hset(keys.session("hash"), "x", "y")
        await redis.xadd(keys.session("stream"), {"a": "b"})
        await redis.set(keys.session("junk"), b"\xff\xfe not json")
        await registry.create("good", SessionRecord("2025-11-25", {"a": 1}, None, 1.0))
        got = await asyncio.gather(*(registry.touch(s) for s in ["hash", "good", "stream", "junk", "good"]))
        assert [g is not None for g in got] == [False, True, False, False, True]
        assert await redis.ttl(keys.session("good")) > 0
    finally:
        await redis.aclose()
