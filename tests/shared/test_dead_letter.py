"""The dead-letter place: a buried entry leaves the queue with its keys, is listed with its reason,
is bounded in number, and a requeue puts the job back exactly as it was queued."""

from __future__ import annotations

import json

import pytest

from shared import dead_letter, keys, turns
from shared.errors import InvalidRequest, JobNotFound

pytestmark = pytest.mark.anyio
RAW = b'{"f":"chat","a":[{"message":"hi"}],"k":{},"t":"abc","et":0}'


async def queue(redis, job_id: str, raw: bytes) -> None:
    await redis.set(keys.job(job_id), raw)
    await redis.set(keys.retry(job_id), b"2")
    await redis.set(keys.in_progress(job_id), b"1")
    await redis.zadd(keys.QUEUE, {job_id: 0})
    await redis.hset(keys.BUDGET_RESERVED, job_id, b"0.5")


async def test_a_buried_entry_leaves_the_queue_and_ends_with_one_error(redis):
    await queue(redis, "x", RAW)
    assert await dead_letter.bury(redis, b"x", RAW, "bad tries", function="chat", attempt=3)
    assert not await dead_letter.bury(redis, b"x", RAW, "bad tries"), "a second worker records nothing"
    assert await redis.zcard(keys.QUEUE) == 0
    assert not await redis.exists(keys.job("x"), keys.retry("x"), keys.in_progress("x"))
    assert await redis.hget(keys.BUDGET_RESERVED, "x") is None, "its budget hold is released"
    (entry,) = await dead_letter.list_dead(redis)
    assert (entry.job_id, entry.reason, entry.raw, entry.function) == ("x", "bad tries", RAW.decode(), "chat")
    events = [json.loads(f[b"event"]) for _, f in await redis.xrange(keys.stream("x"))]
    assert [(e["type"], e["attempt"], e["seq"], e["error"]) for e in events] == [
        ("error", 3, 0, "job not run: bad tries")
    ]
    result = json.loads(await redis.get(keys.result("x")))["r"]
    assert (result["status"], result["error"]) == ("failed", "job not run: bad tries")


async def test_requeue_puts_the_job_back_as_it_was_and_forgets_its_dead_ending(redis):
    await queue(redis, "x", RAW)
    await dead_letter.bury(redis, b"x", RAW, "bad tries")
    await dead_letter.requeue(redis, "x")
    assert await redis.get(keys.job("x")) == RAW
    assert turns.is_turn(await redis.zscore(keys.QUEUE, "x"))  # a fair turn, not behind every banded job
    assert not await redis.exists(keys.result("x"), keys.stream("x"), keys.retry("x"))
    assert await dead_letter.list_dead(redis) == []
    with pytest.raises(JobNotFound):
        await dead_letter.requeue(redis, "x")


async def test_an_entry_too_big_to_keep_whole_is_not_requeued_and_drop_forgets_it(redis):
    big = b'{"f":"chat","a":[{"message":"' + b"x" * 5000 + b'"}]}'
    await queue(redis, "big", big)
    await dead_letter.bury(redis, b"big", big, "too big")
    (entry,) = await dead_letter.list_dead(redis)
    assert entry.raw_truncated and len(entry.raw) == dead_letter.RAW_KEPT
    with pytest.raises(InvalidRequest, match="cannot be requeued"):
        await dead_letter.requeue(redis, "big")
    await dead_letter.drop(redis, "big")
    assert await dead_letter.list_dead(redis) == []


async def test_only_the_newest_entries_are_kept(redis, monkeypatch):
    monkeypatch.setattr(keys, "DEAD_LETTER_KEPT", 3)
    for i in range(5):
        await queue(redis, f"j{i}", b"junk")
        await dead_letter.bury(redis, f"j{i}".encode(), b"junk", "not JSON")
    assert sorted(e.job_id for e in await dead_letter.list_dead(redis)) == ["j2", "j3", "j4"]
    assert await redis.zcard(keys.DEAD_LETTER_ORDER) == 3


async def test_an_id_that_is_not_text_is_recorded_without_an_ending(redis):
    await redis.zadd(keys.QUEUE, {b"\xff\xfe": 0})
    await dead_letter.bury(redis, b"\xff\xfe", None, "the job id is not UTF-8 text")
    (entry,) = await dead_letter.list_dead(redis)
    assert entry.job_id == "\\xff\\xfe" and await redis.zcard(keys.QUEUE) == 0


def test_the_script_names_the_same_keys_as_shared_keys():
    lua = dead_letter._bury.lua  # type: ignore[attr-defined]
    for prefix in (keys.JOB_PREFIX, keys.RETRY_PREFIX, keys.IN_PROGRESS_PREFIX, keys.RESULT_PREFIX,
                   keys.STREAM_PREFIX, keys.EVENTS_PREFIX):  # fmt: skip
        assert f"'{prefix}' .. raw_id" in lua
