"""The endings of the jobs that end together: one MULTI, their counts one script call and their
endings one more (worker/endings.py), each job's own reply; and a job's usual ending waits on that
write's future alone, with no task of its own."""

from __future__ import annotations

import asyncio
import time

from shared import keys
from shared.handoff import offer
from shared.settings import load_settings
from worker import accounting
from worker.endings import end_jobs
from worker.job import WorkerState
from worker.providers.mock import MockProvider
from worker.publisher import EventWriter
from worker.run import result_json
from worker.runner import build_worker

JOBS = 20


def _worker(redis_url: str):
    settings = load_settings(redis_url=redis_url, worker_lease_seconds=60)
    worker = build_worker(settings, handle_signals=False)
    state = WorkerState(
        settings=settings, provider=MockProvider(), worker_id="me", writer=EventWriter(worker.pool)
    )
    state.leases_renewed_at = time.monotonic()
    worker.ctx["mcpq"], worker._me = state, offer("me", 60_000)
    return worker, state


async def _leased(worker, state, name: str) -> tuple[list[str], list[dict]]:
    """JOBS jobs leased to `worker`, each with its usage count."""
    redis, ids, counts = worker.pool, [], []
    for n in range(JOBS):
        job_id = f"{name}-{n}-{time.monotonic_ns()}"
        await redis.set(keys.job(job_id), b"{}")
        await redis.zadd(keys.QUEUE, {job_id: 1})
        await redis.set(keys.in_progress(job_id), worker._me)
        result = _result(job_id)
        counts.append(await accounting.prepare(redis, result, {"message": "hi"}, history_ttl=60))
        state.running[job_id] = 1
        ids.append(job_id)
    return ids, counts


def _result(job_id: str) -> dict:
    from shared.events import TokenUsage

    return result_json(
        job_id=job_id, status="completed", ai_response="an answer", model="mock-1", fallback_from=None,
        usage=TokenUsage(prompt_tokens=3, completion_tokens=2, total_tokens=5), estimated_cost=None,
        processing_time=0.01, finish_reason="stop", error=None, worker_id="me", attempt=1, tool_calls=[],
    )  # fmt: skip


async def test_jobs_that_end_together_are_counted_and_ended_in_two_script_calls(
    redis_url, redis_server, clean_env
):
    """20 endings at once: one MULTI holding the batch's count and one `end_jobs` (it was one EVALSHA a
    job: 21 script calls); every job's result stored, its keys and queue entry gone, counted once."""
    client = redis_server.client()
    client.script_load(end_jobs.lua)  # type: ignore[attr-defined]
    client.script_load(accounting._record.lua)  # type: ignore[attr-defined]
    worker, state = _worker(redis_url)
    try:
        ids, counts = await _leased(worker, state, "together")
        client.config_resetstat()
        await asyncio.gather(*(
            worker.finish_job(job_id, True, job_id.encode(), 60, False, None, None, count=count, attempt=1)
            for job_id, count in zip(ids, counts, strict=True)
        ))  # fmt: skip
        stats = client.info("commandstats")
        calls = {
            name: stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval", "exec")
        }
        assert calls == {"evalsha": 2, "eval": 0, "exec": 1}
        for job_id in ids:
            assert client.get(keys.result(job_id)) == job_id.encode()
            assert not client.exists(keys.in_progress(job_id), keys.job(job_id))
            assert client.zscore(keys.QUEUE, job_id) is None
            assert client.exists(keys.usage_counted(job_id))
    finally:
        await worker.pool.aclose()


async def test_a_usual_ending_makes_no_task_of_its_own(redis_url, clean_env):
    """A job's ending (arq's `_ending`, then finish_job) waits on the endings write's future: the only
    task made while 20 jobs end is the write's (each ending was a task of asyncio.shield's)."""
    worker, state = _worker(redis_url)
    loop = asyncio.get_running_loop()
    made: list[str] = []

    def factory(loop, coro, **kwargs):
        made.append(coro.__qualname__)
        return asyncio.Task(coro, loop=loop, **kwargs)

    try:
        ids, counts = await _leased(worker, state, "no-task")
        chat = worker.functions["chat"]
        loop.set_task_factory(factory)
        try:
            await asyncio.gather(*(
                worker._ending(job_id, f"{job_id}:chat", chat, (), {}, 0, 1, 0, _result(job_id), success=True,
                               count=count)
                for job_id, count in zip(ids, counts, strict=True)
            ))  # fmt: skip
        finally:
            loop.set_task_factory(None)
        gathered = [name for name in made if name != "QueueWorker._ending"]  # (gather's own, one a job)
        assert gathered == ["Endings._write"]
        for job_id in ids:
            assert await worker.pool.get(keys.result(job_id)) is not None
    finally:
        await worker.pool.aclose()
