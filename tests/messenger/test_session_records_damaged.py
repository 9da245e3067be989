"""Held: Batch on a real Redis: a damaged session key is 'unknown' (None), a junk string too, and
neither spoils the other callers' replies in the same pipeline."""

from __future__ import annotations

import asyncio
import logging

from messenger.sessions import SessionEvents, SessionRecord, SessionRegistry
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


async def test_a_damaged_events_key_is_said_once_a_stream_not_once_an_event(redis_url, caplog):
    """A session's events key of another type refuses every XADD of the call's stream: the call goes
    on live (only a resume from there is lost), and the log says so once for the stream, not once
    for each of its events (a token each: a 1,000-token answer was 1,000 WARNING lines); a store that
    lands again ends the run, and a later failure is said again."""
    redis = connect(redis_url)
    try:
        registry = SessionRegistry(redis, 60)
        await registry.create("s1", SessionRecord("2025-11-25", {"a": 1}, None, 1.0))
        store = SessionEvents(redis, "s1", registry, "r1")
        await redis.set(keys.session_events("s1", "7"), b"junk")
        with caplog.at_level(logging.WARNING, logger="messenger"):
            ids = [await store.store_body("7", f'{{"n":{n}}}') for n in range(50)]
            said = [r.getMessage() for r in caplog.records if "not stored" in r.getMessage()]
            assert len(said) == 1 and "WRONGTYPE" not in said[0], said
            assert all(i.startswith("7/0-0") for i in ids)  # (names no entry: a resume from it gets 404)
            await redis.delete(keys.session_events("s1", "7"))
            assert not (await store.store_body("7", '{"n":50}')).startswith("7/0-0")
            await redis.set(keys.session_events("s1", "7"), b"junk")
            await store.store_body("7", '{"n":51}')
            assert len([r for r in caplog.records if "not stored" in r.getMessage()]) == 2
    finally:
        await redis.aclose()
