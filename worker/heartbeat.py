"""Each worker says it is alive, and what it is doing, in `mcpq:worker:<id>` (JSON with a TTL),
and renews the lease (`arq:in-progress:<id>`) of every job it runs. A worker that dies stops
renewing, so its jobs become free for another worker within WORKER_LEASE_SECONDS instead of arq's
job-timeout-plus-10-seconds."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time

from shared import keys, timeseries
from worker import pause
from worker.job import WorkerState

log = logging.getLogger("worker.heartbeat")


def beat_interval(lease_seconds: float) -> float:
    """Three beats per lease, so one slow beat never lets a live worker's job go."""
    return min(keys.HEARTBEAT_SECONDS, lease_seconds / 3)


def heartbeat(state: WorkerState, started_at: float) -> dict:
    return {
        "worker_id": state.worker_id,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "provider": state.provider.name,
        "provider_error": state.provider_error,
        "provider_seen_at": round(state.provider_seen_at, 3),
        "concurrency": state.settings.worker_concurrency,
        "running_jobs": dict(state.running),
        "jobs_done": state.jobs_done,
        "capacity_waiting": state.capacity.waiting_by_model(),  # model -> jobs waiting for its capacity
        "started_at": round(started_at, 3),
        "last_seen": round(time.time(), 3),
    }


async def beat_forever(redis, state: WorkerState) -> None:
    started_at = time.time()
    lease_ms = int(state.settings.worker_lease_seconds * 1000)
    interval = beat_interval(state.settings.worker_lease_seconds)
    while True:
        try:
            payload = json.dumps(heartbeat(state, started_at))
            async with redis.pipeline(transaction=False) as pipe:
                pipe.set(keys.worker(state.worker_id), payload, ex=int(keys.HEARTBEAT_TTL_SECONDS))
                for job_id in state.running:
                    pipe.set(keys.in_progress(job_id), b"1", px=lease_ms)  # again, if it lapsed in an outage
                    pipe.expire(keys.stream(job_id), keys.STREAM_TTL_SECONDS)
                await pipe.execute()
            state.leases_renewed_at = time.monotonic()  # (a hand-off read long after it is checked)
            await state.capacity.renew(redis)
            await pause.wake_expired(redis)  # paused jobs whose question expired: each fails when it runs
            await timeseries.sample_depth(redis)  # the dashboard's chart of jobs waiting or running
            state.metrics.heartbeat.set_to_current_time()
        except Exception as e:  # Redis away: keep beating, the TTL tells readers we were gone
            log.warning("heartbeat failed: %s", e)
        await asyncio.sleep(interval)
