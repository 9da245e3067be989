"""Storing how jobs ended: the endings of a worker process's jobs share one MULTI.

arq writes one MULTI a job when it ends (its result, the queue entry and keys it drops). Here one
such write is in flight at a time, and every job that ends meanwhile goes in the next one, so at
1,000 jobs/s a batch of endings costs one round trip, not one each (the way EventWriter batches
events, worker/publisher.py). Each job gets its own commands' replies back: an error on one job's key
is that job's; a write that fails whole (Redis away, refused) fails every job in it, and each job's
lease lapses so it runs again, as it would after its own MULTI failed.
"""

from __future__ import annotations

import asyncio


class Endings:
    """One MULTI in flight; the endings that come meanwhile share the next."""

    def __init__(self, redis):
        self.redis = redis
        self._waiting: list[tuple[list[tuple], asyncio.Future[list]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def store(self, commands: list[tuple]) -> list:
        """Write `commands` (each a command and its arguments) in a MULTI shared with the jobs ending
        now; answers their replies in order, a command's error as its exception (not raised). Raises
        when the whole write fails."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((commands, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        return await future

    async def _write(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                async with self.redis.pipeline(transaction=True) as tr:
                    for commands, _ in batch:
                        for command in commands:
                            tr.execute_command(*command)
                    replies = await tr.execute(raise_on_error=False)
            except Exception as e:  # the whole write: Redis away, or refused (out of memory)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            at = 0
            for commands, future in batch:
                if not future.done():
                    future.set_result(replies[at : at + len(commands)])
                at += len(commands)
