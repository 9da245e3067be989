"""The dashboard's history: a small time-series in Redis, bounded by time, one hash per minute
(`mcpq:series:<unix minute>`, each kept SERIES_KEPT_SECONDS), written by workers as jobs end and
as they beat, read by the dashboard's charts. Any replica reads the same history.

A minute's fields: `ended:<status>` (jobs that ended), `prompt_tokens`, `completion_tokens`,
`cost:<model>` (USD), `ttft:<i>` (jobs whose first token came within TTFT_EDGES[i] seconds of their
start: a histogram, so p50/p95 over any window add up) and `depth_max` (the longest queue seen).
Junk (a key of another type, a field not ours or not a number) is skipped on read and named once
in a WARNING; a write into a damaged key loses that minute's figure, never the job.
"""

from __future__ import annotations

import bisect
import math
import time

from redis.exceptions import ResponseError

from shared import damaged, keys
from shared.scripts import Arg, Key, script

# seconds; the last bucket (index len(TTFT_EDGES)) is "longer than the last edge"
TTFT_EDGES = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 30, 60, 120)
STATUSES = ("completed", "failed", "cancelled")
MODELS_SHOWN = 5  # cost lines per chart; the rest are summed as "other"


# One ended job into its minute. With a `counted` marker (the job's: keys.usage_counted), only once: a
# call sent again (redis-py sends a command again when the connection drops with its reply on the
# way, and a job's re-run after its worker died ends it again) adds nothing. A field Redis refuses (a
# damaged minute) is skipped, the rest still written: answers Redis's error text, or '' (or 'again').
@script("""
if counted ~= '' and not redis.call('SET', counted, '1', 'NX', 'EX', counted_ttl) then return 'again' end
local refused = ''
local function add(command, field, n)
  local reply = redis.pcall(command, key, field, n)
  if type(reply) == 'table' and reply.err and refused == '' then refused = reply.err end
end
add('HINCRBY', 'ended:' .. status, '1')
add('HINCRBY', 'prompt_tokens', prompt_tokens)
add('HINCRBY', 'completion_tokens', completion_tokens)
if cost then add('HINCRBYFLOAT', 'cost:' .. model, cost) end
if ttft then add('HINCRBY', ttft, '1') end
redis.pcall('EXPIRE', key, ttl)
return refused
""")
async def _record_job(
    redis, *, key: Key, counted: Key, counted_ttl: Arg[int], ttl: Arg[int], status: Arg[str], model: Arg[str],
    prompt_tokens: Arg[str], completion_tokens: Arg[str], cost: Arg[str | None], ttft: Arg[str | None],
) -> bytes:  # fmt: skip
    ...


