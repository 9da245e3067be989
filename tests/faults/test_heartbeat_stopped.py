"""A worker whose heartbeat task ended while the worker runs (a stray cancellation, which no `except
Exception` catches; a bug) can keep none of its jobs' leases: it says so and stops, its runs storing
nothing, instead of running on with event writes that wait for a look at its leases that never comes
and taking jobs it cannot hold. Another worker runs the job to its whole answer."""

from __future__ import annotations

import asyncio

from observe import LONG_MESSAGE, expected_text
from runtimes import runtime_for

from shared import timeseries
from shared.models import ChatRequest
from shared.settings import load_settings
from worker.runner import build_worker

PACE = dict(worker_lease_seconds=1, mock_token_delay_ms=60)  # ~3.3 s an answer


async def test_a_worker_whose_heartbeat_died_says_so_and_stops(redis_url, clean_env, monkeypatch, caplog):
    sample_depth, beats = timeseries.sample_depth, 0

    async def third_beat_dies(redis) -> None:  # (the heartbeat's last step; a worker started later beats on)
        nonlocal beats
        beats += 1
        if beats == 3:
            raise asyncio.CancelledError  # not an Exception: the heartbeat's own handler lets it through
        await sample_depth(redis)

    monkeypatch.setattr(timeseries, "sample_depth", third_beat_dies)
    settings = load_settings(redis_url=redis_url, **PACE)
    first = build_worker(settings, handle_signals=False)
    running = asyncio.create_task(first.async_run())
    async with runtime_for(redis_url, **PACE) as runtime:
        job_id = await runtime.queue.submit(ChatRequest(message=LONG_MESSAGE), caller="operator")
        await asyncio.wait([running], timeout=5)  # (it dies ~0.7 s in; the job streams 3.3 s)
        stopped = running.done() and not running.cancelled() and running.exception()
        if first.tasks:  # (its runs end on their own, storing nothing; close() would cancel them again)
            await asyncio.wait(list(first.tasks.values()), timeout=5)
        running.cancel()
        await first.close()
        assert isinstance(stopped, RuntimeError) and "heartbeat stopped" in str(stopped), stopped
        assert "heartbeat stopped" in caplog.text
        second = build_worker(settings, handle_signals=False)
        taking_over = asyncio.create_task(second.async_run())
        try:
            result = await runtime.jobs.wait(job_id, timeout=20)
        finally:
            taking_over.cancel()
            await second.close()
    assert result.status == "completed" and result.ai_response == expected_text(LONG_MESSAGE), result
