"""Server B: arq workers that run model calls and stream every token through Redis.

Public entry points: `build_worker` (the `worker` command), `embedded_worker` (the messenger's
in-process worker), and `WorkerSettings` for `arq worker.WorkerSettings`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.embedded import embedded_worker
    from worker.runner import build_worker

    WorkerSettings: type

__all__ = ["WorkerSettings", "build_worker", "embedded_worker"]


def __getattr__(name: str) -> Any:
    # Lazy, so importing the package never reads the environment; arq reads WorkerSettings on demand.
    if name == "WorkerSettings":
        return _worker_settings()
    if name == "build_worker":
        from worker.runner import build_worker

        return build_worker
    if name == "embedded_worker":
        from worker.embedded import embedded_worker

        return embedded_worker
    raise AttributeError(name)


def _worker_settings() -> type:
    import inspect

    import arq.worker

    from shared.connection import connect
    from shared.settings import load_settings
    from worker.runner import worker_options
    from worker.wakeups import QueueWorker

    settings = load_settings()
    if settings.embedded:
        raise SystemExit(
            "arq worker.WorkerSettings needs REDIS_URL=redis://… (memory:// lives inside one process)"
        )
    # arq's CLI builds `arq.worker.Worker(**WorkerSettings)`: it gets ours, so a job run under it ends
    # as under `worker` (its ending only while it holds the job's lease, a result never written over;
    # arq's own finish_job deletes whatever lease the job has, another worker's too) and is handed
    # jobs the moment they are enqueued. (arq reads the settings it takes from the class's signature.)
    QueueWorker.__signature__ = inspect.signature(arq.worker.Worker)  # type: ignore[attr-defined]
    arq.worker.Worker = QueueWorker  # type: ignore[misc]
    return type(
        "WorkerSettings",
        (),
        # our pool, not arq's RedisSettings: the same retries, and redis+sentinel:// (shared/sentinel.py)
        {**worker_options(settings), "redis_pool": connect(settings.redis_url)},
    )