async def record_job(
    redis, *, status: str, model: str, prompt_tokens: int, completion_tokens: int,
    cost: float | None, first_token_s: float | None, now: float | None = None,
    counted: str | None = None, counted_ttl: int = 0,
) -> None:  # fmt: skip
    """Add one ended job to its minute (one round trip); a damaged minute is skipped with a WARNING.
    `counted`: the job's marker (kept `counted_ttl` seconds), so that it is added once."""
    key = keys.series(int((now or time.time()) // 60))
    refused = await _record_job(
        redis, key=key, counted=counted or "", counted_ttl=counted_ttl, ttl=keys.SERIES_KEPT_SECONDS,
        status=status, model=model, prompt_tokens=str(max(0, prompt_tokens)),
        completion_tokens=str(max(0, completion_tokens)), cost=None if cost is None else repr(float(cost)),
        ttft=ttft_field(first_token_s),
    )  # fmt: skip
    said = refused.decode(errors="replace") if isinstance(refused, bytes) else str(refused or "")
    if said and said != "again":
        damaged.warn(key, damaged.refused(ResponseError(said)))


def ttft_field(first_token_s: float | None) -> str | None:
    """The histogram field a job whose first token came `first_token_s` after its start adds to."""
    return None if first_token_s is None else f"ttft:{bisect.bisect_left(TTFT_EDGES, first_token_s)}"


@script("""
local depth = redis.call('ZCARD', queue)
local kind = redis.call('TYPE', series).ok
if kind ~= 'hash' and kind ~= 'none' then return -1 end
local seen = tonumber(redis.call('HGET', series, 'depth_max'))
if not seen or depth > seen then redis.call('HSET', series, 'depth_max', depth) end
redis.call('EXPIRE', series, ttl)
return depth
""")
async def _sample_depth(redis, *, queue: Key, series: Key, ttl: Arg[int]) -> int:
    """The queue's length, kept as its minute's `depth_max` when longer; -1 when the minute is junk."""
    ...


async def sample_depth(redis, now: float | None = None) -> None:
    """Note the queue's length in this minute's hash (each worker's heartbeat, each dashboard
    snapshot): the chart of jobs waiting or running has a point even in a minute when no job ended."""
    key = keys.series(int((now or time.time()) // 60))
    try:
        if await _sample_depth(redis, queue=keys.QUEUE, series=key, ttl=keys.SERIES_KEPT_SECONDS) < 0:
            damaged.warn(key)
    except ResponseError as e:  # the queue key itself is junk: nothing to sample
        damaged.warn(keys.QUEUE, damaged.refused(e))


async def read(redis, minutes: int = 60, step: int = 1, now: float | None = None) -> dict:
    """The last `minutes`, in buckets of `step` minutes, oldest first: each series a list with one
    value per bucket (None where nothing was recorded)."""
    last = int((now or time.time()) // 60)
    first = last - minutes + 1
    names = [keys.series(m) for m in range(first, last + 1)]
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(name)
        found = damaged.replies(await pipe.execute(raise_on_error=False), names, [{}] * len(names))
    buckets = [Bucket() for _ in range(math.ceil(minutes / step))]
    for i, fields in enumerate(found):
        buckets[i // step].add(fields)
    return _shaped(buckets, first, step)


class Bucket:
    """One bucket's sums, from its minutes' hashes; anything that is not ours is left out."""

    def __init__(self) -> None:
        self.ended = dict.fromkeys(STATUSES, 0)
        self.tokens = {"prompt_tokens": 0, "completion_tokens": 0}
        self.cost: dict[str, float] = {}
        self.ttft = [0] * (len(TTFT_EDGES) + 1)
        self.depth: int | None = None

    def add(self, fields: dict) -> None:
        for raw_name, raw_value in fields.items():
            name = raw_name.decode(errors="replace") if isinstance(raw_name, bytes) else str(raw_name)
            value = _number(raw_value)
            if value is None:
                continue
            kind, _, part = name.partition(":")
            if kind == "ended" and part in self.ended:
                self.ended[part] += int(value)
            elif name in self.tokens:
                self.tokens[name] += int(value)
            elif kind == "cost" and part:
                self.cost[part] = self.cost.get(part, 0.0) + value
            elif kind == "ttft" and part.isdigit() and int(part) < len(self.ttft):
                self.ttft[int(part)] += int(value)
            elif name == "depth_max":
                self.depth = max(self.depth or 0, int(value))


def _number(raw) -> float | None:
    """A counter's value; junk (not a number, negative, not finite, absurd) is None."""
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and 0 <= value < 1e15 else None


def percentile(counts: list[int], q: float) -> float | None:
    """The q-quantile (0..1) of a TTFT histogram, linear within its bucket; None with no samples."""
    total = sum(counts)
    if not total:
        return None
    rank, seen = q * total, 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            low = TTFT_EDGES[i - 1] if i else 0.0
            high = TTFT_EDGES[i] if i < len(TTFT_EDGES) else TTFT_EDGES[-1]
            return round(low + (high - low) * (rank - seen) / n, 4)
        seen += n
    return TTFT_EDGES[-1]


def _shaped(buckets: list[Bucket], first_minute: int, step: int) -> dict:
    seconds = step * 60
    totals: dict[str, float] = {}
    for b in buckets:
        for model, usd in b.cost.items():
            totals[model] = totals.get(model, 0.0) + usd
    shown = sorted(totals, key=lambda m: -totals[m])[:MODELS_SHOWN]
    cost = {m: [round(b.cost.get(m, 0.0), 8) for b in buckets] for m in shown}
    if len(totals) > len(shown):
        cost["other"] = [round(sum(v for m, v in b.cost.items() if m not in shown), 8) for b in buckets]
    return {
        "start": [(first_minute + i * step) * 60 for i in range(len(buckets))],
        "step_seconds": seconds,
        "jobs_per_second": {s: [round(b.ended[s] / seconds, 4) for b in buckets] for s in STATUSES},
        "queue_depth": [b.depth for b in buckets],
        "ttft_p50": [percentile(b.ttft, 0.5) for b in buckets],
        "ttft_p95": [percentile(b.ttft, 0.95) for b in buckets],
        "tokens_per_second": [round(b.tokens["completion_tokens"] / seconds, 3) for b in buckets],
        "cost_usd": cost,
    }
