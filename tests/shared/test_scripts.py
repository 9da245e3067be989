"""shared/scripts.py: a Lua script called by named keys and arguments, on a real Redis and on fakeredis."""

from __future__ import annotations

import pytest
from fakeredis import FakeServer
from fakeredis.aioredis import FakeRedis

from shared.connection import connect
from shared.scripts import Arg, Args, Key, script

pytestmark = pytest.mark.anyio


@script("""
local kept = {}
for i, id in ipairs(ids) do kept[i] = id end
redis.call('SET', target, label, 'EX', ttl_seconds)
return {target, label, ttl_seconds * 2, tostring(ratio), tostring(urgent), tostring(cap == nil),
        tostring(note == nil), #ids, kept[#kept] or ''}
""")
async def echo(
    redis,
    *,
    target: Key,
    label: Arg[str],
    ttl_seconds: Arg[int],
    ratio: Arg[float],
    urgent: Arg[bool],
    cap: Arg[float | None],
    note: Arg[str | None],
    ids: Args,
) -> list:
    """Hands every parameter back as Lua saw it."""
    ...


def _call(redis, **overrides):
    given = dict(
        target="k1",
        label="hello",
        ttl_seconds=30,
        ratio=0.25,
        urgent=True,
        cap=None,
        note=None,
        ids=["a", "b"],
    )
    return echo(redis, **{**given, **overrides})


async def _check_names_reach_lua(redis) -> None:
    answer = await _call(redis)
    assert answer == [b"k1", b"hello", 60, b"0.25", b"true", b"true", b"true", 2, b"b"]
    assert await redis.get("k1") == b"hello"
    assert 0 < await redis.ttl("k1") <= 30
    answer = await _call(redis, urgent=False, cap=2.5, note="x", ids=[])
    assert answer[4:] == [b"false", b"false", b"false", 0, b""]


@pytest.mark.redis
async def test_named_keys_and_args_reach_lua_on_real_redis(redis_url):
    redis = connect(redis_url)
    try:
        await _check_names_reach_lua(redis)
    finally:
        await redis.aclose()


async def test_named_keys_and_args_reach_lua_on_fakeredis():
    redis = FakeRedis(server=FakeServer())
    await _check_names_reach_lua(redis)


@pytest.mark.redis
async def test_script_survives_a_script_flush(redis_url):
    """A flushed script cache (or a restarted Redis) costs one EVAL, never an error."""
    redis = connect(redis_url)
    try:
        await _call(redis)
        assert await redis.script_exists(_sha()) == [True]
        await redis.script_flush()
        assert (await _call(redis, label="again"))[1] == b"again"
        assert await redis.script_exists(_sha()) == [True]  # the fallback cached it again
    finally:
        await redis.aclose()


def _sha() -> str:
    import hashlib

    return hashlib.sha1(echo.lua.encode()).hexdigest()  # type: ignore[attr-defined]


def test_lua_text_binds_each_name_once():
    lua = echo.lua  # type: ignore[attr-defined]
    assert "local target = KEYS[1]" in lua
    assert "local ttl_seconds = tonumber(ARGV[2])" in lua
    assert "local ids = {}" in lua
    assert "KEYS[2]" not in lua


async def test_a_missing_or_unknown_name_is_refused_before_redis():
    redis = FakeRedis(server=FakeServer())
    with pytest.raises(TypeError, match=r"missing \['ids'\]"):
        await echo(redis, target="k", label="", ttl_seconds=1, ratio=0.0, urgent=False, cap=None, note=None)  # pyright: ignore[reportCallIssue]  # the mistake under test
    with pytest.raises(TypeError, match=r"unexpected \['extra'\]"):
        await _call(redis, extra=1)


def test_a_parameter_without_a_slot_is_refused_at_definition():
    with pytest.raises(TypeError, match="must be keyword-only"):

        @script("return 1")
        async def positional(redis, key: Key) -> int: ...

    with pytest.raises(TypeError, match="must be keyword-only"):

        @script("return 1")
        async def unmarked(redis, *, key: str) -> int: ...

    with pytest.raises(TypeError, match="must be the last"):

        @script("return 1")
        async def tail_first(redis, *, ids: Args, key: Key) -> int: ...
