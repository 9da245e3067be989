"""The messenger's in-process worker (embedded mode): the one place the messenger reaches the worker.

The messenger keeps its worker as a supervisor keeps a `worker` process: one whose main loop ends
while the messenger runs (its heartbeat died, or any other error) is said in one ERROR line, stopped
as a SIGTERM stops a `worker` (its jobs get WORKER_SHUTDOWN_GRACE_SECONDS to end, the rest are handed
back) and replaced by a new one after 1 s, doubling to 30 s while each new one fails within a minute:
a call waits for the new worker (a job the old one was running runs again once its lease lapses),
never for ever for a worker that is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from shared.settings import Settings
from worker.metrics import WorkerMetrics
from worker.providers import make_providers
from worker.runner import build_worker
from worker.wakeups import QueueWorker

log = logging.getLogger("worker.embedded")

RESTART_SECONDS = (1.0, 30.0)  # a failed worker's replacement starts after the first, doubling to the second
STEADY_SECONDS = 60.0  # a worker that ran this long before it failed is replaced after the first delay again


class EmbeddedWorker:
    """The worker running now (`worker`: None between a failed one and its replacement), started again
    by `keep_running` each time it fails, and the failed ones still stopping."""

    def __init__(self, settings: Settings, metrics_registry=None):
        self.settings = settings
        # one set of metrics for every worker started here: the messenger's registry takes each name once
        self.metrics = WorkerMetrics(metrics_registry)
        self.worker: QueueWorker | None = self._build()
        self.restarts = 0
        self._stopping: set[asyncio.Task] = set()
        self._closing = False

    def _build(self) -> QueueWorker:
        worker = build_worker(self.settings, handle_signals=False)
        worker.ctx["worker_metrics"] = self.metrics
        return worker

    async def keep_running(self) -> None:
        """Run the worker, and a new one each time it fails (until cancelled, or closing)."""
        delay = RESTART_SECONDS[0]
        worker = self.worker
        while worker is not None:
            began = time.monotonic()
            try:
                await worker.async_run()
                why = "its main loop returned"
            except Exception as e:
                why = str(e) or type(e).__name__
            if self._closing:
                return  # (close() stops it)
            if time.monotonic() - began >= STEADY_SECONDS:
                delay = RESTART_SECONDS[0]
            log.error("the embedded worker stopped (%s); a new one starts in %.0f s", why, delay)
            self.worker = None
            task = asyncio.create_task(stop(worker, self.settings.worker_shutdown_grace_seconds))
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)
            await asyncio.sleep(delay)
            delay = min(2 * delay, RESTART_SECONDS[1])
            self.worker = worker = self._build()
            self.restarts += 1

    async def close(self, running: asyncio.Task) -> None:
        """Stop the worker (`running`: keep_running's task) and wait for the failed ones to stop."""
        self._closing = True
        if self.worker is not None:
            await stop(self.worker, self.settings.worker_shutdown_grace_seconds, running)
        else:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
        if self._stopping:
            await asyncio.wait(list(self._stopping))


async def stop(worker: QueueWorker, grace: float, running: asyncio.Task | None = None) -> None:
    """Stop `worker` as a stopping `worker` process would: it takes no more jobs, those it runs get
    `grace` seconds to end, the rest are handed back. `running`: the task running its main loop, to
    cancel once its jobs had their grace (None: its loop has ended)."""
    worker.allow_pick_jobs = False
    if worker.tasks:  # let jobs that are writing their result finish, as a stopping `worker` would
        await asyncio.wait(list(worker.tasks.values()), timeout=grace)
    if running is not None:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    try:
        await worker.close()
    except asyncio.CancelledError:
        if (
            me := asyncio.current_task()
        ) is not None and me.cancelling():  # we are being cancelled ourselves: pass it on
            raise


@contextlib.asynccontextmanager
async def embedded_worker(settings: Settings, metrics_registry=None):
    """Run one worker inside the current process (the messenger's embedded mode), started again when
    it fails; its metrics go into `metrics_registry` (the messenger's) when given."""
    await make_providers(settings).aclose()  # a provider that cannot start fails here, not in the background
    embedded = EmbeddedWorker(settings, metrics_registry)
    running = asyncio.create_task(embedded.keep_running())
    try:
        yield embedded
    finally:
        await embedded.close(running)
