"""Figure 1: enqueue → job start, and what an idle worker costs.

t0 is taken just before the messenger's enqueue (already subscribed to the job's events); the job
start is the `start` event's `ts`, stamped by the worker when the job's function begins (same clock;
bench/peers/queues.py's job stamps taskiq's and SAQ's start on its first line, the same point).
"""

from __future__ import annotations

import asyncio
import random
import time

from bench.lab import Site, cpu_seconds
from bench.stats import median, ms, percentile
from bench.stock_arq_worker import STOCK_POLL_DELAY
from messenger.collector import Transcript, follow_events
from messenger.queue import new_job_id
from shared.models import ChatRequest

REQUEST = ChatRequest(message="ping")


class Incomplete(Exception):
    """A job did not complete: a correctness failure, not a slow figure."""


async def _sample(site: Site, job_id: str) -> tuple[float, float, float]:
    """(enqueue call, enqueue → start, enqueue → messenger sees start), in seconds."""
    runtime = site.runtime
    async with runtime.hub.follow(job_id) as live:
        t0 = time.time()
        if site.stock:  # arq's own enqueue: WATCH/MULTI, no wake-up
            await runtime.redis.enqueue_job("chat", REQUEST.model_dump(exclude_none=True), _job_id=job_id)
        else:
            await runtime.queue.submit(REQUEST, caller="bench", job_id=job_id)
        enqueued = time.time() - t0
        start = seen = None
        transcript = Transcript(job_id)
        async with asyncio.timeout(10):
            async for event in follow_events(runtime.redis, transcript, live):
                if event is not None and event.type == "start" and seen is None:
                    seen, start = time.time() - t0, event.ts - t0
    if transcript.status != "completed" or start is None:
        raise Incomplete(f"{site.name}: job {job_id} ended {transcript.status}: {transcript.error}")
    return enqueued, start, seen


async def measure(site: Site, samples: int, rng: random.Random) -> dict[str, float]:
    enqueue, start, seen = [], [], []
    for _ in range(samples):
        e, s, n = await _sample(site, new_job_id())
        enqueue.append(e)
        start.append(s)
        seen.append(n)
        await asyncio.sleep(rng.uniform(0.005, STOCK_POLL_DELAY if site.stock else 0.020))
    start_ms, seen_ms = ms(start), ms(seen)
    return {
        "start_p50": percentile(start_ms, 50),
        "start_p99": percentile(start_ms, 99),
        "seen_p50": percentile(seen_ms, 50),
        "enqueue_p50": median(ms(enqueue)),
        "samples": len(start),
    }


async def idle_cpu(pids: list[int], seconds: float) -> dict[int, float]:
    """Percent of one core each process used over an idle window."""
    await asyncio.sleep(0.3)  # let the last job's aftermath settle
    before = {pid: cpu_seconds(pid) for pid in pids}
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    wall = time.monotonic() - t0
    return {pid: 100 * (cpu_seconds(pid) - before[pid]) / wall for pid in pids}
