"""Storing how jobs ended: the endings of a worker process's jobs share one MULTI.

arq writes one MULTI a job when it ends (its result, the queue entry and keys it drops). Here one
such write is in flight at a time, and every job that ends meanwhile goes in the next one, so at
1,000 jobs/s a batch of endings costs one round trip, not one each (the way EventWriter batches
events, worker/publisher.py); their usage counts go first in it as one script call for the whole
batch (worker/accounting.py), which adds up the counters the jobs share. Each job gets its own
commands' replies back, and its own count's: an error on one job's key is that job's; a write that
fails whole (Redis away, refused) fails every job in it, and each job's lease lapses so it runs
again, as it would after its own MULTI failed.

A job's ending is one script call (`end_job`) that first checks the job is still this run's (its
lease's holder, shared.handoff.HOLDER_LUA): a run that lost its lease to another worker while it was
stalled stores nothing, with no window between that check and the write, and its usage count (the
batch's script reads the same rule) is not added either.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from shared.handoff import HOLDER_LUA
from shared.scripts import Arg, Key, script


# arq's ending of a job (finish_job's MULTI), unless another run holds the job (its lease names
# another worker, or none does and another run parked it: shared.handoff.HOLDER_LUA): a finished one's
# result (only if none is stored: a job's first stored ending stays its only one), its queue entry and
# keys dropped; one handed back (not `finish`) goes back in the queue `incr_score` ms later while its
# lease is still ours, its lease dropped. Sent again (redis-py sends the MULTI again when the
# connection drops with its reply on the way), it finds its own ending done: the same answer, the
# same keys, no second delay; a hand-back sent again after this worker started the job again (the
# same lease value: its start counted past `tries`, the run's own) leaves that run's lease alone. 1:
# stored; 0: the job is another run's now, nothing touched.
@script(
    HOLDER_LUA
    + """
local holder = holder_of(lease, me)
if (holder and holder ~= me) or (not holder and redis.pcall('HGET', record, 'parked') == 'true') then
  return 0
end
if finish then
  if result_data and px then
    redis.call('SET', result, result_data, 'PX', px, 'NX')
  elseif result_data then
    redis.call('SET', result, result_data, 'NX')
  end
  redis.call('DEL', retry, job, lease)
  redis.pcall('ZREM', abort_set, job_id)  -- (junk there, by hand: its abort request is moot, the job ends)
  redis.call('ZREM', queue, job_id)
else
  local started = tonumber(redis.pcall('GET', retry))  -- (a start counts it up: worker/claim.py)
  if holder == me and tries and started and started > tries then return 1 end  -- ours again, a later start's
  if incr_score and holder == me then redis.call('ZINCRBY', queue, incr_score, job_id) end
  redis.call('DEL', lease)
end
return 1
"""
)
async def end_job(
    redis, *, lease: Key, result: Key, record: Key, retry: Key, job: Key, abort_set: Key, queue: Key,
    me: Arg[str], job_id: Arg[str], finish: Arg[bool], result_data: Arg[bytes | None], px: Arg[int | None],
    incr_score: Arg[int | None], tries: Arg[int | None],
) -> int:  # fmt: skip
    """1: the ending is stored; 0: the job is another run's, nothing was written."""
    ...


Waiting = tuple[list[tuple], object, asyncio.Future[tuple[object, list]]]


class Endings:
    """One MULTI in flight; the endings that come meanwhile share the next."""

    def __init__(self, redis, count_command: Callable[[list], tuple]):
        self.redis = redis
        self.count_command = count_command  # the counts of a batch as one command (one reply each)
        self._waiting: list[Waiting] = []
        self._writer: asyncio.Task[None] | None = None

    async def store(self, commands: list[tuple], count: object = None) -> tuple[object, list]:
        """Write `commands` (each a command and its arguments) and the job's usage `count` (None:
        none) in a MULTI shared with the jobs ending now; answers (the count's reply, or None; the
        commands' replies in order), a command's error as its exception (not raised). Raises when the
        whole write fails."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((commands, count, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        return await future

    async def _write(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            counts = [count for _, count, _ in batch if count is not None]
            try:
                async with self.redis.pipeline(transaction=True) as tr:
                    if counts:
                        tr.execute_command(*self.count_command(counts))
                    for commands, _, _ in batch:
                        for command in commands:
                            tr.execute_command(*command)
                    replies = await tr.execute(raise_on_error=False)
            except Exception as e:  # the whole write: Redis away, or refused (out of memory)
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            counted, at = (replies[0], 1) if counts else (None, 0)
            nth = 0
            for commands, count, future in batch:
                reply = None
                if count is not None:
                    reply = counted[nth] if isinstance(counted, list) else counted  # an error: everyone's
                    nth += 1
                if not future.done():
                    future.set_result((reply, replies[at : at + len(commands)]))
                at += len(commands)
