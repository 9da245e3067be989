"""Redis at maxmemory (noeviction) while 20 jobs stream, for longer than a job may take: every job
still ends exactly one way (one stored result, at most one ending in its stream, and what its caller
was told is that result); a job's error never carries another job's id or text; the workers say
plainly that Redis is out of memory, and they keep running."""

from __future__ import annotations

import asyncio
import json
import re

from observe import LONG_MESSAGE, Recorder, expected_text
from openai_server import eventually
from readers import stream_events
from runtimes import runtime_for

from shared import keys
from shared.events import TERMINAL
from shared.models import ChatRequest

JOBS = 20
FULL_SECONDS = 18  # past JOB_TIMEOUT_SECONDS + the publisher's grace: jobs are stopped while it lasts


async def test_redis_out_of_memory_each_job_ends_one_way_and_no_error_carries_another_jobs_data(
    redis_url, workers, clean_env, redis_server
):
    procs = workers.start(
        redis_url, count=2, MOCK_TOKEN_DELAY_MS="30", WORKER_CONCURRENCY="10", JOB_TIMEOUT_SECONDS="5",
        WORKER_LEASE_SECONDS="2",
    )  # fmt: skip
    client = redis_server.client()
    messages = [f"job{i}x {LONG_MESSAGE}" for i in range(JOBS)]
    seen = [Recorder() for _ in messages]
    try:
        async with runtime_for(redis_url) as runtime, asyncio.timeout(150):
            calls = [
                asyncio.create_task(runtime.jobs.run(ChatRequest(message=m), r, timeout=120))
                for m, r in zip(messages, seen, strict=True)
            ]
            await eventually(lambda: all(r.words(1) >= 3 for r in seen), timeout=30)
            client.config_set("maxmemory", 1)  # far below what is used: every write that adds data fails
            await asyncio.sleep(FULL_SECONDS)
            client.config_set("maxmemory", 0)
            results = await asyncio.gather(*calls)
    finally:
        client.config_set("maxmemory", 0)

    ids = [r.job_id for r in results]
    logs = workers.logs()
    for message, result in zip(messages, results, strict=True):
        stored = json.loads(client.get(keys.result(result.job_id)))["r"]
        assert (result.status, result.ai_response, result.error) == (
            stored["status"], stored["aiResponse"], stored["error"],
        ), f"{result.job_id}: the caller was told the stored result"  # fmt: skip
        endings = [e["type"] for e in stream_events(client, result.job_id) if e.get("type") in TERMINAL]
        assert len(endings) <= 1, f"{result.job_id} ended {endings}"
        if result.status == "completed":
            assert result.ai_response == expected_text(message)
            assert endings == ["done"]
        else:
            assert "Redis is out of memory" in (result.error or ""), result.error
        others = [i for i in ids if i != result.job_id]
        assert not any(i in (result.error or "") for i in others), f"{result.job_id}: {result.error}"
        assert not re.search(r"job\d+x|word\d", result.error or ""), f"{result.job_id}: {result.error}"
    assert "Redis is out of memory" in logs, "the workers say why the jobs stopped"
    assert not re.search(r"word\d", logs), "no job's text in the workers' logs"
    assert all(p.poll() is None for p in procs), f"a worker exited:\n{logs[-2000:]}"
