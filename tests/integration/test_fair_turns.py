"""Priorities and fair turns between tenants, on a real Redis with real `worker` processes.

Start order is read from what the workers wrote (each job's `start` event, ordered by its Redis
stream id, which the one Redis server stamps), never from timing.
"""

from __future__ import annotations

import asyncio

import pytest
from runtimes import runtime_for

from shared import keys, turns
from shared.models import ChatRequest

SLOTS = 2  # 2 workers x WORKER_CONCURRENCY=1


def started_order(client, job_ids: list[str]) -> list[str]:
    """The jobs in the order their first `start` event was written."""
    stamps = {}
    for job_id in job_ids:
        for entry_id, fields in client.xrange(keys.stream(job_id)):
            if b'"type":"start"' in fields[b"event"].replace(b" ", b""):
                ms, seq = entry_id.decode().split("-")
                stamps[job_id] = (int(ms), int(seq))
                break
    assert set(stamps) == set(job_ids), "every job started"
    return sorted(job_ids, key=stamps.__getitem__)


async def submit(runtime, caller: str, n: int, **fields) -> list[str]:
    return [
        await runtime.queue.submit(ChatRequest(message=f"{caller} {i}", **fields), caller=caller)
        for i in range(n)
    ]


async def all_done(runtime, job_ids: list[str]) -> None:
    for job_id in job_ids:
        result = await runtime.jobs.wait(job_id, 60)
        assert result.status == "completed", result.error


async def test_a_late_tenant_takes_turns_with_a_backlog_already_running(
    redis_url, redis_server, workers, clean_env
):
    """A has 100 queued and being worked through; B sends 4: each of B's starts within a few of A's."""
    client = redis_server.client()
    async with runtime_for(redis_url) as runtime, asyncio.timeout(120):
        backlog = await submit(runtime, "tenant-a", 100)
        workers.start(redis_url, count=2, WORKER_CONCURRENCY="1", MOCK_TOKEN_DELAY_MS="5")
        await runtime.jobs.wait(backlog[9], 30)  # A's backlog is well under way
        late = await submit(runtime, "tenant-b", 4)
        await all_done(runtime, backlog + late)
    order = started_order(client, backlog + late)
    first_after = min(order.index(b) for b in late) - SLOTS  # the claims B's submission could not beat
    for k, job_id in enumerate(late):
        a_before = sum(1 for j in order[max(first_after, 0) : order.index(job_id)] if j in backlog)
        assert a_before <= k + 1 + SLOTS, f"B's job {k} waited for {a_before} of A's"
    assert order.index(late[-1]) < order.index(backlog[-1]) - 50, "B did not wait for A's backlog"


async def test_high_runs_before_normal_before_low(redis_url, redis_server, workers, clean_env):
    client = redis_server.client()
    async with runtime_for(redis_url) as runtime, asyncio.timeout(60):
        low = await submit(runtime, "t", 3, priority="low")
        normal = await submit(runtime, "t", 3)
        high = await submit(runtime, "u", 3, priority="high")
        workers.start(redis_url, count=1, WORKER_CONCURRENCY="1")
        await all_done(runtime, low + normal + high)
    order = started_order(client, low + normal + high)
    assert set(order[:3]) == set(high) and set(order[3:6]) == set(normal) and set(order[6:]) == set(low)


async def test_tenants_alternate_and_queue_position_counts_down(redis_url, redis_server, clean_env):
    """No worker yet: the queue's order is the turns A, B, A, B, …; get_job shows each job's place."""
    async with runtime_for(redis_url) as runtime:
        a = await submit(runtime, "a:b c/ü\x00", 5)  # a tenant name with odd characters
        b = await submit(runtime, "b", 2)
        positions = {j: (await runtime.jobs.get(j)).queue_position for j in a + b}
        # turns 0, 1 are A's and B's each (a tie goes by job id), then A's backlog
        assert positions[a[0]] in (1, 2) and positions[a[1]] in (3, 4) and positions[b[0]] in (1, 2)
        assert [positions[j] for j in a[2:]] == [5, 6, 7]
        assert sorted(positions.values()) == list(range(1, 8))
        await runtime.jobs.cancel(a[0])
        assert (await runtime.jobs.get(a[0])).queue_position is None  # cancelled: not waiting
        assert sorted([(await runtime.jobs.get(j)).queue_position for j in a[1:] + b]) == list(range(1, 7))


async def test_junk_in_the_turns_key_never_stops_a_submission(redis_url, redis_server, workers, clean_env):
    client = redis_server.client()
    client.set(keys.TURNS, "not a hash")
    async with runtime_for(redis_url) as runtime, asyncio.timeout(60):
        first = await submit(runtime, "t", 1)
        normal = turns.band("normal")
        client.hset(keys.TURNS, f"next:{normal}:t", "junk")
        client.hset(keys.TURNS, f"last:{normal}", "1e400")  # inf: out of the band
        client.hset(keys.TURNS, f"next:{normal}:u", str(normal + turns.BAND_WIDTH * 5))
        more = await submit(runtime, "t", 1) + await submit(runtime, "u", 1)
        for job_id in first + more:
            score = client.zscore(keys.QUEUE, job_id)
            assert score is not None and turns.is_turn(score) and normal <= score < normal + turns.BAND_WIDTH
        workers.start(redis_url, count=1)
        await all_done(runtime, first + more)


@pytest.mark.parametrize("priority", ["urgent", "HIGH", ""])
async def test_an_unknown_priority_is_one_clear_error(priority):
    with pytest.raises(ValueError, match="priority") as caught:
        ChatRequest(message="hi", priority=priority)  # pyright: ignore[reportArgumentType]
    assert "high" in str(caught.value)
