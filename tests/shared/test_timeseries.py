"""The dashboard's history: jobs that ended add up per minute, percentiles come from the histogram,
the keys stay bounded, and junk in them is skipped instead of breaking a chart or a job."""

from __future__ import annotations

import logging

from shared import keys, timeseries

NOW = 1_800_000_000.0  # a fixed minute boundary: 30_000_000 * 60
MINUTE = int(NOW // 60)


async def ended(
    redis,
    n: int,
    *,
    at: float = NOW,
    status="completed",
    model="gpt-x",
    ttft: float | None = 0.4,
    cost: float | None = 0.001,
):
    for _ in range(n):
        await timeseries.record_job(
            redis, status=status, model=model, prompt_tokens=10, completion_tokens=30,
            cost=cost, first_token_s=ttft, now=at,
        )  # fmt: skip


async def test_jobs_tokens_cost_and_first_token_times_add_up_per_minute(redis):
    await ended(redis, 90, ttft=0.4)
    await ended(redis, 10, ttft=8.0)  # the slow tenth: p95 falls among them, p50 does not
    await ended(redis, 3, status="failed", model="claude-y", cost=None, ttft=None)
    await ended(redis, 6, at=NOW - 120, model="claude-y", cost=0.5)
    series = await timeseries.read(redis, minutes=5, now=NOW + 30)
    assert series["start"][-1] == MINUTE * 60 and series["step_seconds"] == 60
    assert series["jobs_per_second"]["completed"][-1] == round(100 / 60, 4)
    assert series["jobs_per_second"]["failed"][-1] == round(3 / 60, 4)
    assert series["tokens_per_second"][-1] == round(103 * 30 / 60, 3)
    assert 0.3 <= series["ttft_p50"][-1] <= 0.5 and 7.5 <= series["ttft_p95"][-1] <= 10
    assert series["ttft_p50"][-2] is None  # no job in that minute: a gap, not a zero
    assert series["cost_usd"]["gpt-x"][-1] == 0.1 and series["cost_usd"]["claude-y"][-3] == 3.0
    assert list(series["cost_usd"]) == ["claude-y", "gpt-x"]  # the dearest first


async def test_minutes_are_summed_into_wider_buckets(redis):
    for minute in range(6):
        await ended(redis, 2, at=NOW - minute * 60)
    series = await timeseries.read(redis, minutes=6, step=3, now=NOW)
    assert series["jobs_per_second"]["completed"] == [round(6 / 180, 4)] * 2
    assert series["step_seconds"] == 180 and len(series["start"]) == 2


async def test_queue_depth_is_the_longest_queue_seen_in_the_minute(redis):
    await redis.zadd(keys.QUEUE, {f"job{i}": i for i in range(7)})
    await timeseries.sample_depth(redis, now=NOW)
    await redis.zremrangebyrank(keys.QUEUE, 0, 4)
    await timeseries.sample_depth(redis, now=NOW)
    assert (await timeseries.read(redis, minutes=2, now=NOW))["queue_depth"] == [None, 7]


async def test_every_minute_expires_so_the_history_stays_bounded(redis):
    await ended(redis, 1)
    await timeseries.sample_depth(redis, now=NOW + 1)
    ttl = await redis.ttl(keys.series(MINUTE))
    assert 0 < ttl <= keys.SERIES_KEPT_SECONDS


async def test_junk_in_the_history_is_skipped_and_named(redis, caplog):
    caplog.set_level(logging.WARNING)
    await redis.set(keys.series(MINUTE - 1), "not a hash")  # a whole minute of junk
    await redis.hset(keys.series(MINUTE), mapping={
        "ended:cancelled": "lots", "ended:<script>": 5, "cost:<img src=x>": "1e400", "ttft:99": 3,
        "ttft:-1": 2, "depth_max": "-4", "completion_tokens": "1e30", "junk": "x",
    })  # fmt: skip
    await ended(redis, 1, ttft=0.02)
    series = await timeseries.read(redis, minutes=2, now=NOW)
    assert series["jobs_per_second"]["completed"] == [0, round(1 / 60, 4)]
    assert series["jobs_per_second"]["cancelled"] == [0, 0]
    assert set(series["jobs_per_second"]) == {"completed", "failed", "cancelled"}
    assert series["cost_usd"] == {"gpt-x": [0.0, 0.001]} and series["queue_depth"] == [None, None]
    assert series["tokens_per_second"] == [
        0,
        0,
    ]  # 1e30 is junk, not a count and series["ttft_p95"][-1] <= 0.025
    assert keys.series(MINUTE - 1) in caplog.text

    await timeseries.record_job(  # a write into the junk minute: skipped, named, not raised
        redis, status="completed", model="m", prompt_tokens=1, completion_tokens=1, cost=0.1,
        first_token_s=0.1, now=NOW - 60,
    )  # fmt: skip
    await timeseries.sample_depth(redis, now=NOW - 60)
    await redis.set(keys.QUEUE, "junk queue")
    await timeseries.sample_depth(redis, now=NOW)
    assert await redis.get(keys.series(MINUTE - 1)) == b"not a hash"
    assert keys.QUEUE in caplog.text


async def test_a_job_sent_again_after_its_reply_was_lost_is_added_to_its_minute_once(redis_url, redis_server):
    """redis-py sends a command again when its connection drops with the reply on the way (a
    failover, a network blip): the job's ending is in the dashboard's minute once, not twice."""
    from relays import losing_one_reply

    from shared.connection import connect

    async with losing_one_reply(redis_server.port, b"MARKED") as port:
        redis = connect(f"redis://127.0.0.1:{port}/0")
        try:
            await timeseries.record_job(
                redis, status="completed", model="MARKED", prompt_tokens=10, completion_tokens=30,
                cost=0.001, first_token_s=0.4, now=NOW, counted=keys.usage_counted("sent-twice"), counted_ttl=60,
            )  # fmt: skip
            minute = await redis.hgetall(keys.series(MINUTE))
        finally:
            await redis.aclose()
    assert (minute[b"ended:completed"], minute[b"completion_tokens"]) == (b"1", b"30"), minute
