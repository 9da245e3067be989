"""Claiming queued jobs: one script call leases a batch and reads everything a job needs to start.

arq's claim is four round trips a job (WATCH, EXISTS, ZSCORE, MULTI PSETEX EXEC), and its `run_job`
reads the job in one more (GET the job, INCR its retry counter, ZREM it from the abort set); our job
then read its owner in a third. Here one atomic script does all of that for a whole batch of ids,
stopping once the worker's free slots are filled, so a woken job starts without another round trip.
The worker checks each job's value before running it (worker/intake.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.scripts import Arg, Args, Key, script

RETRY_KEPT_SECONDS = 88_400  # arq's: how long a job's retry counter outlives its last start


# Given no candidates, the script reads them itself: the first `scan` due ids of the queue, lowest
# score first, as arq's poll would (one round trip for a freed slot instead of a poll's read and claim).
# A retry counter arq's INCR would choke on (not a count, another type) is reset and said why.
@script("""
-- answers {id, score, job value ('' = none), tries (this start's), note ('' or 'reset: why'),
--          aborted ('1' = it was in the abort set), owner record ('' = none), ...} for the jobs leased
local claimed = {}
if #candidates == 0 and scan > 0 then
  candidates = redis.call('ZRANGEBYSCORE', queue, '-inf', now_ms, 'LIMIT', 0, scan)
end
local function text(key)  -- '' when missing or not a string (GET's error: read, not raised)
  local value = redis.pcall('GET', key)
  return type(value) == 'string' and value or ''
end
local abortable = redis.call('TYPE', abort_set)['ok'] == 'zset'  -- junk there is arq's poll's to name
for _, id in ipairs(candidates) do
  if #claimed >= 7 * free then break end
  local lease = lease_prefix .. id
  if redis.call('EXISTS', lease) == 0 then
    local score = redis.call('ZSCORE', queue, id)
    local due = score and tonumber(score)
    if due and due <= now_ms then
      redis.call('PSETEX', lease, lease_ms, '1')
      local retry, note = retry_prefix .. id, ''
      local tries = redis.pcall('GET', retry)
      if type(tries) == 'string' then
        if #tries > 9 or not (tries == '0' or string.match(tries, '^[1-9][0-9]*$')) then
          note = 'reset: it was not a count'
        end
      elseif tries then  -- not a string
        note = 'reset: it was a ' .. redis.call('TYPE', retry)['ok']
      end
      if note ~= '' then redis.call('DEL', retry) end
      local tries = redis.call('INCR', retry)
      redis.call('EXPIRE', retry, retry_ttl)
      claimed[#claimed + 1] = id
      claimed[#claimed + 1] = score
      claimed[#claimed + 1] = text(job_prefix .. id)
      claimed[#claimed + 1] = tostring(tries)
      claimed[#claimed + 1] = note
      claimed[#claimed + 1] = tostring(abortable and redis.call('ZREM', abort_set, id) or 0)
      claimed[#claimed + 1] = text(owner_prefix .. id)
    end
  end
end
return claimed
""")
async def claim_jobs(
    redis,
    *,
    queue: Key,
    abort_set: Key,
    now_ms: Arg[int],
    lease_ms: Arg[int],
    free: Arg[int],
    scan: Arg[int],
    retry_ttl: Arg[int],
    lease_prefix: Arg[str],
    job_prefix: Arg[str],
    retry_prefix: Arg[str],
    owner_prefix: Arg[str],
    candidates: Args,
) -> list[bytes]:
    """Lease up to `free` of the candidates (none: of the queue's first `scan`) that are due; answers
    seven values per job leased (see `Claimed.batch`)."""
    ...


@dataclass(frozen=True)
class Claimed:
    """One job the claim script leased, with what arq's `run_job` and our job would read for it."""

    raw_id: bytes
    score: bytes
    raw_job: bytes | None  # arq's job value; None when there was none (or not a string)
    job_try: int  # this start's number (arq's retry counter, counted up by the claim)
    note: str  # why the retry counter was reset, or ""
    aborted: bool  # the job had been asked to stop before it started (it left the abort set)
    owner: bytes | None  # its owner record (shared/keys.py: owner), None when there was none

    @classmethod
    def batch(cls, reply: list[bytes]) -> list[Claimed]:
        return [
            cls(raw_id, score, job or None, int(tries), note.decode()[7:], aborted == b"1", owner or None)
            for raw_id, score, job, tries, note, aborted, owner in zip(*[iter(reply)] * 7, strict=True)
        ]
