"""Redis stopped for 10 s while jobs wait for a MODEL_LIMITS concurrency slot (and two hold one,
mid-stream): every job still ends completed with its whole answer, the provider never sees more
calls at once than the limit, and afterwards no slot and no waiting record is left behind."""

from __future__ import annotations

import asyncio
import json

from openai_server import eventually
from processes import start_openai_workers

from messenger.runtime import open_runtime
from shared.models import ChatRequest
from shared.settings import load_settings

MODEL = "gpt-4o-mini"
REPLY = " ".join(f"w{i}" for i in range(40))  # 10 s a call at 250 ms a token, until the outage is over


async def test_redis_down_while_jobs_wait_for_capacity_every_job_completes_and_no_slot_leaks(
    make_redis, workers, openai_server, clean_env
):
    server = make_redis(True)
    openai_server.script(reply=REPLY, token_delay=0.25, concurrency=2)  # jobs wait long enough to be seen
    start_openai_workers(
        workers, server.url, openai_server, MODEL_LIMITS=json.dumps({"*": {"concurrency": 2}}),
        WORKER_CONCURRENCY="8", OPENAI_DEFAULT_MODEL=MODEL,
    )  # fmt: skip
    settings = load_settings(
        redis_url=server.url, ai_provider="openai", openai_base_url=openai_server.base_url,
        openai_default_model=MODEL,
    )  # fmt: skip
    client = server.client()
    async with open_runtime(settings) as rt, asyncio.timeout(180):
        calls = [
            asyncio.create_task(rt.jobs.run(ChatRequest(message=f"q {i}"), timeout=150)) for i in range(8)
        ]
        await eventually(lambda: openai_server.active == 2, timeout=30)
        await eventually(lambda: len(client.keys("mcpq:capacity:waiting:*")) >= 3, timeout=30)
        await asyncio.to_thread(server.stop)
        await asyncio.sleep(10)
        await asyncio.to_thread(server.start)
        openai_server.script(token_delay=0.05)  # (the streams under way too) the rest goes quickly
        results = await asyncio.gather(*calls)
        client = server.client()
        await eventually(lambda: client.zcard(f"mcpq:capacity:slots:{MODEL}") == 0, timeout=10)
    assert [r.status for r in results] == ["completed"] * 8, [r.error for r in results]
    assert all(" ".join(r.ai_response.split()) == REPLY for r in results)
    assert openai_server.sent_429s == 0 and openai_server.max_active <= 2
    assert client.keys("mcpq:capacity:waiting:*") == []
