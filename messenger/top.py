"""`messenger top`: a live terminal monitor (like `rq info --interval`): the queue, live workers,
the jobs in flight with their tokens per second, and what the week cost. Every frame is read afresh
from Redis, so it shows any messenger's and any worker's jobs; `--once` prints one frame."""

from __future__ import annotations

import asyncio
import sys
import time

from messenger.health import report
from messenger.jobs import JobClient
from shared import damaged, keys
from shared.errors import JobNotFound
from shared.tokens import estimate_tokens

CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen: every terminal since the VT100
JOBS_SHOWN = 20


async def monitor(jobs: JobClient, interval: float, once: bool) -> int:
    seen: dict[str, tuple[float, int]] = {}  # job id -> (when, completion tokens) at the last frame
    while True:
        text = await frame(jobs, seen)
        sys.stdout.write(text if once else CLEAR + text)
        sys.stdout.flush()
        if once:
            return 0
        await asyncio.sleep(interval)


async def frame(jobs: JobClient, seen: dict[str, tuple[float, int]]) -> str:
    """One screen. Tokens/s is measured between frames (since the job was queued, on the first)."""
    from messenger.usage import usage_stats

    health = await report(jobs.settings, jobs.redis)
    totals = (await usage_stats(jobs.redis))["totals"]
    now = time.time()
    cost = "unpriced" if totals["cost_usd"] is None else f"${totals['cost_usd']:.6f}"
    lines = [
        f"mcp-queue  {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))}  redis {health['redis']['url']} "
        f"({health['redis']['latency_ms']} ms)  status {health['status']}",
        f"queue {health['queue_depth']} waiting, {health['running']} running   "
        f"workers {len(health['workers'])} live   {_providers(health)}",
        f"7 days: {totals['requests']} jobs ({totals['completed']} ok, {totals['failed']} failed, "
        f"{totals['cancelled']} cancelled)  {totals['prompt_tokens'] + totals['completion_tokens']} tokens  {cost}",
    ]
    if health.get("problem"):
        lines.append(f"problem: {health['problem']}")
    lines += ["", f"{'WORKER':28} {'HOST':16} {'BEAT':>6} {'RUNNING':>7} {'DONE':>6}  PROVIDER"]
    for w in health["workers"]:
        provider = f"down: {w['provider_error']}" if w["provider_error"] else "ok"
        lines.append(
            f"{str(w['worker_id'])[:28]:28} {str(w['host'])[:16]:16} {w['heartbeat_age_s']:>5.1f}s "
            f"{len(w['running_jobs']):>7} {w['jobs_done'] or 0:>6}  {provider[:60]}"
        )
    running = [(j, w["worker_id"]) for w in health["workers"] for j in w["running_jobs"]]
    queued = await damaged.read(jobs.redis.zrange(keys.QUEUE, 0, JOBS_SHOWN - 1), keys.QUEUE, [])
    held = {j for j, _ in running}
    waiting = [(j.decode(errors="replace"), None) for j in queued if j.decode(errors="replace") not in held]
    lines += ["", f"{'JOB':14} {'STATUS':9} {'MODEL':20} {'AGE':>7} {'TOKENS':>7} {'TOK/S':>7}  WORKER"]
    for job_id, worker in (running + waiting)[:JOBS_SHOWN]:
        lines.append(await _job_line(jobs, job_id, worker, now, seen))
    for gone in set(seen) - held:
        seen.pop(gone)
    return "\n".join(lines) + "\n"


def _providers(health: dict) -> str:
    if not health["workers"]:
        return "provider: no live worker to call it"
    return "  ".join(
        f"{name} {'reachable' if p['reachable'] else 'NOT reachable'}"
        for name, p in health["providers"].items()
    )


async def _job_line(jobs: JobClient, job_id: str, worker: str | None, now: float, seen: dict) -> str:
    try:
        job = await jobs.get(job_id)
    except JobNotFound:
        return f"{job_id[:14]:14} {'gone':9}"
    created_ms, _ = await jobs.timeline(job_id)
    tokens = job.usage.completion_tokens or estimate_tokens(job.ai_response)  # running: no usage yet
    since, before = seen.get(job_id, (created_ms / 1000, 0))
    rate = (tokens - before) / (now - since) if now > since and job.status == "running" else 0.0
    if job.status == "running":
        seen[job_id] = (now, tokens)
    return (
        f"{job_id[:14]:14} {job.status:9} {(job.model or '-')[:20]:20} {now - created_ms / 1000:>6.1f}s "
        f"{tokens:>7} {rate:>7.1f}  {worker or '-'}"
    )
