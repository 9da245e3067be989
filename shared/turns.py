"""Priorities and fair turns between tenants, kept inside arq's own `arq:queue` order.

arq claims the lowest scores first (a score is "due" once it is not above the time in ms). A job
enqueued by the messenger is not scored by its enqueue time but by a *turn*: each priority has a band
of scores far below any wall-clock time (high < normal < low, so every one of them is always due),
and inside a band every tenant keeps a virtual clock (start-time fair queueing):

    turn = max(V, next[tenant]);  next[tenant] = turn + 1

where V is the lowest score of the band still in the queue (the oldest job of that priority not yet
finished), or, with none, the last turn given. A tenant with a backlog of thousands has turns
V, V+1, V+2, …; a tenant arriving later starts at V, so its jobs slot in between, one turn each:
it never waits behind a whole backlog (a wall-clock score with a stride would put a late tenant
behind an early tenant's backlog). Placing a job is O(log n) (one ZRANGEBYSCORE LIMIT 1, two HSETs,
the ZADD) and the claim stays arq's lowest-first, so cancel, dead letter, queue depth and a lapsed
lease recovered by the poll need nothing new. A requeued dead letter takes its tenant's turn at
normal (shared/dead_letter.py); a job added by arq's own enqueue keeps its wall-clock score: it is
due as before and runs after the banded jobs.
"""

from __future__ import annotations

from typing import Literal

from shared import keys
from shared.scripts import Arg, Key, script

Priority = Literal["high", "normal", "low"]
PRIORITIES: tuple[Priority, ...] = ("high", "normal", "low")
BAND_BASE = 1_000_000_000_000  # 2001-09-09 in ms: every banded score is long due
BAND_WIDTH = 100_000_000_000  # turns per priority before a band would overflow into the next
WALL_CLOCK_FROM = BAND_BASE + len(PRIORITIES) * BAND_WIDTH  # a score at or above this is a time in ms

# Lua: the score of a new job of `tenant` in the band starting at `band` (`turn`; `turn_score`, the same
# as a ZADD's argument); `turns` is a hash of each
# tenant's next turn ("next:<band>:<tenant>") and each band's last turn ("last:<band>"). A damaged
# `turns` key (wrong type, a field that is not a number) is started afresh / read as unset.
PLACE_LUA = """
local top = band + band_width - 2
local last_field, next_field = 'last:' .. band, 'next:' .. band .. ':' .. tenant
local head = redis.call('ZRANGEBYSCORE', queue, band, top, 'WITHSCORES', 'LIMIT', '0', '1')
local next_turn = redis.pcall('HGET', turns, next_field)  -- (its error says the key is not a hash)
if type(next_turn) == 'table' then redis.call('DEL', turns) next_turn = false end
local v = tonumber(head[2]) or tonumber(redis.call('HGET', turns, last_field)) or band
local turn = math.max(v, tonumber(next_turn) or band)
if turn ~= turn or turn < band or turn > top then turn = band end  -- NaN or out of the band: damaged
-- the turn as text once, for the HSET, a hand-off and the queue's ZADD (`turn_score`: a number each
-- command formats again), where a fraction (a score written by hand into the band) stays the number
local turn_text = string.format('%.0f', turn)
local turn_score = turn ~= math.floor(turn) and turn or turn_text
redis.call('HSET', turns, next_field, string.format('%.0f', turn + 1), last_field, turn_text)
"""


def band(priority: str | None) -> int:
    """The lowest score of a priority's band (None: normal)."""
    return BAND_BASE + PRIORITIES.index(priority or "normal") * BAND_WIDTH  # type: ignore[arg-type]


def is_turn(score: float) -> bool:
    """A banded score (a turn), not a time: arq's 'delayed by' is meaningless for it."""
    return BAND_BASE <= score < WALL_CLOCK_FROM


# The waiting jobs ahead of one: its rank in the queue minus the running ones ahead of it (a running
# job stays in arq:queue, leased, until it ends). Running jobs sit at the head, so only the first
# `scan` members are looked at for leases. -1: the job is not in the queue.
@script("""
local rank = redis.call('ZRANK', queue, job_id)
if not rank or redis.call('EXISTS', lease_prefix .. job_id) == 1 then return -1 end
local running = 0
if rank > 0 then
  for _, id in ipairs(redis.call('ZRANGE', queue, 0, math.min(rank, scan) - 1)) do
    if redis.call('EXISTS', lease_prefix .. id) == 1 then running = running + 1 end
  end
end
return rank - running + 1
""")
async def _position(redis, *, queue: Key, job_id: Arg[str], lease_prefix: Arg[str], scan: Arg[int]) -> int:
    """1: the next job a free worker takes."""
    ...


POSITION_SCAN = 1000  # members at the queue's head checked for a lease


async def queue_position(redis, job_id: str) -> int | None:
    """Where a queued job stands: 1 is next; None when it is not waiting in the queue (running,
    ended, unknown). One script call, O(log n) plus the running jobs at the queue's head."""
    found = await _position(
        redis, queue=keys.QUEUE, job_id=job_id, lease_prefix=keys.IN_PROGRESS_PREFIX, scan=POSITION_SCAN
    )
    return int(found) if int(found) > 0 else None
