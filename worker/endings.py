"""Storing how jobs ended: the endings of a worker process's jobs share one MULTI.

arq writes one MULTI a job when it ends (its result, the queue entry and keys it drops). Here one
such write is in flight at a time, and every job that ends meanwhile goes in the next one, so at
1,000 jobs/s a batch of endings costs one round trip, not one each (the way EventWriter batches
events, worker/publisher.py); their usage counts go first in it as one script call for the whole
batch (worker/accounting.py), which adds up the counters the jobs share, then their endings as one
script call too (`end_jobs`). Each job gets its own ending's reply back, and its own count's: an
error on one job's key is that job's; a write that fails whole (Redis away, refused) fails every job
in it, and each job's lease lapses so it runs again, as it would after its own MULTI failed.

A job's ending first checks the job is still this run's (its lease's holder,
shared.handoff.HOLDER_LUA): a run that lost its lease to another worker while it was stalled stores
nothing, with no window between that check and the write, and its usage count (the batch's script
reads the same rule) is not added either.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import NamedTuple

from shared import keys
from shared.handoff import HOLDER_LUA
from shared.scripts import Arg, Args, Key, script


# arq's ending of a job (finish_job's MULTI), unless another run holds the job (its lease names
# another worker, or none does and another run parked it: shared.handoff.HOLDER_LUA): a finished one's
# result (only if none is stored: a job's first stored ending stays its only one), its queue entry and
# keys dropped; one handed back (not `finish`) goes back in the queue `incr_score` ms later while its
# lease is still ours, its lease dropped. Sent again (redis-py sends the MULTI again when the
# connection drops with its reply on the way), it finds its own ending done: the same answer, the
# same keys, no second delay; a hand-back sent again after this worker started the job again (the
# same lease value: its start counted past `tries`, the run's own) leaves that run's lease alone. 1:
# stored; 0: the job is another run's now, nothing touched.
# One call ends a batch of jobs (`jobs`: an Ending's values a job, `ending` makes them; its keys named
# from its id by the prefixes), each on its own: a job whose key refuses a write (another type) has
# that error as its reply, as its own EVALSHA had in the MULTI, and the others are ended all the same.
# (One EVALSHA a job was one more command a job to queue, pack, parse and answer, in Redis and here.)
@script(
    HOLDER_LUA
    + """
local function end_job(job_id, me, finish, result_data, px, incr_score, tries)
  local lease, result, record = lease_prefix .. job_id, result_prefix .. job_id, record_prefix .. job_id
  local retry, job = retry_prefix .. job_id, job_prefix .. job_id
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
end
local function given(v) if v ~= '' then return v end end
local replies = {}
for i = 1, #jobs, 7 do
  local ok, reply = pcall(end_job, jobs[i], jobs[i + 1], jobs[i + 2] == '1', given(jobs[i + 3]),
    tonumber(jobs[i + 4]), tonumber(jobs[i + 5]), tonumber(jobs[i + 6]))
  if ok then
    replies[#replies + 1] = reply
  elseif type(reply) == 'table' and reply['err'] then  -- a command's error: this job's reply
    replies[#replies + 1] = reply
  else
    replies[#replies + 1] = {err = tostring(reply)}
  end
end
return replies
"""
)
async def end_jobs(
    redis, *, abort_set: Key, queue: Key, lease_prefix: Arg[str], result_prefix: Arg[str],
    record_prefix: Arg[str], retry_prefix: Arg[str], job_prefix: Arg[str], jobs: Args,
) -> list:  # fmt: skip
    """Each job's 1: its ending is stored; 0: the job is another run's, nothing was written; or the
    error a command of its ending met."""
    ...


class Ending(NamedTuple):
    """One job's part of `end_jobs`'s `jobs`, as its arguments (None as '', as shared.scripts sends an
    Arg): `ending` makes one."""

    job_id: str
    me: str
    finish: str  # '1': finish it; '0': hand it back
    result_data: bytes | str
    px: str
    incr_score: str
    tries: str


def ending(
    job_id: str, *, me: str, finish: bool, result_data: bytes | None, px: int | None,
    incr_score: int | None, tries: int | None,
) -> Ending:  # fmt: skip
    return Ending(job_id, me, "1" if finish else "0", result_data or "", "" if px is None else str(px),
                  str(incr_score) if incr_score else "", "" if tries is None else str(tries))  # fmt: skip


def _named(queue: str) -> dict[str, str]:
    """`end_jobs`'s keys and key prefixes."""
    return dict(
        abort_set=keys.ABORT_SET, queue=queue, lease_prefix=keys.IN_PROGRESS_PREFIX,
        result_prefix=keys.RESULT_PREFIX, record_prefix=keys.INPUT_PREFIX, retry_prefix=keys.RETRY_PREFIX,
        job_prefix=keys.JOB_PREFIX,
    )  # fmt: skip


def end_command(queue: str, endings: list[Ending]) -> tuple:
    """`end_jobs` of these endings, as one command for a MULTI."""
    return end_jobs.command({**_named(queue), "jobs": [value for one in endings for value in one]})  # type: ignore[attr-defined]


async def end_one(redis, queue: str, one: Ending) -> object:
    """One job's ending on its own (Redis lost the script cache: this call loads it again)."""
    (reply,) = await end_jobs(redis, **_named(queue), jobs=list(one))  # type: ignore[arg-type]
    return reply


Waiting = tuple[Ending, object, asyncio.Future[tuple[object, object]]]


class Endings:
    """One MULTI in flight; the endings that come meanwhile share the next."""

    def __init__(self, redis, queue: str, count_command: Callable[[list], tuple]):
        self.redis = redis
        self.queue = queue
        self.count_command = count_command  # the counts of a batch as one command (one reply each)
        self._waiting: list[Waiting] = []
        self._writer: asyncio.Task[None] | None = None

    def store(self, one: Ending, count: object = None) -> asyncio.Future[tuple[object, object]]:
        """Write the job's ending and its usage `count` (None: none) in a MULTI shared with the jobs
        ending now; the future answers (the count's reply, or None; the ending's reply), an error as
        its exception (not raised), or raises when the whole write fails."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((one, count, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        return future

    async def _write(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            counts = [count for _, count, _ in batch if count is not None]
            try:
                async with self.redis.pipeline(transaction=True) as tr:
                    if counts:
                        tr.execute_command(*self.count_command(counts))
                    tr.execute_command(*end_command(self.queue, [one for one, _, _ in batch]))
                    replies = await tr.execute(raise_on_error=False)
            except Exception as e:  # the whole write: Redis away, or refused (out of memory)
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            counted, ended = replies[0] if counts else None, replies[-1]
            nth = 0
            for i, (_, count, future) in enumerate(batch):
                reply = None
                if count is not None:
                    reply = counted[nth] if isinstance(counted, list) else counted  # an error: everyone's
                    nth += 1
                if not future.done():  # (not a list: an error, NOSCRIPT say, everyone's)
                    future.set_result((reply, ended[i] if isinstance(ended, list) else ended))
