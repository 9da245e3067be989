"""Claiming queued jobs: one script call leases a batch and reads everything a job needs to start.

arq's claim is four round trips a job (WATCH, EXISTS, ZSCORE, MULTI PSETEX EXEC), and its `run_job`
reads the job in one more (GET the job, INCR its retry counter, ZREM it from the abort set); our job
then read its owner in a third. Here one atomic script does all of that for a whole batch of ids,
stopping once the worker's free slots are filled, so a woken job starts without another round trip.
The same script offers the slots it could not fill in `mcpq:workers:idle`, once it has seen that no
due job waits: the enqueue then hands a new job straight to the worker (shared/handoff.py), leased
by the same Lua. The worker checks each job's value before running it (worker/intake.py).

A worker's free slots are either its own (`unreported`: freed since it last said) or offered; the
script takes from its own first, and answers how many of them are left and how many it offers now.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from shared.handoff import LEASE_LUA
from shared.scripts import Arg, Args, Key, script

# Given no candidates, the script reads them itself: the first `scan` due ids of the queue, lowest
# score first, as arq's poll would (one round trip for a freed slot instead of a poll's read and claim);
# a freed slot (`trust_offers`) skips that read while some worker offers slots: nothing is waiting then
# (a member offering none, written by hand, is no offer: the enqueue neither takes nor drops it).
CLAIM_LUA = (
    LEASE_LUA
    + """
-- answers {own slots left, slots offered now, then seven values per job leased (lease_job)}
local earlier = redis.pcall('GET', mine)
if type(earlier) == 'string' then  -- sent again, its reply lost: the first run's answer, values read again
  local first = cjson.decode(earlier)
  for i = 3, #first, 7 do
    first[i + 2], first[i + 6] = text(job_prefix .. first[i]), text(owner_prefix .. first[i])
  end
  return first
end
local offered = 0
if not reset then offered = tonumber(redis.pcall('ZSCORE', idle, me)) or 0 end  -- (a damaged key: none)
local slots = unreported + offered
local claimed = {}
local seen = candidates
if #candidates == 0 and scan > 0 then
  if trust_offers and offering and (offered > 0 or (tonumber(redis.pcall('ZCOUNT', idle, 1, '+inf')) or 0) > 0) then
    seen = {}
  else
    seen = redis.call('ZRANGEBYSCORE', queue, '-inf', now_ms, 'LIMIT', 0, scan)
  end
end
-- (re)subscribed: a job leased to us that we do not run was handed over while we heard nothing (a
-- stuck or dropped subscription): started again now, as once its lease lapsed, not a lease later
local retake, running = running_ids ~= '', {}
if retake then for _, id in ipairs(cjson.decode(running_ids)) do running[id] = true end end
for _, id in ipairs(seen) do
  if #claimed >= 7 * slots then break end
  local held = redis.call('EXISTS', lease_prefix .. id) == 1
  if held and retake and not running[id] then held = redis.pcall('GET', lease_prefix .. id) ~= me end
  if not held then
    local score = redis.call('ZSCORE', queue, id)
    local due = score and tonumber(score)
    if due and due <= now_ms then lease_job(claimed, id, score, lease_ms, me) end
  end
end
local taken = #claimed / 7
local left, offer
if not offering then
  left, offer = slots - taken, 0
elseif scan > 0 and #seen < scan then  -- every due job is leased: the free slots wait for the next one
  left, offer = 0, slots - taken
else
  local own = math.min(unreported, taken)
  left, offer = unreported - own, offered - (taken - own)
end
local wrote = true
if offer > 0 and (reset or offer ~= offered) then redis.call('ZADD', idle, offer, me)
elseif offer <= 0 and (reset or offered > 0) then redis.call('ZREM', idle, me)
else wrote = taken > 0 end
table.insert(claimed, 1, offer)
table.insert(claimed, 1, left)
if wrote then  -- this answer, for the same claim sent again (the job values and owners: read then)
  local kept = {}
  for i, value in ipairs(claimed) do kept[i] = value end
  for i = 3, #kept, 7 do kept[i + 2], kept[i + 6] = '', '' end
  redis.call('SET', mine, cjson.encode(kept), 'EX', mine_ttl)
