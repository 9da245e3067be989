"""A worker's life: start-up (provider, heartbeat, metrics), shutdown, and the arq options both the
`worker` command and `arq worker.WorkerSettings` use."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from arq.worker import func
from redis.exceptions import RedisError

from shared import keys, prices
from shared.connection import connect
from shared.heap import WORKER_YOUNG_OBJECTS, settle_heap
from shared.serializer import deserialize, serialize
from shared.settings import Settings
from shared.tool_client import ToolServers
from worker.heartbeat import beat_forever
from worker.job import WorkerState, call_tool, chat
from worker.metrics import MetricsServer, WorkerMetrics
from worker.providers import make_providers
from worker.publisher import EventWriter
from worker.wakeups import QueueWorker

log = logging.getLogger("worker")

SAFETY_POLL_SECONDS = 1.0  # only matters if a wake-up message was lost
MAX_TRIES = 5  # how many times a job is started when workers die under it


def new_worker_id() -> str:
    import socket

    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


async def startup(ctx: dict) -> None:
    settings: Settings = ctx["settings"]
    prices.configure(settings.model_prices)
    provider = make_providers(settings)
    state = WorkerState(
        settings=settings,
        provider=provider,
        worker_id=ctx.get("worker_id") or new_worker_id(),
        writer=EventWriter(ctx["redis"]),
        metrics=ctx.get("worker_metrics") or WorkerMetrics(),  # embedded: into the messenger's registry
        tool_servers=ToolServers(settings.mcp_servers, settings.tool_call_timeout_seconds),
    )
    state.provider_said(await provider.check())
    if state.provider_error:
        log.warning("provider %s not reachable yet: %s", provider.name, state.provider_error)
    ctx["mcpq"] = state
    state.writer.leases = state  # a run whose job another worker took publishes nothing more
    ctx["heartbeat"] = asyncio.create_task(beat_forever(ctx["redis"], state))
    if settings.worker_metrics_port is not None:
        ctx["metrics_server"] = MetricsServer(state.metrics.registry, settings.worker_metrics_port)
    settle_heap(WORKER_YOUNG_OBJECTS)  # start-up objects are never scanned again; short young pauses
    log.info("worker %s ready (provider %s)", state.worker_id, provider.name)
    prices.warm(settings.default_model)


async def shutdown(ctx: dict) -> None:
    if server := ctx.pop("metrics_server", None):
        server.close()
    task = ctx.pop("heartbeat", None)
    if task:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    state: WorkerState | None = ctx.get("mcpq")
    if state:
        state.writer.leases = None  # no heartbeat looks at them any more: writes wait for none
        state.looked()
        with contextlib.suppress(RedisError):
            await ctx["redis"].delete(keys.worker(state.worker_id))
        await state.provider.aclose()
        await state.capacity.aclose()
        await state.tool_servers.aclose()


def worker_options(settings: Settings) -> dict:
    """The arq Worker arguments both `worker` and `arq worker.WorkerSettings` use."""
    return {
        "functions": [
            func(chat, name="chat", max_tries=MAX_TRIES),
            func(call_tool, name="call_tool", max_tries=MAX_TRIES),
        ],
        "on_startup": startup,
        "on_shutdown": shutdown,
        "job_serializer": serialize,
        "job_deserializer": deserialize,
        "max_jobs": settings.worker_concurrency,
        # the job enforces JOB_TIMEOUT_SECONDS itself (with a clear error event); arq's is the backstop
        "job_timeout": settings.job_timeout_seconds + 30,
        "allow_abort_jobs": True,
        "poll_delay": SAFETY_POLL_SECONDS,
        # on SIGTERM/SIGINT: take no new jobs, let running ones finish for this long, hand back the rest
        "job_completion_wait": settings.worker_shutdown_grace_seconds,
        "ctx": {"settings": settings},
    }


def build_worker(settings: Settings, *, burst: bool = False, handle_signals: bool = True) -> QueueWorker:
    """A worker on its own connection pool (closing the worker closes only its own connections)."""
    return QueueWorker(
        **worker_options(settings),
        redis_pool=connect(settings.redis_url),
        burst=burst,
        handle_signals=handle_signals,
    )
