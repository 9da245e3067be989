"""What fair turns cost an enqueue: the messenger's enqueue script (a tenant's turn, shared/turns.py)
beside the same script scoring by time (the peer, as before turns), on one redis-server, the queue
growing to QUEUED jobs from 5 tenants. Prints Redis-side µs per enqueue (INFO commandstats) and the
sequential enqueue rate of each, and their ratio.

    uv run python bench/fair_enqueue.py
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from redis_server import RedisServer  # noqa: E402

from messenger.queue import enqueue_job  # noqa: E402
from shared import keys, turns  # noqa: E402
from shared.connection import connect  # noqa: E402
from shared.scripts import Arg, Key, script  # noqa: E402

QUEUED = 20_000


# the peer: the enqueue script as it was before fair turns (scored by the time), kept here to compare
@script("""
if redis.call('EXISTS', job, result) > 0 then return 0 end
local depth = redis.call('ZCARD', queue)
if depth >= max_depth then return -depth end
redis.call('SET', owner, caller, 'EX', owner_ttl_s)
redis.call('PSETEX', job, job_ttl_ms, payload)
redis.call('ZADD', queue, now_ms, job_id)
local kind = redis.call('TYPE', recent).ok
if kind ~= 'zset' and kind ~= 'none' then redis.call('DEL', recent) end
redis.call('ZADD', recent, now_ms, job_id)
redis.call('ZREMRANGEBYRANK', recent, 0, -recent_kept - 1)
redis.call('PUBLISH', wakeup, job_id)
return 1
""")
async def by_time(
    redis, *, job: Key, result: Key, queue: Key, recent: Key, wakeup: Key, owner: Key, job_id: Arg[str],
    payload: Arg[bytes], now_ms: Arg[int], job_ttl_ms: Arg[int], recent_kept: Arg[int], max_depth: Arg[int],
    caller: Arg[str], owner_ttl_s: Arg[int],
) -> int:  # fmt: skip
    ...


async def one_run(fair: bool) -> tuple[float, float]:
    server = RedisServer(Path(tempfile.mkdtemp()))
    server.start()
    redis = connect(server.url)
    try:
        started = time.perf_counter()
        for i in range(QUEUED):
            job_id = f"{i:032x}"
            common = dict(
                job=keys.job(job_id), result=keys.result(job_id), queue=keys.QUEUE, recent=keys.RECENT_JOBS,
                wakeup=keys.WAKEUP_CHANNEL, owner=keys.owner(job_id), job_id=job_id, payload=b"x" * 300,
                now_ms=int(time.time() * 1000), job_ttl_ms=keys.JOB_EXPIRES_MS, recent_kept=keys.RECENT_JOBS_KEPT,
                max_depth=10**7, caller=f"tenant-{i % 5}", owner_ttl_s=90_000,
            )  # fmt: skip
            if fair:
                band = turns.band("normal")
                await enqueue_job(redis, turns=keys.TURNS, band=band, band_width=turns.BAND_WIDTH, **common)
            else:
                await by_time(redis, **common)
        rate = QUEUED / (time.perf_counter() - started)
        usec = (await redis.info("commandstats"))["cmdstat_evalsha"]["usec_per_call"]
        return rate, usec
    finally:
        await redis.aclose()
        server.stop()


async def main() -> None:
    runs = {
        fair: [await one_run(fair) for _ in range(2)] for fair in (False, True)
    }  # best of two: a busy box
    (peer_rate, peer_usec), (rate, usec) = (
        (max(r for r, _ in runs[fair]), min(u for _, u in runs[fair])) for fair in (False, True)
    )
    print(f"queue grown to {QUEUED:,} jobs of 5 tenants, one enqueue at a time")
    print(f"  scored by time (peer): {peer_usec:6.1f} µs in Redis, {peer_rate:7.0f} enqueues/s")
    print(f"  fair turns:            {usec:6.1f} µs in Redis, {rate:7.0f} enqueues/s")
    print(f"  ratio (turns / peer):  {usec / peer_usec:6.2f}x in Redis, {rate / peer_rate:5.2f}x rate")


if __name__ == "__main__":
    asyncio.run(main())
