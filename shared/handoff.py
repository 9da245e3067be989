"""Handing a new job straight to an idle worker: the Lua the enqueue and the worker's claim share.

A worker with free slots and nothing due in the queue offers them in `mcpq:workers:idle` (worker/
claim.py does, in the same script that found the queue empty). The enqueue script (messenger/
queue.py) takes one offered slot, leases the job for that worker and reads what it needs to start,
exactly as the worker's claim would (`LEASE_LUA`, one text for both), and PUBLISHes all of it on the
worker's own channel `mcpq:handoff:<worker id>`: the job starts from that message, with no claim
round trip. A worker that is gone has no subscriber on its channel: its offer is dropped there and
then, and the next one (or the queue and `mcpq:wakeup`) takes the job. One that died after the
hand-off never renews the lease; it lapses and a poll runs the job elsewhere, as for any job a dead
worker held.
"""

from __future__ import annotations

import json

# Lua: `lease_job(claimed, id, score, lease_ms, holder, value, owner)` leases a due job for `holder` (the
# worker's offer text, `offer()`: the lease's value says whose it is) and appends seven values to `claimed`
# (`value` and `owner`: the job's value and owner record when the caller has just written them, else nil:
# read):
# id, score, job value ('' = none), tries (this start's), note ('' or 'reset: why'), aborted ('1' =
# it is in the abort set), owner record ('' = none). A retry counter arq's INCR
# would choke on (not a count, another type) is reset and says why. Needs lease_prefix, retry_prefix,
# retry_ttl, job_prefix, abort_set and owner_prefix in scope.
LEASE_LUA = """
local function text(key)  -- '' when missing or not a string (GET's error: read, not raised)
  local value = redis.pcall('GET', key)
  return type(value) == 'string' and value or ''
end
local function lease_job(claimed, id, score, lease_ms, holder, value, owner)
  redis.call('PSETEX', lease_prefix .. id, lease_ms, holder)
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
  tries = redis.call('INCR', retry)
  redis.call('EXPIRE', retry, retry_ttl)
  -- the abort stays in the set until the job's ending is stored (worker/endings.py): an ending that
  -- failed (Redis away) leaves the job to a later claim, which must see the abort too, not run the job
  -- (junk in the abort set, not a zset, is arq's poll's to name: ZSCORE's error read as no abort)
  local aborted = type(redis.pcall('ZSCORE', abort_set, id)) == 'string' and '1' or '0'
  local n = #claimed
  claimed[n + 1] = id
  claimed[n + 2] = score
  claimed[n + 3] = value or text(job_prefix .. id)
  claimed[n + 4] = tostring(tries)
  claimed[n + 5] = note
  claimed[n + 6] = aborted
  claimed[n + 7] = owner or text(owner_prefix .. id)
end
"""

# Lua: `held_elsewhere(lease, me, result, record)`: true when a job is no longer the run of `me` (a
# worker's `offer()`, the value of every lease it holds): its lease names another holder (an offer's
# JSON whose "worker" is not ours: our own offer spelt otherwise, as a hand-off under an idle member
# written so leases it, is ours), or names none and the job ended elsewhere (its `result` is stored) or
# another run parked it for its caller's answer (its input `record` says parked: worker/pause.py). Any
# other lease (lapsed while Redis was away or restarted without its data; junk; an older version's
# "1") is still `me`'s. The heartbeat's renewal and a job's ending read a lease by this one rule.
HOLDER_LUA = """
local function holder_of(lease, me)
  local value = redis.pcall('GET', lease)
  if value == me then return me end  -- (the usual answer: no JSON decoded)
  if type(value) ~= 'string' then return nil end
  local ok, holder = pcall(cjson.decode, value)
  if not (ok and type(holder) == 'table' and type(holder['worker']) == 'string') then return nil end
  local mine_ok, mine = pcall(cjson.decode, me)
  if mine_ok and type(mine) == 'table' and mine['worker'] == holder['worker'] then return me end
  return value
end
local function held_elsewhere(lease, me, result, record)
  local holder = holder_of(lease, me)
  if holder then return holder ~= me end
  return redis.call('EXISTS', result) == 1 or redis.pcall('HGET', record, 'parked') == 'true'
end
"""

# Lua: `hand_off(id, score, value, owner)` gives a queued job (its `value` and owner record `owner`, just
# written) to the worker offering the most free slots, leased
# for it, as one JSON message on its channel; false when no live worker offers one, or when the job's
# value is over HANDOFF_MAX_BYTES. An offer whose worker
# has no subscriber (it is gone), or that is not one (written by hand; its lease one PSETEX refuses),
# is dropped on the way; an offers key of the wrong type is started afresh. Needs LEASE_LUA, `idle`
# and `handoff_prefix`.
# Why a cap: a hand-off carries the job's whole value (up to ~1.2 MB) on pub/sub, and Redis drops a
# subscriber whose unread messages pass its pub/sub buffer limit (32 MB by default, or 8 MB for a
# minute): a burst of large jobs to one busy worker would cut its connection and leave them to their
# leases. A prompt of a few KB is handed off; a job over 64 KiB is woken and claimed as before (its
# one round trip more is nothing beside its size), so a worker's unread hand-offs stay small.
HANDOFF_MAX_BYTES = 64 * 1024

HAND_OFF_LUA = (
    f"local handoff_max_bytes = {HANDOFF_MAX_BYTES}\n"
    + """
local function hand_off(id, score, value, owner)
  if #value > handoff_max_bytes then return false end
  while true do
    local top = redis.pcall('ZREVRANGE', idle, '0', '0', 'WITHSCORES')
    if top['err'] then redis.call('DEL', idle) return false end
    local member, slots = top[1], tonumber(top[2])
    if not member or not slots or slots < 1 then return false end
    local ok, offer = pcall(cjson.decode, member)
    local worker = ok and type(offer) == 'table' and offer['worker']
    local lease_ms = ok and type(offer) == 'table' and tonumber(offer['lease_ms'])
    local channel = handoff_prefix .. tostring(worker)
    -- (a lease PSETEX refuses, a fraction or beyond a year, would fail the enqueue with the job queued)
    if type(worker) == 'string' and lease_ms and lease_ms >= 1 and lease_ms <= 31536000000
        and lease_ms == math.floor(lease_ms)
        and redis.call('PUBSUB', 'NUMSUB', channel)[2] > 0 then
      if slots < 2 then redis.call('ZREM', idle, member) else redis.call('ZINCRBY', idle, '-1', member) end
      local c = {}
      lease_job(c, id, score, lease_ms, member, value, owner)
      redis.call('PUBLISH', channel, cjson.encode({id = c[1], score = c[2], job = c[3], try = tonumber(c[4]),
        note = c[5], aborted = c[6] == '1', owner = c[7]}))
      return true
    end
    redis.call('ZREM', idle, member)
  end
end
"""
)


def offer(worker_id: str, lease_ms: int) -> str:
    """A worker's member of `mcpq:workers:idle`: who it is and how long a job handed to it stays leased
    before the worker's heartbeat renews it (its WORKER_LEASE_SECONDS, not the messenger's). The same
    text is the value of every lease the worker holds (`arq:in-progress:<id>`), so its heartbeat renews
    only its own: a job another worker took while this one was stalled is that worker's."""
    return json.dumps({"worker": worker_id, "lease_ms": lease_ms}, separators=(",", ":"))
