"""Embedded mode's worker is the messenger's to keep: one whose main loop ends while the messenger
runs (its heartbeat died, or any other error) is said in one ERROR line and replaced, so a call made
after it, or running when it failed, still gets its whole answer instead of waiting for ever for a
worker that is gone. In-process, on the in-memory Redis."""

from __future__ import annotations

import asyncio
import logging

import pytest
from openai_server import eventually
from runtimes import embedded

from shared.models import ChatRequest
from worker import embedded as embedded_module
from worker.providers.mock import mock_reply
from worker.wakeups import QueueWorker

LONG_MESSAGE = " ".join(f"word{i}" for i in range(40))  # the mock echoes all 40: ~1 s at 20 ms a token


@pytest.fixture
def built(clean_env, monkeypatch) -> list[QueueWorker]:
    """Every worker the messenger starts, in order; replacements start 0.1 s after a failure."""
    workers: list[QueueWorker] = []
    build = embedded_module.build_worker

    def recorded(*args, **kwargs) -> QueueWorker:
        workers.append(build(*args, **kwargs))
        return workers[-1]

    monkeypatch.setattr(embedded_module, "build_worker", recorded)
    monkeypatch.setattr(embedded_module, "RESTART_SECONDS", (0.1, 0.2), raising=False)
    clean_env.setenv("WORKER_LEASE_SECONDS", "1")  # a stopped run's job runs again a second later
    return workers


async def started(worker: QueueWorker) -> None:
    await eventually(lambda: "heartbeat" in worker.ctx and "mcpq" in worker.ctx)


def break_the_poll(worker: QueueWorker) -> None:
    """The worker's main loop raises at its next poll (any error but the heartbeat's)."""

    async def broken() -> None:
        raise ValueError("a bug in the poll")

    worker._poll_iteration = broken  # type: ignore[method-assign]
    worker._full_poll_due = True
    worker._wake.set()


async def test_a_call_after_the_embedded_workers_heartbeat_died_gets_its_answer(built, clean_env, caplog):
    async with embedded(clean_env) as runtime:
        await started(built[0])
        built[0].ctx["heartbeat"].cancel()  # the heartbeat dies: that worker stops
        async with asyncio.timeout(10):
            result = await runtime.jobs.run(ChatRequest(message="hello"))
    assert result.status == "completed", result
    assert len(built) == 2
    said = [r for r in caplog.records if r.name == "worker.embedded"]
    assert [r.levelno for r in said] == [logging.ERROR], said
    assert "the heartbeat stopped" in said[0].getMessage()


async def test_a_job_running_when_the_embedded_worker_failed_ends_whole(built, clean_env):
    async with embedded(clean_env, token_delay_ms=20) as runtime:
        await started(built[0])
        call = asyncio.create_task(runtime.jobs.run(ChatRequest(message=LONG_MESSAGE)))
        await eventually(lambda: built[0].ctx["mcpq"].running)
        built[0].ctx["heartbeat"].cancel()  # mid-job: its run stops, the job runs again once its lease lapses
        async with asyncio.timeout(20):
            result = await call
        await eventually(lambda: built[0]._pool is None)  # the failed one stopped whole (arq's close ran)
    assert result.status == "completed", result
    assert result.ai_response == "".join(mock_reply([{"role": "user", "content": LONG_MESSAGE}]))
    assert result.attempt == 2  # (the first run stored nothing)


async def test_an_embedded_worker_whose_loop_raised_is_replaced(built, clean_env, caplog):
    async with embedded(clean_env) as runtime:
        await started(built[0])
        break_the_poll(built[0])
        await eventually(lambda: len(built) == 2)
        async with asyncio.timeout(10):
            result = await runtime.jobs.run(ChatRequest(message="hello"))
    assert result.status == "completed", result
    said = [r.getMessage() for r in caplog.records if r.name == "worker.embedded"]
    assert said == ["the embedded worker stopped (a bug in the poll); a new one starts in 0 s"], said


async def test_a_job_the_failed_worker_runs_past_its_grace_is_handed_back_and_ends_whole(built, clean_env):
    clean_env.setenv("WORKER_SHUTDOWN_GRACE_SECONDS", "0.3")
    async with embedded(clean_env, token_delay_ms=50) as runtime:
        await started(built[0])
        call = asyncio.create_task(runtime.jobs.run(ChatRequest(message=LONG_MESSAGE)))
        await eventually(lambda: built[0].ctx["mcpq"].running)
        break_the_poll(built[0])
        async with asyncio.timeout(20):
            result = await call
        await eventually(lambda: built[0]._pool is None)  # the failed one stopped whole (arq's close ran)
    assert result.status == "completed", result
    assert result.ai_response == "".join(mock_reply([{"role": "user", "content": LONG_MESSAGE}]))
