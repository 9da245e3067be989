"""worker/capacity.py against a real redis-server: the admission script (GCRA pacing, token
schedule, leased slots, cool-downs), junk in its keys, and Capacity.turn's waits and 429 handling."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from openai_server import eventually

from shared import keys
from shared.connection import connect
from shared.errors import ProviderError, RateLimited
from shared.events import TokenUsage
from shared.settings import load_settings
from worker.capacity import Capacity, _cool_down, _give_back, _take, retry_after_seconds
from worker.providers.base import ModelCall, StreamEnd

MODEL = "gpt-test"


@pytest.fixture
async def redis(redis_url):
    client = connect(redis_url)
    yield client
    await client.aclose()


async def take(redis, *, holder="h1", rpm=None, tpm=None, cost=0, concurrency=None, lease_ms=10_000):
    verdict, wait = await _take(
        redis, cooldown=keys.capacity("cooldown", MODEL), rate=keys.capacity("rpm", MODEL),
        tokens=keys.capacity("tpm", MODEL), slots=keys.capacity("slots", MODEL), models=keys.CAPACITY_MODELS,
        model=MODEL, rpm=rpm, tpm=tpm, cost=cost, concurrency=concurrency, holder=holder, lease_ms=lease_ms,
        grace_ms=0.0, tpm_horizon=86_400_000,
    )  # fmt: skip
    return verdict.decode(), int(wait)


async def cool(redis, given_ms=None) -> int:
    return await _cool_down(
        redis, cooldown=keys.capacity("cooldown", MODEL), strikes=keys.capacity("strikes", MODEL),
        models=keys.CAPACITY_MODELS, counted=keys.CAPACITY_429S, mine=keys.capacity_cooled(uuid.uuid4().hex),
        model=MODEL, channel=keys.CAPACITY_CHANNEL, given_ms=given_ms, backoff_ms=1000, backoff_max_ms=60_000,
        mine_ttl=60,
    )  # fmt: skip


async def test_rpm_paces_one_call_per_interval_not_a_burst(redis):
    assert await take(redis, rpm=600) == ("ok", 0)
    verdict, delay = await take(redis, rpm=600)
    assert verdict == "ok" and 40 <= delay <= 100, "rpm 600: the next turn is 100 ms later, taken ahead"
    verdict, wait = await take(redis, rpm=600)
    assert verdict == "rpm" and 40 <= wait <= 100, "two turns ahead: wait until the next is one interval off"
    await asyncio.sleep(wait / 1000)
    verdict, delay = await take(redis, rpm=600)
    assert verdict == "ok" and delay <= 100


async def test_tpm_counts_the_estimate_and_settles_with_the_real_usage(redis):
    assert await take(redis, tpm=6000, cost=200) == ("ok", 0)  # 200 tokens at 100 a second: 2 s
    verdict, wait = await take(redis, tpm=6000, cost=10)
    assert verdict == "tpm" and 1500 <= wait <= 2000
    await _give_back(
        redis, slots=keys.capacity("slots", MODEL), tokens=keys.capacity("tpm", MODEL),
        channel=keys.CAPACITY_CHANNEL, model=MODEL, holder=None, tpm=6000, delta=-150,
    )  # fmt: skip  # it used 50 tokens: 0.5 s, not 2 s
    verdict, wait = await take(redis, tpm=6000, cost=10)
    assert verdict == "tpm" and 100 <= wait <= 500


async def test_concurrency_slots_are_leased_released_and_wake_the_waiters(redis):
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.CAPACITY_CHANNEL)
    assert (await take(redis, holder="a", concurrency=2))[0] == "ok"
    assert (await take(redis, holder="b", concurrency=2))[0] == "ok"
    assert (await take(redis, holder="c", concurrency=2))[0] == "concurrency"
    released = await _give_back(
        redis, slots=keys.capacity("slots", MODEL), tokens=keys.capacity("tpm", MODEL),
        channel=keys.CAPACITY_CHANNEL, model=MODEL, holder="a", tpm=None, delta=0,
    )  # fmt: skip
    assert released == 1
    message = None
    async with asyncio.timeout(5):
        while message is None or message["type"] != "message":
            message = await pubsub.get_message(timeout=1)
    assert message["data"] == f"free {MODEL}".encode()
    assert (await take(redis, holder="c", concurrency=2))[0] == "ok"
    await pubsub.aclose()


async def test_a_dead_holders_slot_comes_back_when_its_lease_ends(redis):
    assert (await take(redis, holder="killed", concurrency=1, lease_ms=300))[0] == "ok"
    verdict, wait = await take(redis, holder="next", concurrency=1)
    assert verdict == "concurrency" and wait <= 300
    await asyncio.sleep(wait / 1000 + 0.02)
    assert (await take(redis, holder="next", concurrency=1))[0] == "ok"


async def test_a_429_cools_the_model_down_and_a_shorter_one_never_shortens_it(redis):
    assert 1500 <= await cool(redis, 2000) <= 2000
    assert await cool(redis, 100) > 1000, "a later, shorter Retry-After keeps the longer cool-down"
    verdict, wait = await take(redis)
    assert verdict == "cooldown" and 1000 <= wait <= 2000
    assert await redis.hget(keys.CAPACITY_429S, MODEL) == b"2"


async def test_429s_without_retry_after_back_off_exponentially(redis):
    assert 500 <= await cool(redis) <= 1000
    await redis.delete(keys.capacity("cooldown", MODEL))
    assert 1500 <= await cool(redis) <= 2000
    await redis.delete(keys.capacity("cooldown", MODEL))
    assert 3500 <= await cool(redis) <= 4000


@pytest.mark.parametrize(
    "junk",
    [
        {"rpm": ("hash", {"a": "b"}), "tpm": ("string", "not a number"), "slots": ("list", ["x"])},
        {"rpm": ("string", "1e300"), "tpm": ("string", "nan"), "slots": ("string", "x")},
        {"rpm": ("string", "-5"), "tpm": ("set", ["a"]), "strikes": ("string", "lots")},
    ],
)
async def test_junk_in_its_keys_reads_as_no_state_not_an_error(redis, junk):
    for part, (kind, value) in junk.items():
        key = keys.capacity(part, MODEL)
        if kind == "hash":
            await redis.hset(key, mapping=value)
        elif kind == "string":
            await redis.set(key, value)
        elif kind == "list":
            await redis.rpush(key, *value)
        else:
            await redis.sadd(key, *value)
    await redis.set(keys.CAPACITY_MODELS, "junk")
    await redis.set(keys.CAPACITY_429S, "junk")
    await redis.set(keys.capacity("cooldown", MODEL), "forever")  # no expiry: set by hand
    assert await take(redis, rpm=600, tpm=6000, cost=10, concurrency=2) == ("ok", 0)
    assert await cool(redis) > 0
    assert await redis.hget(keys.CAPACITY_429S, MODEL) == b"1"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after": "3600"}, 3600.0),
        ({"retry-after": "99999999999"}, 3600.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "-3"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "inf"}, None),
        ({}, None),
    ],
)
def test_retry_after_is_read_capped_and_junk_ignored(headers, expected):
    assert retry_after_seconds(headers) == expected


def test_a_retry_after_date_is_read_as_seconds_from_now():
    from email.utils import formatdate

    assert 8 <= (retry_after_seconds({"retry-after": formatdate(time.time() + 10, usegmt=True)}) or 0) <= 10


def capacity(**limits) -> Capacity:
    return Capacity(load_settings(redis_url="redis://x", model_limits={MODEL: limits} if limits else {}))


CALL = ModelCall(
    model=MODEL, messages=[{"role": "user", "content": "hello there"}], temperature=0, max_tokens=5
)
END = StreamEnd(
    model=MODEL, finish_reason="stop", usage=TokenUsage(prompt_tokens=3, completion_tokens=2, total_tokens=5)
)


async def test_a_429_makes_the_call_wait_the_cool_down_and_go_again(redis):
    cap, calls = capacity(), []

    async def stream():
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise ProviderError("429", retryable=True, status=429, retry_after=0.3)
        return END

    end = await cap.turn(
        redis, "job1", CALL, deadline=time.monotonic() + 10, stream=stream, streamed=lambda: False
    )
    assert end is END and len(calls) == 2
    assert calls[1] - calls[0] >= 0.28, "it waited out the Retry-After"
    assert cap.received_429s == {MODEL: 1}
    assert await redis.exists(keys.capacity_waiting("job1")) == 0, "no waiting record is left behind"


async def test_a_cool_down_past_the_deadline_fails_at_once_naming_it(redis):
    cap = capacity()

    async def stream():
        raise ProviderError("429", retryable=True, status=429, retry_after=3600)

    started = time.monotonic()
    with pytest.raises(RateLimited) as caught:
        await cap.turn(
            redis, "job2", CALL, deadline=time.monotonic() + 5, stream=stream, streamed=lambda: False
        )
    assert time.monotonic() - started < 2
    assert caught.value.upstream and caught.value.limit == "cooldown" and caught.value.model == MODEL
    assert "429" in caught.value.message and "JOB_TIMEOUT_SECONDS" in caught.value.message


async def test_a_concurrency_wait_shows_in_redis_and_ends_at_the_deadline(redis):
    cap = capacity(concurrency=1)
    holding = asyncio.Event()
    release = asyncio.Event()

    async def slow():
        holding.set()
        await release.wait()
        return END

    first = asyncio.create_task(
        cap.turn(redis, "a", CALL, deadline=time.monotonic() + 10, stream=slow, streamed=lambda: False)
    )
    await holding.wait()
    second = asyncio.create_task(
        cap.turn(redis, "b", CALL, deadline=time.monotonic() + 10, stream=slow, streamed=lambda: False)
    )
    await eventually(lambda: redis.exists(keys.capacity_waiting("b")), timeout=5)
    assert cap.waiting_by_model() == {MODEL: 1}
    started = time.monotonic()
    release.set()
    assert await first is END and await second is END
    assert time.monotonic() - started < 1, "woken by the release, not by a poll"
    with pytest.raises(RateLimited, match="MODEL_LIMITS concurrency=1"):
        other = capacity(concurrency=1)
        await asyncio.gather(
            other.turn(redis, "c", CALL, deadline=time.monotonic() + 10, stream=lambda: asyncio.sleep(1, END),
                       streamed=lambda: False),
            other.turn(redis, "d", CALL, deadline=time.monotonic() + 0.3, stream=slow, streamed=lambda: False),
        )  # fmt: skip


async def test_a_429_after_text_was_streamed_is_not_retried(redis):
    cap = capacity()

    async def stream():
        raise ProviderError("429", retryable=True, status=429, retry_after=0.1)

    with pytest.raises(ProviderError) as caught:
        await cap.turn(redis, "j", CALL, deadline=time.monotonic() + 5, stream=stream, streamed=lambda: True)
    assert not isinstance(caught.value, RateLimited)


async def test_with_a_fallback_a_429_moves_on_at_once_and_a_full_model_after_a_second(redis):
    cap = capacity(concurrency=1)

    async def limited():
        raise ProviderError("429", retryable=True, status=429, retry_after=30)

    with pytest.raises(RateLimited, match="MODEL_FALLBACKS") as caught:
        await cap.turn(redis, "f1", CALL, deadline=time.monotonic() + 60, stream=limited, streamed=lambda: False,
                       fallback=True)  # fmt: skip
    assert caught.value.upstream and (caught.value.wait or 0) > 25
    await redis.delete(keys.capacity("cooldown", MODEL))

    holding, release = asyncio.Event(), asyncio.Event()

    async def slow():
        holding.set()
        await release.wait()
        return END

    first = asyncio.create_task(
        cap.turn(redis, "f2", CALL, deadline=time.monotonic() + 60, stream=slow, streamed=lambda: False)
    )
    await holding.wait()
    started = time.monotonic()
    with pytest.raises(RateLimited, match="concurrency=1"):
        await cap.turn(redis, "f3", CALL, deadline=time.monotonic() + 60, stream=slow, streamed=lambda: False,
                       fallback=True)  # fmt: skip
    assert 0.9 <= time.monotonic() - started < 5, "it waited its patience, not the job's deadline"
    release.set()
    assert await first is END


async def test_a_429_whose_cool_down_was_sent_again_after_its_reply_was_lost_counts_once(redis_server, redis):
    """redis-py sends the cool-down again when the connection drops with its reply on the way: the
    429 is counted once, and the model cools down for one 429 in a row (1 s), not two (2 s)."""
    import hashlib

    from relays import losing_one_reply

    redis_server.client().script_load(_cool_down.lua)  # type: ignore[attr-defined]  # (EVALSHA finds it)
    marker = hashlib.sha1(_cool_down.lua.encode()).hexdigest().encode()  # type: ignore[attr-defined]
    async with losing_one_reply(redis_server.port, marker) as port:
        relayed = connect(f"redis://127.0.0.1:{port}/0")
        try:
            waits = await capacity()._upstream_429(
                relayed, MODEL, ProviderError("429", retryable=True, status=429)
            )
        finally:
            await relayed.aclose()
    assert await redis.hget(keys.CAPACITY_429S, MODEL) == b"1", "one 429 counted twice"
    assert await redis.get(keys.capacity("strikes", MODEL)) == b"1"
    assert 0.5 <= waits <= 1.0, "the cool-down of a second 429 in a row"


def test_a_cool_downs_own_key_outlives_redis_py_sending_it_again():
    """A cool-down whose reply was lost is sent again for as long as a worker's redis-py retries last
    (SERVICE: 8 retries, each reconnect retried the same way: ~80 s measured, README Redis restarts):
    a Redis that restarts with its data after a minute would run it again once its own key had
    expired, counting the 429 twice and cooling the model down afresh for a 429 long past."""
    from shared.connection import SERVICE

    waits = sum(SERVICE.delay(failures) for failures in range(1, SERVICE.retries + 1))
    resent_within = (SERVICE.retries + 1) * waits + waits  # each try's reconnect waits as long, then the try
    assert keys.CAPACITY_COOLED_SECONDS > resent_within, resent_within
