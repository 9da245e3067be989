"""Figure 3: jobs per second through the queue (mock provider, no delay, 2 worker processes).

The bench enqueues N jobs as fast as a bounded number of concurrent calls allows, and the clock
stops when the queue is empty (arq removes a job from it in the same MULTI that stores its
result). Then every result is read back and must say "completed".
"""

from __future__ import annotations

import asyncio
import time

from arq.jobs import deserialize_result

from bench.lab import Site, cpu_seconds
from messenger.queue import new_job_id
from shared import keys
from shared.models import ChatRequest
from shared.serializer import deserialize

REQUEST = ChatRequest(message="ping")
ENQUEUERS = 32  # concurrent enqueue calls


class Unfinished(Exception):
    """A job did not complete: a correctness failure."""


async def measure(site: Site, jobs: int) -> dict[str, float]:
    runtime = site.runtime
    redis = runtime.redis
    if await redis.zcard(keys.QUEUE):
        raise Unfinished(f"{site.name}: the queue is not empty before the run")
    job_ids = [new_job_id() for _ in range(jobs)]
    todo = iter(job_ids)
    payload = REQUEST.model_dump(exclude_none=True)

    async def enqueuer() -> None:
        for job_id in todo:
            if site.stock:
                await redis.enqueue_job("chat", payload, _job_id=job_id)
            else:
                await runtime.queue.submit(REQUEST, caller="bench", job_id=job_id)

    cpu0 = sum(cpu_seconds(pid) for pid in site.pids)
    t0 = time.monotonic()
    await asyncio.gather(*(enqueuer() for _ in range(ENQUEUERS)))
    enqueued = time.monotonic() - t0
    async with asyncio.timeout(120):
        while await redis.zcard(keys.QUEUE):  # noqa: ASYNC110 (the state lives in Redis)
            await asyncio.sleep(0.005)
    elapsed = time.monotonic() - t0
    cpu = sum(cpu_seconds(pid) for pid in site.pids) - cpu0

    statuses: dict[str, int] = {}
    for i in range(0, jobs, 500):
        for raw in await redis.mget([keys.result(j) for j in job_ids[i : i + 500]]):
            if raw is None:
                status = "missing"
            else:
                result = deserialize_result(raw, deserializer=deserialize).result
                status = result.get("status", "?") if isinstance(result, dict) else "failed"
            statuses[status] = statuses.get(status, 0) + 1
    if statuses.get("completed", 0) != jobs:
        raise Unfinished(f"{site.name}: {statuses}")
    return {
        "jobs_per_s": jobs / elapsed,
        "enqueue_per_s": jobs / enqueued,
        "worker_cpu_us_per_job": 1e6 * cpu / jobs,
    }
