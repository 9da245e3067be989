"""Recent jobs list newest first in the order they were enqueued, even when many share a millisecond
(list_jobs, completions and the dashboard all read `mcpq:jobs:recent`)."""

from __future__ import annotations

from runtimes import runtime_for

from shared.models import ChatRequest


async def test_jobs_enqueued_within_one_millisecond_list_in_enqueue_order(redis_url):
    async with runtime_for(redis_url) as runtime:
        ids = [await runtime.queue.submit(ChatRequest(message=f"m{i}"), caller="alice") for i in range(300)]
        listed = await runtime.jobs.recent_ids(None)
    assert listed == ids[::-1]  # no worker runs: every job is still queued
