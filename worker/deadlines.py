"""Many tasks' deadlines on one timer: asyncio.timeout's rules without a timer of its own a job."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class Deadlines:
    """asyncio.timeout for the running jobs of a worker, with one timer for all of them, set for the
    soonest deadline (each asyncio.timeout set and cancelled a timer of its own: its Timeout object,
    current_task, call_at, ~2 % of a no-op job's CPU). A job's deadline cancels its task; `passed`, in
    the job's `except CancelledError`, says whether that cancel was the deadline's (asyncio.timeout's
    rule: no other cancel since), and the job raises TimeoutError as asyncio.timeout did (`within`
    does all three around one await). Used for a
    job's JOB_TIMEOUT_SECONDS (worker/job.py) and for arq's timeout around the whole job, its backstop
    (worker/wakeups.py), each with its own instance."""

    def __init__(self) -> None:
        self._due: dict[asyncio.Task, float] = {}  # task -> its loop time
        self._expired: set[asyncio.Task] = set()  # cancelled by their deadline, not yet stopped
        self._timer: asyncio.TimerHandle | None = None
        self._at = float("inf")  # when the timer fires

    async def within(self, task: asyncio.Task, seconds: float, awaitable: Awaitable[T]) -> T:
        """`await awaitable` in `task` (the current one), as `async with asyncio.timeout(seconds)`
        would: TimeoutError once the deadline cancelled it, any other cancel as it came."""
        cancelling = self.start(task, seconds)
        try:
            return await awaitable
        except asyncio.CancelledError:
            if self.passed(task, cancelling):
                raise TimeoutError from None
            raise
        finally:
            self.stop(task)

    def start(self, task: asyncio.Task, seconds: float) -> int:
        """`task` is cancelled `seconds` from now unless `stop` comes first; answers what `passed` needs."""
        loop = task.get_loop()
        self._due[task] = due = loop.time() + seconds
        if due < self._at:  # (the first, or sooner than the rest: JOB_TIMEOUT_SECONDS changed)
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._at = loop.call_at(due, self._fire, loop), due
        return task.cancelling()

    def passed(self, task: asyncio.Task, cancelling: int) -> bool:
        """The CancelledError `task` is handling is its deadline's (then it raises TimeoutError)."""
        if task not in self._expired:
            return False
        self._expired.discard(task)
        return task.uncancel() <= cancelling

    def stop(self, task: asyncio.Task) -> None:
        """The task is out of the deadline's block (once, however it left it)."""
        self._due.pop(task, None)
        if task in self._expired:  # (cancelled as it left the block: asyncio.timeout takes it back too)
            self._expired.discard(task)
            task.uncancel()

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        now, soonest = loop.time(), float("inf")
        for task, due in list(self._due.items()):
            if due <= now:
                del self._due[task]
                self._expired.add(task)
                task.cancel()
            elif due < soonest:
                soonest = due
        self._timer, self._at = None, soonest
        if soonest < float("inf"):
            self._timer = loop.call_at(soonest, self._fire, loop)