end
return claimed
"""
)


@script(CLAIM_LUA)
async def claim_jobs(
    redis,
    *,
    queue: Key,
    abort_set: Key,
    idle: Key,
    mine: Key,
    now_ms: Arg[int],
    lease_ms: Arg[int],
    unreported: Arg[int],
    scan: Arg[int],
    offering: Arg[bool],
    trust_offers: Arg[bool],
    reset: Arg[bool],
    me: Arg[str],
    retry_ttl: Arg[int],
    mine_ttl: Arg[int],
    lease_prefix: Arg[str],
    job_prefix: Arg[str],
    retry_prefix: Arg[str],
    owner_prefix: Arg[str],
    running_ids: Arg[str],
    candidates: Args,
) -> list:
    """Lease up to the worker's free slots (`unreported` plus those it offers as `me`; `reset`: only
    `unreported`) of the candidates (none: of the queue's first `scan`) that are due, and offer what is
    left when `offering` and the scan saw every due job; answers (own slots left, slots offered, then
    seven values per job leased: see `Claimed.batch`). `running_ids`: '' or, after a (re)subscribe, the
    JSON list of the jobs this worker runs: a job leased to `me` and not among them is leased again
    (a hand-off it never heard). `mine` is this call's own key: the answer is kept
    there, so the call sent again after a lost reply (shared.connection.CLAIM's one retry) answers the
    same, where it found its jobs leased (by its first run) and answered none of them, leaving them to
    wait out their leases with a start counted, their abort requests gone, and its offer counted twice."""
    ...


@dataclass(frozen=True)
class Claimed:
    """One job the claim script leased, with what arq's `run_job` and our job would read for it."""

    raw_id: bytes
    score: bytes
    raw_job: bytes | None  # arq's job value; None when there was none (or not a string)
    job_try: int  # this start's number (arq's retry counter, counted up by the claim)
    note: str  # why the retry counter was reset, or ""
    aborted: bool  # the job had been asked to stop before it started (its ending takes it off the abort set)
    owner: bytes | None  # its owner record (shared/keys.py: owner), None when there was none

    @classmethod
    def batch(cls, reply: list[bytes]) -> list[Claimed]:
        return [
            cls(raw_id, score, job or None, int(tries), note.decode()[7:], aborted == b"1", owner or None)
            for raw_id, score, job, tries, note, aborted, owner in zip(*[iter(reply)] * 7, strict=True)
        ]

    @classmethod
    def from_message(cls, data: bytes) -> Claimed:
        """A job handed to this worker (shared/handoff.py); ValueError when the message is not one."""
        try:
            m = json.loads(data)
            job = cls(
                m["id"].encode(), m["score"].encode(), m["job"].encode() or None, int(m["try"]),
                m["note"][7:], m["aborted"] is True, m["owner"].encode() or None,
            )  # fmt: skip
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise ValueError(f"not a hand-off ({type(e).__name__})") from None
        if job.job_try < 1:
            raise ValueError("not a hand-off (its try is not a start's number)")
        return job


# A job handed to a worker that cannot start it (full after a lost offer, or stopping): what the hand-off
# did is undone (its lease, its start's count; an abort request stays where it was) and the idle
# workers are woken for it.
@script("""
if redis.call('DEL', lease) == 0 then return 0 end  -- (lapsed: the poll has it already)
local tries = tonumber(redis.pcall('GET', retry))
if tries and tries > 1 then redis.call('DECR', retry) else redis.call('DEL', retry) end
redis.call('PUBLISH', wakeup, job_id)
return 1
""")
async def give_back(redis, *, lease: Key, retry: Key, wakeup: Key, job_id: Arg[str]) -> int:
    """1 once the job is back in the queue, free for any worker."""
    ...


# A job handed over while its worker was stalled past its lease (stopped, its loop blocked): the lease
# may have lapsed and another worker's start taken the job (or ended it) meanwhile. Still the hand-off's
# when its lease is there and ours (`me`), the start count is the hand-off's and the job is still queued.
@script("""
if redis.pcall('GET', lease) ~= me or not redis.call('ZSCORE', queue, job_id) then return 0 end
if redis.pcall('GET', retry) ~= tries then return 0 end
redis.call('PEXPIRE', lease, lease_ms)
return 1
""")
async def still_handed(
    redis,
    *,
    lease: Key,
    retry: Key,
    queue: Key,
    job_id: Arg[str],
    tries: Arg[str],
    lease_ms: Arg[int],
    me: Arg[str],
) -> int:
    """1 when the job is still this hand-off's (its lease renewed), 0 when another start took it."""
    ...
