"""Junk in a running job's `mcpq:capacity:waiting:<id>` (wrong type, NaN, a time past year 9999,
an endless model name) never breaks `get_job` or the task's statusMessage: it reads as no wait."""

from __future__ import annotations

import asyncio

from openai_server import eventually
from processes import start_openai_workers
from test_capacity_limits import runtime

from messenger.tasks.models import status_message
from shared import keys
from shared.models import ChatRequest

JUNK = [
    ("hash", {"model": "m"}),
    ("string", '{"model": "m", "limit": "rpm", "since": 0, "until": NaN}'),
    ("string", '{"model": "m", "limit": "rpm", "since": 0, "until": 1e300}'),
    ("string", '{"model": "m", "limit": "rpm", "since": -1e300, "until": null}'),
    ("string", '{"model": "' + "m" * 100_000 + '", "limit": "rpm", "since": 0, "until": null}'),
    ("string", "[1, 2]"),
]


async def test_junk_waiting_records_read_as_no_wait(redis_url, workers, openai_server):
    openai_server.script(reply=" ".join(f"w{i}" for i in range(400)), token_delay=0.05)
    start_openai_workers(workers, redis_url, openai_server)
    async with runtime(redis_url, openai_server) as rt, asyncio.timeout(60):
        job_id = await rt.queue.submit(ChatRequest(message="slow"), caller="t")
        await eventually(lambda: openai_server.active == 1, timeout=30)
        key = keys.capacity_waiting(job_id)
        for kind, value in JUNK:
            await rt.redis.delete(key)
            if kind == "hash":
                await rt.redis.hset(key, mapping=value)
            else:
                await rt.redis.set(key, value)
            job = await rt.jobs.get(job_id)
            assert job.status == "running" and job.waiting_for is None, (kind, value[:80])
            assert status_message(job).startswith("running on "), status_message(job)
        await rt.jobs.cancel(job_id)
