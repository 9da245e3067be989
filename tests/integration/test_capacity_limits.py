"""MODEL_LIMITS and upstream 429s end to end: real worker processes on a real Redis, the real openai
SDK over HTTP to the test server, which enforces its own limits (sliding-window RPM, concurrency)
and answers 429 + Retry-After, counting every 429 it sends."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest
from openai_server import eventually
from processes import ROOT, process_env, start_openai_workers

from messenger.dashboard import snapshot
from messenger.health import capacity
from messenger.runtime import open_runtime
from shared.models import ChatRequest
from shared.settings import load_settings

MODEL = "gpt-4o-mini"


def runtime(redis_url, server):
    settings = load_settings(
        redis_url=redis_url, ai_provider="openai", openai_base_url=server.base_url, openai_default_model=MODEL
    )
    return open_runtime(settings)


async def run_jobs(rt, count: int, timeout: float) -> list:
    async with asyncio.timeout(timeout):
        return await asyncio.gather(
            *(rt.jobs.run(ChatRequest(message=f"question {i}")) for i in range(count))
        )


async def test_200_jobs_at_rpm_600_over_2_workers_are_paced_not_refused(redis_url, workers, openai_server):
    # the server allows 600 a minute the way providers do: any 5 s may hold 50 (plus one of tolerance)
    openai_server.script(reply="paced answer", rpm=600, window=5, burst=1)
    limits = json.dumps({MODEL: {"rpm": 600}})
    start_openai_workers(
        workers, redis_url, openai_server, count=2, MODEL_LIMITS=limits, WORKER_CONCURRENCY="20"
    )
    async with runtime(redis_url, openai_server) as rt:
        started = time.monotonic()
        results = await run_jobs(rt, 200, timeout=120)
        took = time.monotonic() - started
    assert [r.status for r in results] == ["completed"] * 200, {r.error for r in results}
    assert openai_server.sent_429s <= 2, f"{openai_server.sent_429s} upstream 429s of 200 (over 1 %)"
    arrivals = sorted(r.at for r in openai_server.chat_requests)
    span = arrivals[-1] - arrivals[0]
    assert span >= 199 * 0.1 * 0.97, f"200 calls at 600 a minute take 19.9 s, not {span:.1f} s: not paced"
    assert took < 19.9 * 2 + 20, f"{took:.1f} s: far slower than the limit allows"
    assert len({r.worker_id for r in results}) == 2


async def test_without_limits_a_429_with_retry_after_pauses_every_worker_and_every_job_completes(
    redis_url, workers, openai_server
):
    openai_server.script(reply="eventually", rpm=120, window=1)  # 2 in any second, then 429 + Retry-After
    start_openai_workers(workers, redis_url, openai_server, count=2, RETRY_ATTEMPTS="1")
    async with runtime(redis_url, openai_server) as rt:
        results = await run_jobs(rt, 20, timeout=90)
        seen = await capacity(rt.redis, rt.settings, [])
        scraped = (await rt.metrics.scrape(rt)).decode()
        shot = await snapshot(rt)
    assert [r.status for r in results] == ["completed"] * 20, {r.error for r in results}
    assert openai_server.sent_429s >= 1, "the server never limited: the test proves nothing"
    assert len(openai_server.chat_requests) == 20 + openai_server.sent_429s, (
        "each 429 was sent once, not retried"
    )
    assert seen[MODEL]["upstream_429s"] == openai_server.sent_429s, "every 429 received is counted"
    assert f'mcpq_capacity_upstream_429s{{model="{MODEL}"}} {float(openai_server.sent_429s)}' in scraped
    assert shot["capacity"][MODEL]["upstream_429s"] == openai_server.sent_429s  # the dashboard's line


async def test_concurrency_3_against_a_3_slot_server_never_gets_a_429(redis_url, workers, openai_server):
    openai_server.script(reply="one two three four five six seven eight", token_delay=0.02, concurrency=3)
    limits = json.dumps({"*": {"concurrency": 3}})
    start_openai_workers(workers, redis_url, openai_server, count=2, MODEL_LIMITS=limits)
    async with runtime(redis_url, openai_server) as rt:
        results = await run_jobs(rt, 30, timeout=90)
    assert [r.status for r in results] == ["completed"] * 30, {r.error for r in results}
    assert openai_server.sent_429s == 0
    assert openai_server.max_active == 3


@pytest.mark.parametrize(("retry_after", "ending"), [(3600, "failed"), ("soon", "completed")])
async def test_a_long_retry_after_fails_the_job_at_once_and_junk_one_backs_off(
    redis_url, workers, openai_server, retry_after, ending
):
    """3600 s outlasts JOB_TIMEOUT_SECONDS: the job fails at once, naming the cool-down; a junk
    Retry-After is ignored and the model backs off (1 s) instead."""
    openai_server.script(status=429, failures=1, retry_after=retry_after)
    start_openai_workers(workers, redis_url, openai_server, JOB_TIMEOUT_SECONDS="20")
    async with runtime(redis_url, openai_server) as rt:
        started = time.monotonic()
        result = (await run_jobs(rt, 1, timeout=60))[0]
        took = time.monotonic() - started
        seen = await capacity(rt.redis, rt.settings, [])
    assert result.status == ending, result.error
    assert took < 10
    if ending == "failed":
        assert "429" in (result.error or "") and "JOB_TIMEOUT_SECONDS=20" in (result.error or "")
        assert seen[MODEL]["cool_down_s"] > 3000, "the cool-down holds for every later job too"


async def test_a_worker_killed_while_holding_a_slot_gives_it_back_within_its_lease(
    redis_url, workers, openai_server
):
    reply = " ".join(f"w{i}" for i in range(40))
    openai_server.script(reply=reply, token_delay=0.05, concurrency=1)  # 2 s a call, one at a time
    limits = json.dumps({"*": {"concurrency": 1}})
    procs = start_openai_workers(
        workers, redis_url, openai_server, count=2, MODEL_LIMITS=limits, WORKER_LEASE_SECONDS="2"
    )
    async with runtime(redis_url, openai_server) as rt:
        first = asyncio.create_task(run_jobs(rt, 1, timeout=60))
        await eventually(lambda: openai_server.active == 1, timeout=20)

        async def running_pid():
            beats = [json.loads(await rt.redis.get(k)) async for k in rt.redis.scan_iter("mcpq:worker:*")]
            return next((b["pid"] for b in beats if b["running_jobs"]), None)

        holder = await eventually(running_pid, timeout=10)
        victim = next(p for p in procs if p.pid == holder)
        victim.kill()
        killed_at = time.monotonic()
        second = await run_jobs(rt, 1, timeout=60)
        (first_result,) = await first
        slots = await rt.redis.zcard(f"mcpq:capacity:slots:{MODEL}")
    assert first_result.status == "completed" and first_result.attempt == 2, first_result.error
    assert second[0].status == "completed", second[0].error
    assert time.monotonic() - killed_at < 20, "the dead worker's slot came back with its lease"
    assert openai_server.sent_429s == 0 and openai_server.max_active == 1
    assert slots == 0, "no slot is left held"


@pytest.mark.parametrize(
    "value", ['{"gpt-4o": {"rpm": 0}}', "not json", '{"gpt-4o": {"rmp": 5}}', '{"*": 3}']
)
def test_junk_model_limits_stop_the_worker_with_one_line(redis_url, value):
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli"], env=process_env(redis_url, MODEL_LIMITS=value), cwd=ROOT,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "MODEL_LIMITS" in lines[0] and "rpm" in lines[0]


async def test_tpm_counts_the_streamed_usage_and_keeps_the_server_under_its_token_limit(
    redis_url, workers, openai_server
):
    reply = "one two three four five six seven eight nine ten"  # 10 tokens, plus the prompt's 2
    # 100 tokens a second, with a second's worth of burst: a call's completion is counted when it
    # ends, so up to the calls in flight (8 here) x their completions (10) may run ahead of the count
    openai_server.script(reply=reply, tpm=6000, window=5, burst=100)
    limits = json.dumps({MODEL: {"tpm": 6000}})
    start_openai_workers(
        workers, redis_url, openai_server, count=2, MODEL_LIMITS=limits, WORKER_CONCURRENCY="4"
    )
    async with runtime(redis_url, openai_server) as rt:
        results = await run_jobs(rt, 60, timeout=90)
    assert [r.status for r in results] == ["completed"] * 60, {r.error for r in results}
    assert openai_server.sent_429s == 0, openai_server.limited
    arrivals = sorted(openai_server.answered_at)
    assert arrivals[-1] - arrivals[0] >= (60 * 12 - 600) / 100, "720 tokens at 100 a second: paced by tokens"
