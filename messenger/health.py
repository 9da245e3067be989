"""What a person (or a probe) reads about the running system: Redis, live workers, jobs waiting and
running, provider reachability, configured MCP servers and the models on offer. Shared by
check_health, `GET /health`, `GET /metrics`, the dashboard and the CLI; it only reads."""

from __future__ import annotations

import contextlib
import json
import time
from typing import TYPE_CHECKING

from shared import damaged, keys, prices
from shared.connection import redacted
from shared.logs import redact
from shared.settings import Settings

if TYPE_CHECKING:
    from messenger.runtime import Runtime

# what every surface (health, check_health, the CLI, top, the dashboard) says when no worker beats
NO_WORKER = "no live worker: queued jobs wait until a `worker` process starts"


async def live_workers(redis) -> list[dict]:
    workers = []
    async for key in redis.scan_iter(match=keys.WORKER_PREFIX + "*", count=500):
        raw = await damaged.read(redis.get(key), key.decode(errors="replace"), None)
        if raw is None:
            continue
        with contextlib.suppress(ValueError, TypeError):
            beat = json.loads(raw)
            if isinstance(beat, dict) and isinstance(beat.get("worker_id"), str):  # not garbage set by hand
                workers.append(beat)
    return sorted(workers, key=lambda w: w.get("worker_id", ""))


def worker_rows(workers: list[dict]) -> list[dict]:
    """What a person wants to see of each heartbeat (health, dashboard)."""
    now = time.time()

    def age(last_seen) -> float | None:  # a heartbeat written by hand may hold anything
        return round(now - last_seen, 2) if isinstance(last_seen, int | float) else None

    def running(jobs) -> list[str]:
        return [str(job_id) for job_id in jobs] if isinstance(jobs, dict | list) else []

    return [
        {
            "worker_id": w.get("worker_id"),
            "host": w.get("host"),
            "heartbeat_age_s": age(w.get("last_seen", now)),
            "running_jobs": running(w.get("running_jobs")),
            "jobs_done": w.get("jobs_done"),
            "provider_error": w.get("provider_error"),
        }
        for w in workers
    ]


CAPACITY_MODELS_SHOWN = 50  # junk in mcpq:capacity:models cannot grow a report or a label set


async def capacity(redis, settings: Settings, workers: list[dict]) -> dict[str, dict]:
    """Per model with MODEL_LIMITS, a cool-down or waiting jobs: its limits, the jobs waiting for
    its capacity (from the heartbeats), the provider's 429s received and the cool-down left."""
    waiting: dict[str, int] = {}
    for w in workers:
        counts = w.get("capacity_waiting")
        for model, n in counts.items() if isinstance(counts, dict) else ():
            if isinstance(model, str) and isinstance(n, int):
                waiting[model] = waiting.get(model, 0) + n
    seen = await damaged.read(redis.smembers(keys.CAPACITY_MODELS), keys.CAPACITY_MODELS, set())
    limited = [m for m in settings.model_limits if m != "*"]
    first = sorted(
        {*limited, *waiting}
    )  # configured or waited for: never pushed out by names callers made up
    rest = sorted({m.decode(errors="replace") for m in seen} - set(first))
    names = (first + rest)[:CAPACITY_MODELS_SHOWN]
    if not names:
        return {}
    counted = await damaged.read(redis.hgetall(keys.CAPACITY_429S), keys.CAPACITY_429S, {})
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.pttl(keys.capacity("cooldown", name))
        left = await pipe.execute()
    out = {}
    for name, ms in zip(names, left, strict=True):
        limits = settings.model_limits_for(name)
        raw = counted.get(name.encode(), b"0")
        out[name] = {
            "limits": limits.model_dump(exclude_none=True) if limits else {},
            "waiting": waiting.get(name, 0),
            "upstream_429s": int(raw) if raw.isdigit() else 0,
            "cool_down_s": round(ms / 1000, 1) if isinstance(ms, int) and ms > 0 else 0,
        }
    return out


def seen_by_tenant(report: dict) -> dict:
    """The report a tenant sees: how many jobs each worker runs, not their ids (those are other
    tenants' job handles)."""
    for row in report.get("workers", []):
        row["running"] = len(row.pop("running_jobs", None) or [])
    return report


async def health(runtime: Runtime) -> dict:
    """Redis, live workers, jobs waiting and running, and provider reachability, as one JSON-able dict."""
    rows = mcp_server_rows(runtime) if runtime.settings.mcp_servers else []
    return await report(runtime.settings, runtime.redis, rows)


