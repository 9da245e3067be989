"""An arq Worker that is woken the moment a job is enqueued, instead of polling for it.

The messenger PUBLISHes on `mcpq:wakeup` after every enqueue and cancel; each worker keeps one
subscription and polls at once when a message arrives, or when one of its slots frees up.
arq's poll (`poll_delay`) stays only as a slow safety net, so an idle worker costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from arq.worker import Worker, func
from redis.exceptions import RedisError

from shared import keys
from shared.connection import connect
from shared.serializer import deserialize, serialize
from shared.settings import Settings
from worker.heartbeat import beat_forever
from worker.job import WorkerState, chat
from worker.providers import make_provider

log = logging.getLogger("worker")

SAFETY_POLL_SECONDS = 1.0  # only matters if a wake-up message was lost
MAX_TRIES = 5  # how many times a job is started when workers die under it


def new_worker_id() -> str:
    import socket

    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


async def startup(ctx: dict) -> None:
    settings: Settings = ctx["settings"]
    provider = make_provider(settings)
    state = WorkerState(
        settings=settings, provider=provider, worker_id=ctx.get("worker_id") or new_worker_id()
    )
    state.provider_error = await provider.check()
    if state.provider_error:
        log.warning("provider %s not reachable yet: %s", provider.name, state.provider_error)
    ctx["mcpq"] = state
    ctx["heartbeat"] = asyncio.create_task(beat_forever(ctx["redis"], state))
    log.info("worker %s ready (provider %s)", state.worker_id, provider.name)


async def shutdown(ctx: dict) -> None:
    task = ctx.pop("heartbeat", None)
    if task:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    state: WorkerState | None = ctx.get("mcpq")
    if state:
        with contextlib.suppress(RedisError):
            await ctx["redis"].delete(keys.worker(state.worker_id))
        await state.provider.aclose()


def worker_options(settings: Settings) -> dict:
    """The arq Worker arguments both `worker` and `arq worker.WorkerSettings` use."""
    return {
        "functions": [func(chat, name="chat", max_tries=MAX_TRIES)],
        "on_startup": startup,
        "on_shutdown": shutdown,
        "job_serializer": serialize,
        "job_deserializer": deserialize,
        "max_jobs": settings.worker_concurrency,
        # the job enforces JOB_TIMEOUT_SECONDS itself (with a clear error event); arq's is the backstop
        "job_timeout": settings.job_timeout_seconds + 30,
        "allow_abort_jobs": True,
        "poll_delay": SAFETY_POLL_SECONDS,
        "ctx": {"settings": settings},
    }


class QueueWorker(Worker):
    """arq's Worker with a wake-up path; everything else (keys, retries, aborts) is arq's."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._wake = asyncio.Event()

    async def main(self) -> None:
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        listener = asyncio.create_task(self._listen_for_wakeups())
        try:
            while True:
                self._wake.clear()
                await self._poll_iteration()
                if self.burst and await self._burst_done():
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_delay_s)
        finally:
            listener.cancel()

    async def _burst_done(self) -> bool:
        if 0 <= self.max_burst_jobs <= self._jobs_started() or await self.pool.zcard(self.queue_name) == 0:
            await asyncio.gather(*self.tasks.values())
            return True
        return False

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        self._wake.set()  # a slot is free: take the next queued job now, not at the next poll

    async def _listen_for_wakeups(self) -> None:
        backoff = 0.05
        while True:
            pubsub = self.pool.pubsub()
            try:
                await pubsub.subscribe(keys.WAKEUP_CHANNEL)
                self._wake.set()  # anything enqueued while we were not listening
                backoff = 0.05
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        self._wake.set()
            except (RedisError, OSError) as e:
                log.warning("wake-up subscription lost (%s); retrying in %.2fs", e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()


def build_worker(settings: Settings, *, burst: bool = False, handle_signals: bool = True) -> QueueWorker:
    """A worker on its own connection pool (closing the worker closes only its own connections)."""
    return QueueWorker(
        **worker_options(settings),
        redis_pool=connect(settings.redis_url),
        burst=burst,
        handle_signals=handle_signals,
    )


@contextlib.asynccontextmanager
async def embedded_worker(settings: Settings):
    """Run one worker inside the current process (the messenger's embedded mode)."""
    worker = build_worker(settings, handle_signals=False)
    task = asyncio.create_task(worker.async_run())
    try:
        yield worker
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.close()
