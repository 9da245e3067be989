"""A burst of submits goes to Redis over one connection: the messenger does not open a connection
per job (1,000 MCP calls or streams started in half a second opened hundreds)."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from runtimes import runtime_for

from shared.models import ChatRequest


async def test_a_burst_of_submits_shares_one_connection_and_queues_every_job(redis_url):
    async with runtime_for(redis_url) as runtime:
        await runtime.queue.submit(
            ChatRequest(message="first"), caller="alice"
        )  # the pool's first connection
        probe = aioredis.from_url(redis_url)
        try:
            before = (await probe.info("clients"))["connected_clients"]
            ids = await asyncio.gather(
                *(runtime.queue.submit(ChatRequest(message=f"m{i}"), caller="alice") for i in range(300))
            )
            after = (await probe.info("clients"))["connected_clients"]
        finally:
            await probe.aclose()
        listed = await runtime.jobs.recent_ids(None)
    assert after - before <= 2  # (it was one connection a submit in flight: ~300)
    assert set(ids) <= set(listed) and len(set(ids)) == 300


async def test_a_submit_after_redis_forgot_its_scripts_still_queues_the_job(redis_url):
    async with runtime_for(redis_url) as runtime:
        await runtime.queue.submit(ChatRequest(message="first"), caller="alice")
        await runtime.redis.script_flush()
        job_id = await runtime.queue.submit(ChatRequest(message="again"), caller="alice")
        assert job_id in await runtime.jobs.recent_ids(None)
