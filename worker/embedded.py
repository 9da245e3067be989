"""The messenger's in-process worker (embedded mode): the one place the messenger reaches the worker."""

from __future__ import annotations

import asyncio
import contextlib

from shared.settings import Settings
from worker.providers import make_providers
from worker.runner import build_worker


@contextlib.asynccontextmanager
async def embedded_worker(settings: Settings, metrics_registry=None):
    """Run one worker inside the current process (the messenger's embedded mode); its metrics go
    into `metrics_registry` (the messenger's) when given."""
    await make_providers(settings).aclose()  # a provider that cannot start fails here, not in the background
    worker = build_worker(settings, handle_signals=False)
    worker.ctx["metrics_registry"] = metrics_registry
    task = asyncio.create_task(worker.async_run())
    try:
        yield worker
    finally:
        worker.allow_pick_jobs = False
        if worker.tasks:  # let jobs that are writing their result finish, as a stopping `worker` would
            await asyncio.wait(list(worker.tasks.values()), timeout=settings.worker_shutdown_grace_seconds)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        try:
            await worker.close()
        except asyncio.CancelledError:
            if (
                me := asyncio.current_task()
            ) is not None and me.cancelling():  # we are being cancelled ourselves: pass it on
                raise
