"""Figure 5: 1,000 jobs in flight at once through one messenger, and what each costs it in memory.

Four workers (250 slots each) with the mock provider pacing tokens 100 ms apart, so every job
streams for about two seconds and all of them overlap. Every answer must come back whole.
"""

from __future__ import annotations

import asyncio
import gc
import time

from bench.lab import Site, rss_kib
from shared.models import ChatRequest
from worker.providers.mock import mock_reply


class Incomplete(Exception):
    """An answer came back incomplete or wrong: a correctness failure."""


async def measure(site: Site, jobs: int) -> dict[str, float]:
    runtime = site.runtime
    messages = [f"job {i} of the in-flight bench" for i in range(jobs)]
    running = peak_running = 0
    done = asyncio.Event()

    async def on_event(event, _transcript) -> None:
        nonlocal running, peak_running
        if event is None:
            return
        if event.type == "start":
            running += 1
            peak_running = max(peak_running, running)
        elif event.type in ("done", "error", "cancelled"):
            running -= 1

    peak_rss = 0
    peak_clients = 0

    async def sample() -> None:
        nonlocal peak_rss, peak_clients
        ticks = 0
        while not done.is_set():
            peak_rss = max(peak_rss, rss_kib())
            if ticks % 10 == 0:
                info = await runtime.redis.info("clients")
                peak_clients = max(peak_clients, info["connected_clients"])
            ticks += 1
            await asyncio.sleep(0.02)

    gc.collect()
    before = rss_kib()
    sampler = asyncio.create_task(sample())
    t0 = time.monotonic()
    try:
        results = await asyncio.gather(
            *(runtime.jobs.run(ChatRequest(message=m), on_event=on_event, timeout=120) for m in messages)
        )
    finally:
        elapsed = time.monotonic() - t0
        done.set()
        await sampler
    peak_rss = max(peak_rss, rss_kib())

    wrong = [
        (r, m)
        for r, m in zip(results, messages, strict=True)
        if r.status != "completed" or r.ai_response != "".join(mock_reply([{"role": "user", "content": m}]))
    ]
    if wrong:
        r, m = wrong[0]
        raise Incomplete(
            f"{len(wrong)} of {jobs} answers wrong; e.g. {r.job_id}: {r.status} {r.error or ''} "
            f"{r.ai_response!r} for {m!r}"
        )
    return {
        "complete": jobs - len(wrong),
        "peak_running": peak_running,
        "seconds": elapsed,
        "kib_per_job": (peak_rss - before) / jobs,
        "rss_before_mib": before / 1024,
        "peak_redis_clients": peak_clients,
    }
