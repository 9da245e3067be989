"""Overload: beyond MAX_QUEUE_DEPTH a request is refused at once with a clear error instead of piling
up; and a worker never runs more jobs at once than WORKER_CONCURRENCY."""

import asyncio
import json

import pytest
from mcp import Client
from observe import ended, terminal_events
from readers import stream_events
from runtimes import runtime_for

from messenger.queue import ANONYMOUS
from messenger.server import build_server
from shared import keys
from shared.errors import QueueFull
from shared.models import ChatRequest


async def test_a_full_queue_refuses_new_jobs_at_once_and_accepts_them_again_once_drained(
    redis_url, workers, clean_env
):
    async with runtime_for(redis_url, max_queue_depth=5) as runtime, asyncio.timeout(60):
        queued = [
            await runtime.queue.submit(ChatRequest(message=f"job {i}"), caller=ANONYMOUS) for i in range(5)
        ]
        with pytest.raises(QueueFull, match="queue is full"):
            await runtime.queue.submit(ChatRequest(message="one too many"), caller=ANONYMOUS)
        async with Client(build_server(runtime)) as client:
            refused = await client.call_tool("submit_message", {"message": "one too many"})
            assert refused.is_error
            assert "queue is full" in refused.content[0].text
            assert "MAX_QUEUE_DEPTH=5" in refused.content[0].text
            assert await runtime.redis.zcard(keys.QUEUE) == 5, "refused requests were not queued"

            workers.start(redis_url)
            for job_id in queued:
                assert (await ended(runtime.jobs, job_id)).status == "completed"
            accepted = await client.call_tool("submit_message", {"message": "room again"})
            assert not accepted.is_error, accepted.content
            job_id = accepted.structured_content["jobId"]
            assert (await ended(runtime.jobs, job_id)).status == "completed"


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


async def test_a_worker_never_runs_more_jobs_at_once_than_worker_concurrency(
    redis_url, workers, clean_env, redis_server
):
    workers.start(redis_url, WORKER_CONCURRENCY="2", MOCK_TOKEN_DELAY_MS="25", WORKER_LEASE_SECONDS="1.5")
    client = redis_server.client()
    (beat_key,) = client.scan_iter(keys.WORKER_PREFIX + "*")
    seen_running: list[int] = []

    async def watch_heartbeat():
        while True:
            seen_running.append(len(json.loads(client.get(beat_key))["running_jobs"]))
            await asyncio.sleep(0.1)

    async with runtime_for(redis_url) as runtime, asyncio.timeout(60):
        watcher = asyncio.create_task(watch_heartbeat())
        requests = [ChatRequest(message=f"slow job {i} " + "word " * 30) for i in range(6)]
        job_ids = [await runtime.queue.submit(r, caller=ANONYMOUS) for r in requests]
        results = [await ended(runtime.jobs, job_id, timeout=40) for job_id in job_ids]
        watcher.cancel()

    assert {r.status for r in results} == {"completed"}
    assert max(seen_running) == 2, f"the heartbeat showed {sorted(set(seen_running))} jobs running"
    intervals = []
    for result in results:
        events = stream_events(client, result.job_id)
        (end,) = terminal_events(events)
        intervals.append((events[0]["ts"], end["ts"]))
    assert max_overlap(intervals) == 2, "never more than WORKER_CONCURRENCY=2 jobs between start and end"