async def report(settings: Settings, redis, mcp_rows: list[dict] | None = None) -> dict:
    """health() for a caller without a Runtime (the CLI reads Redis without starting the server)."""
    out: dict = {
        "mode": "embedded" if settings.embedded else "redis",
        "redis": {"url": redacted(settings.redis_url), "ok": False},
        "provider": settings.ai_provider,
    }
    try:
        t0 = time.perf_counter()
        await redis.ping()
        out["redis"].update(ok=True, latency_ms=round((time.perf_counter() - t0) * 1000, 2))
    except Exception as e:
        out["redis"]["error"] = redact(f"{type(e).__name__}: {e}")
        out["status"] = "down"
        return out
    workers = await live_workers(redis)
    out["workers"] = worker_rows(workers)
    out["queue_depth"], out["running"] = await queue_counts(redis, workers)
    # paused for their callers' answers (worker/pause.py): off the queue, held by no worker
    out["paused"] = await damaged.read(redis.zcard(keys.INPUT_WAITING), keys.INPUT_WAITING, 0)
    if models_capacity := await capacity(redis, settings, workers):
        out["capacity"] = models_capacity  # MODEL_LIMITS, waiting jobs, 429s and cool-downs per model
    out["providers"] = providers(workers)
    down = {name: p for name, p in out["providers"].items() if not p["reachable"]}
    out["provider_reachable"] = not down if workers else None  # None: no worker to ask
    if down:
        out["provider_error"] = next(iter(down.values()))["error"]
    if mcp_rows:
        out["mcp_servers"] = {
            row.pop("name"): {k: len(v) if k == "tools" else v for k, v in row.items() if k != "transport"}
            for row in mcp_rows
        }
    out["status"] = "ok" if workers and not down else "degraded"
    if not workers:
        out["problem"] = NO_WORKER
    elif down:
        name, p = next(iter(down.items()))
        ago = f", {p['seen_s_ago']:g} s ago" if p["seen_s_ago"] is not None else ""
        out["problem"] = f"provider {name} not reachable (worker {p['worker_id']}{ago}): {p['error']}"
    return out


async def queue_counts(redis, workers: list[dict] | None = None) -> tuple[int, int]:
    """(waiting, running): jobs queued and not started, and jobs a live worker runs. arq keeps a job
    in its queue while it runs, so the queue's size counts both; the running ones are those a live
    worker's heartbeat holds (`workers`: the live workers' heartbeats, read here when not given).
    Every count of the queue a person or a probe reads is this one."""
    if workers is None:
        workers = await live_workers(redis)
    held = sorted({j for w in workers for j in (w.get("running_jobs") or {}) if isinstance(j, str)})
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(keys.QUEUE)
        for job_id in held:
            pipe.zscore(keys.QUEUE, job_id)
        size, *scores = await pipe.execute(raise_on_error=False)
    for reply in (size, *scores):
        if isinstance(reply, BaseException) and not damaged.wrong_type(reply):
            raise reply  # a lost connection, no permission; a wrong-typed queue (junk) reads as empty
    if not isinstance(size, int):
        damaged.warn(keys.QUEUE)
        size = 0
    in_queue = sum(1 for s in scores if isinstance(s, int | float))
    return max(size - in_queue, 0), len(held)


def providers(workers: list[dict]) -> dict[str, dict]:
    """Per provider, the newest call outcome any live worker saw: a failed call marks it down until
    a call (on any worker) succeeds. A worker that has not called since it stopped working cannot
    vouch for it, so the newest word wins rather than any worker without an error."""
    now, newest = time.time(), {}
    for w in workers:
        name, seen = w.get("provider"), w.get("provider_seen_at")
        seen = seen if isinstance(seen, int | float) else 0.0  # a worker from before this field
        if isinstance(name, str) and (name not in newest or seen > newest[name][0]):
            newest[name] = (seen, w)
    return {
        name: {
            "reachable": not w.get("provider_error"),
            "error": w.get("provider_error"),
            "worker_id": w.get("worker_id"),
            "seen_s_ago": round(max(now - seen, 0.0), 1) if seen else None,
        }
        for name, (seen, w) in sorted(newest.items())
    }


def mcp_server_rows(runtime: Runtime) -> list[dict]:
    """Each configured MCP server, without secrets; the tools of the ones this messenger serves as
    server/tool (listed at start-up), or why they could not be listed."""
    rows = []
    for name, config in sorted(runtime.settings.mcp_servers.items()):
        row: dict = {"name": name, "transport": "http" if config.url else "stdio", "exposed": False}
        if name in runtime.exposed:
            listed = runtime.exposed[name]
            row["exposed"] = True
            if isinstance(listed, str):
                row["error"] = listed
            else:
                row["tools"] = [f"{name}/{tool.name}" for tool in listed]
        rows.append(row)
    return rows


def models(settings: Settings) -> dict:
    """The default model and, for a provider's own API, its well-known models (a self-hosted server
    at OPENAI_BASE_URL serves what it serves: only the default and any MODEL_PRICES entries)."""
    known = prices.PROVIDER_MODELS.get(settings.ai_provider, [])
    if settings.ai_provider == "openai" and settings.openai_base_url:
        known = list(settings.model_prices or {})
    listed = dict.fromkeys([settings.default_model, *known])
    rows = []
    for name in listed:
        found = prices.lookup(name)
        rows.append(
            {
                "id": name,
                "default": name == settings.default_model,
                "input_usd_per_mtok": found.price.input if found else None,
                "output_usd_per_mtok": found.price.output if found else None,
                "price_source": found.source if found else None,  # MODEL_PRICES, genai-prices x.y, built-in
            }
        )
    return {"provider": settings.ai_provider, "default_model": settings.default_model, "models": rows}
