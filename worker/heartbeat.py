"""Each worker says it is alive, and what it is doing, in `mcpq:worker:<id>` (JSON with a TTL),
and renews the lease (`arq:in-progress:<id>`) of every job it runs. A worker that dies stops
renewing, so its jobs become free for another worker within WORKER_LEASE_SECONDS instead of arq's
job-timeout-plus-10-seconds.

A worker that was stalled past its lease (stopped, its loop blocked) may find a job of its own taken
by another worker meanwhile: the lease's value is its holder (shared.handoff.offer), so the heartbeat
renews only what is still its own and stops its run of the rest, which then writes no ending (the
other worker's run is the job's now)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time

from shared import handoff, keys, timeseries
from shared.scripts import Arg, Args, script
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


# A lease that is ours is renewed. One held elsewhere (shared.handoff.HOLDER_LUA: another worker's, or
# the job ended or was parked by another run) is not ours any more: answered. Any other lease is ours
# again. The job's stream is kept while we run it.
@script(
    handoff.HOLDER_LUA
    + """
local taken = {}
for _, id in ipairs(ids) do
  local lease = lease_prefix .. id
  local mine = holder_of(lease, me) == me
  if mine then
    redis.call('PEXPIRE', lease, lease_ms)
  elseif not held_elsewhere(lease, me, result_prefix .. id, input_prefix .. id) then
    redis.call('DEL', lease)
    redis.call('PSETEX', lease, lease_ms, me)
    mine = true
  end
  if mine then redis.call('EXPIRE', stream_prefix .. id, stream_ttl) else taken[#taken + 1] = id end
end
return taken
"""
)
async def _renew_leases(
    redis, *, me: Arg[str], lease_ms: Arg[int], lease_prefix: Arg[str], result_prefix: Arg[str],
    input_prefix: Arg[str], stream_prefix: Arg[str], stream_ttl: Arg[int], ids: Args,
) -> list[bytes]:  # fmt: skip
    """The ids of `ids` whose lease is not ours any more."""
    ...


async def renew_leases(redis, state: WorkerState, job_ids: list[str]) -> set[str]:
    """Renew our leases of `job_ids`; answers those another worker has taken (or ended) meanwhile,
    which are marked taken (`state.taken`) and their runs stopped."""
    lease_ms = int(state.settings.worker_lease_seconds * 1000)
    if not job_ids:
        return set()
    taken = await _renew_leases(
        redis, me=handoff.offer(state.worker_id, lease_ms), lease_ms=lease_ms, lease_prefix=keys.IN_PROGRESS_PREFIX,
        result_prefix=keys.RESULT_PREFIX, input_prefix=keys.INPUT_PREFIX, stream_prefix=keys.STREAM_PREFIX,
        stream_ttl=keys.STREAM_TTL_SECONDS, ids=job_ids,
    )  # fmt: skip
    lost = {raw.decode() for raw in taken}
    for job_id in lost:
        state.lose(job_id)
    return lost


async def beat_forever(redis, state: WorkerState) -> None:
    started_at = time.time()
    interval = beat_interval(state.settings.worker_lease_seconds)
    while True:
        state.look_now.clear()
        began = time.monotonic()
        try:
            payload = json.dumps(heartbeat(state, started_at))
            await redis.set(keys.worker(state.worker_id), payload, ex=int(keys.HEARTBEAT_TTL_SECONDS))
            asked = time.monotonic()  # Redis renews them after this, however late its reply is read
            try:
                await renew_leases(redis, state, list(state.running))  # (a stall before: they may lapse)
                state.leases_renewed_at = asked  # (a hand-off read long after it is checked)
            finally:
                state.looked(began)  # writes held while our leases were stale go on (worker/publisher.py)
            await state.capacity.renew(redis)
            await pause.wake_expired(redis)  # paused jobs whose question expired: each fails when it runs
            await timeseries.sample_depth(redis)  # the dashboard's chart of jobs waiting or running
            state.metrics.heartbeat.set_to_current_time()
        except Exception as e:  # Redis away: keep beating, the TTL tells readers we were gone
            log.warning("heartbeat failed: %s", e)
            state.looked(began)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):  # or at once when an event write waits for a look
                await state.look_now.wait()
