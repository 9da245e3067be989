"""Scale-out: 4 worker processes on one Redis, 400 jobs from 2 messenger processes.

Every job runs exactly once, the work is spread across the workers, every answer is whole. The jobs
stream for a while (10 ms a token), so the 80 calls at a time outnumber what any three workers hold
(25 slots each): a job goes to the worker with the most free slots (shared/handoff.py), so each
worker holds its share. (Instant jobs would go to whichever worker frees its slots first: on a box
whose cores are busy, two of the four did 90 % of them, which is the hand-off working, not a spread.)
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest
from mcp import Client
from mcp_helpers import messenger_env, running_messengers
from processes import WorkerProcesses

from worker.providers.mock import mock_reply

JOBS_PER_MESSENGER = 200


@pytest.fixture
def stack(redis_url, redis_server, tmp_path):
    workers = WorkerProcesses(redis_server, tmp_path)
    workers.start(redis_url, count=4, WORKER_CONCURRENCY="25", MOCK_TOKEN_DELAY_MS="10")
    with running_messengers(tmp_path) as messengers:
        yield [messengers.http(messenger_env(redis_url)) for _ in range(2)]
    workers.stop_all()


async def ask_many(url: str, prefix: str) -> list[dict]:
    limit = asyncio.Semaphore(40)

    async def ask(client: Client, i: int) -> dict:
        async with limit:
            result = await client.call_tool("send_message_to_ai", {"message": f"{prefix} job {i}"})
        return {"prompt": f"{prefix} job {i}", **result.structured_content}

    async with Client(url) as client:
        return await asyncio.gather(*(ask(client, i) for i in range(JOBS_PER_MESSENGER)))


async def test_400_jobs_from_2_messengers_run_once_each_spread_over_4_workers(stack, redis_server):
    async with asyncio.timeout(240):
        batches = await asyncio.gather(*(ask_many(m.url, f"m{n}") for n, m in enumerate(stack)))
    results = [r for batch in batches for r in batch]
    assert len(results) == 2 * JOBS_PER_MESSENGER
    assert len({r["jobId"] for r in results}) == len(results)
    for r in results:
        assert r["status"] == "completed"
        assert r["aiResponse"] == "".join(mock_reply([{"role": "user", "content": r["prompt"]}]))

    client = redis_server.client()
    for r in results:  # exactly one start (one run) and one ending per job
        events = [json.loads(f[b"event"]) for _, f in client.xrange(f"mcpq:stream:{r['jobId']}")]
        assert [e["type"] for e in events].count("start") == 1, r["jobId"]
        assert sum(e["type"] in ("done", "error", "cancelled") for e in events) == 1, r["jobId"]
    per_worker = Counter(r["workerId"] for r in results)
    assert len(per_worker) == 4, per_worker  # every worker did some of the work
    assert min(per_worker.values()) >= 20, per_worker
