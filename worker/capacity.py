"""A provider's capacity, shared by every worker on the Redis: MODEL_LIMITS and upstream 429s.

Before each model call a job takes its model's capacity in one script (`_take`): the model's
cool-down (set after a provider's 429), `rpm` and `tpm` as GCRA schedules (the next free time in ms,
so rpm 600 lets one call through every 100 ms, never 600 at the top of a minute) and `concurrency`
as leased slots. The script reads Redis's own clock, so the workers' clocks do not matter.

A job over a limit is not failed and not counted as a try: it keeps its worker slot and waits, and
its status says so (`mcpq:capacity:waiting:<job id>`, and the heartbeat's `capacity_waiting`). It
sleeps exactly until the schedule or the cool-down lets it through; one waiting for a concurrency
slot is woken by the release (PUBLISH mcpq:capacity <model>) or, if that message is lost, by the
earliest slot lease's end. Within a worker, one job per model asks Redis at a time (the others wait
their turn, in order), so a thousand waiting jobs make one script call per freed slot, not a thousand.

Keeping the worker slot costs an asyncio task, not a thread: a worker with --concurrency 50 can hold
many waiting jobs cheaply, and a job that waits keeps its place and starts the moment capacity frees
(no re-queue, no re-claim, no lost order). The price: a worker whose slots are all waiting for one
limited model takes no job for another model; give such workers a larger --concurrency.

A slot is a lease: the heartbeat renews it (`renew`), so a SIGKILLed worker's slots come back
within WORKER_LEASE_SECONDS. TPM counts the prompt's estimate up front and settles with the usage the
provider reports at the end of the stream. A job fails only at its own JOB_TIMEOUT_SECONDS, from the
job's start, with `RateLimited` naming the limit; a wait known to outlast the deadline (a long
Retry-After) fails at once. A model with a fallback (MODEL_FALLBACKS) waits at most
FALLBACK_PATIENCE_SECONDS for its limits and not at all after a 429: RateLimited moves the job on
to its next model.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from redis.exceptions import RedisError

from shared import keys
from shared.connection import subscribe_forever
from shared.errors import ProviderError, RateLimited
from shared.scripts import Arg, Args, Key, script
from shared.settings import ModelLimits, Settings
from worker.providers.base import ModelCall, StreamEnd, estimate_usage

log = logging.getLogger("worker.capacity")

MAX_COOL_DOWN_SECONDS = 3600.0  # a Retry-After beyond this (or junk) is capped
MIN_COOL_DOWN_SECONDS = 0.05
BACKOFF_SECONDS = (1.0, 60.0)  # a 429 without Retry-After: 1 s, doubling per 429 in a row, at most 60 s
PACE_GRACE_MS = 10.0  # a tpm call admitted this late keeps the schedule (no rate lost to timer jitter)
TPM_HORIZON_MS = 86_400_000  # a token schedule further ahead than this is junk
SLOT_HORIZON_MS = 86_400_000  # a slot leased further ahead than this is junk (leases are seconds)
FALLBACK_PATIENCE_SECONDS = 1.0  # a model with a fallback waits no longer: its next model answers now


@dataclass(frozen=True)
class Until:
    """How long a call may wait for its model: the job's deadline, or sooner when it can fall back."""

    at: float  # monotonic
    fallback: bool


_NOW = """local t = redis.call('TIME')  -- Redis's clock: the workers' clocks never matter
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
_OWN = """local function own(key, kind)  -- a key of another type (junk set by hand) is dropped, not an error
  local k = redis.call('TYPE', key)['ok']
  if k ~= kind and k ~= 'none' then redis.call('DEL', key) end
end
"""


@script(
    _OWN
    + _NOW
    + f"local max_cool_ms, slot_horizon_ms = {int(MAX_COOL_DOWN_SECONDS * 1000) + 1000}, {SLOT_HORIZON_MS}\n"
    + """
own(models, 'set')
redis.call('SADD', models, model)
local cd = redis.call('PTTL', cooldown)  -- no expiry, or longer than any 429 may set: junk
if cd == -1 or cd > max_cool_ms then redis.call('DEL', cooldown) elseif cd > 0 then return {'cooldown', cd} end
-- a schedule (next free time, ms); junk (another type, not a number, absurdly far ahead) reads as none
local function schedule(key, horizon)
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'none' then return now end
  local v = nil
  if kind == 'string' then v = tonumber(redis.call('GET', key)) end
  if not v or v ~= v or v > now + horizon then redis.call('DEL', key) return now end
  return v
end
local rate_at, token_at, delay = now, now, 0
if rpm then  -- a call up to one interval (at most 1 s) early takes its turn now and sleeps until it
  local interval = 60000 / rpm
  local ahead = math.min(interval, 1000)
  rate_at = schedule(rate, 2 * interval + 1000)
  if rate_at - now > ahead then return {'rpm', math.ceil(rate_at - now - ahead)} end
  delay = math.max(0, rate_at - now)
  rate_at = math.max(rate_at, now) + interval
end
if tpm then
  token_at = schedule(tokens, tpm_horizon)
  if token_at > now then return {'tpm', math.ceil(token_at - now)} end
  token_at = math.max(token_at, now - grace_ms) + cost * 60000 / tpm
end
if concurrency then
  own(slots, 'zset')
  redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)  -- lapsed leases, and ones no lease reaches:
  redis.call('ZREMRANGEBYSCORE', slots, '(' .. string.format('%.0f', now + slot_horizon_ms), '+inf')
  if not redis.call('ZSCORE', slots, holder) and redis.call('ZCARD', slots) >= concurrency then
    local first = redis.call('ZRANGE', slots, 0, 0, 'WITHSCORES')
    return {'concurrency', math.max(1, math.ceil(tonumber(first[2]) - now))}
  end
  redis.call('ZADD', slots, now + lease_ms, holder)
  redis.call('PEXPIRE', slots, 2 * lease_ms)
end
if rpm then redis.call('SET', rate, string.format('%.3f', rate_at), 'PX', math.ceil(rate_at - now) + 60000) end
if tpm then redis.call('SET', tokens, string.format('%.3f', token_at), 'PX', math.ceil(token_at - now) + 60000) end
return {'ok', math.ceil(delay)}
"""
)
async def _take(
    redis, *, cooldown: Key, rate: Key, tokens: Key, slots: Key, models: Key, model: Arg[str],
    rpm: Arg[int | None], tpm: Arg[int | None], cost: Arg[int], concurrency: Arg[int | None],
    holder: Arg[str], lease_ms: Arg[int], grace_ms: Arg[float], tpm_horizon: Arg[int],
) -> list:  # fmt: skip
    """Take the model's capacity for one call, all or nothing: {'ok', ms to sleep before the call}
    (its turn in the rpm schedule), or the limit in the way and the ms until it may let it through.
    Taking a turn ahead keeps the schedule exact: a waiter's timer jitter never slows the rate."""
    ...


@script(
    _NOW
    + """
local released = 0
if holder and redis.call('TYPE', slots)['ok'] == 'zset' then released = redis.call('ZREM', slots, holder) end
if tpm and delta ~= 0 and redis.call('TYPE', tokens)['ok'] == 'string' then
  local at = tonumber(redis.call('GET', tokens))
  if at then
    at = math.max(at + delta * 60000 / tpm, now)
    redis.call('SET', tokens, string.format('%.3f', at), 'PX', math.ceil(at - now) + 60000)
  end
end
if released > 0 then redis.call('PUBLISH', channel, 'free ' .. model) end
return released
"""
)
async def _give_back(
    redis, *, slots: Key, tokens: Key, channel: Arg[str], model: Arg[str], holder: Arg[str | None],
    tpm: Arg[int | None], delta: Arg[int],
) -> int:  # fmt: skip
    """Free the call's slot (and wake the workers waiting for one), and settle its tokens: the real
    count minus the estimate taken up front."""
    ...


@script(
    _OWN
    + _NOW
    + """
if redis.call('EXISTS', mine) == 1 then  -- sent again, its reply lost: the first run counted this 429
  return math.max(redis.call('PTTL', cooldown), 0)
end
redis.call('SET', mine, '1', 'EX', mine_ttl)
local ms = given_ms
if not ms then
  own(strikes, 'string')
  local v = redis.call('GET', strikes)
  if v and not string.match(v, '^[0-9]+$') then redis.call('DEL', strikes) end
  local n = tonumber(redis.call('INCR', strikes)) or 1
  ms = math.min(backoff_ms * 2 ^ math.min(n - 1, 20), backoff_max_ms)
  redis.call('PEXPIRE', strikes, 2 * ms + 10000)
end
own(models, 'set')
own(counted, 'hash')
redis.call('SADD', models, model)
local seen = redis.call('HGET', counted, model)
if seen and not string.match(seen, '^[0-9]+$') then redis.call('HDEL', counted, model) end
redis.call('HINCRBY', counted, model, 1)
if redis.call('PTTL', cooldown) < ms then
  redis.call('SET', cooldown, tostring(ms), 'PX', ms)
  redis.call('PUBLISH', channel, 'cool ' .. model)
end
return redis.call('PTTL', cooldown)
"""
)
async def _cool_down(
    redis, *, cooldown: Key, strikes: Key, models: Key, counted: Key, mine: Key, model: Arg[str], channel: Arg[str],
    given_ms: Arg[int | None], backoff_ms: Arg[int], backoff_max_ms: Arg[int], mine_ttl: Arg[int],
) -> int:  # fmt: skip
    """Count a 429 and pause the model for everyone: for the provider's Retry-After, else an
    exponential backoff; never shortens a cool-down already running. Answers its ms left. `mine`:
    this call's own key (a nonce), so the call sent again after a lost reply counts nothing twice."""
    ...


@script(
    _NOW
    + """
if redis.call('TYPE', slots)['ok'] ~= 'zset' then return 0 end
for _, holder in ipairs(held) do redis.call('ZADD', slots, 'XX', now + lease_ms, holder) end
redis.call('PEXPIRE', slots, 2 * lease_ms)
return #held
"""
)
async def _renew(redis, *, slots: Key, lease_ms: Arg[int], held: Args) -> int:
    """Renew this worker's leases on a model's slots; a slot already given up stays gone."""
    ...


def retry_after_seconds(headers) -> float | None:
    """The provider's Retry-After (`retry-after-ms`, seconds or an HTTP date), or None when absent
    or junk; capped at MAX_COOL_DOWN_SECONDS."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = headers.get(name) if headers is not None else None
        if raw is None:
            continue
        try:
            seconds = float(raw) * scale
        except ValueError:
            try:
                seconds = parsedate_to_datetime(raw).timestamp() - time.time()
            except (TypeError, ValueError, IndexError, OverflowError):
                continue
        if math.isfinite(seconds) and seconds >= 0:
            return min(max(seconds, MIN_COOL_DOWN_SECONDS), MAX_COOL_DOWN_SECONDS)
    return None


def prompt_tokens(call: ModelCall) -> int:
    """What TPM counts up front: the prompt's estimate (about four characters a token)."""
    return estimate_usage(call.messages, 0).prompt_tokens


class Capacity:
    """One per worker process: takes and gives back its jobs' model capacity."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.lease_ms = int(settings.worker_lease_seconds * 1000)
        self.held: dict[str, str] = {}  # slot holder -> model
        self.waiting: dict[str, dict] = {}  # job id -> what it waits for (the heartbeat shows it)
        self.received_429s: dict[str, int] = {}  # model -> 429s this worker received
        self._locks: dict[str, asyncio.Lock] = {}
        self._freed: dict[str, asyncio.Event] = {}  # set when a slot of the model frees anywhere
        self._cooling: dict[str, float] = {}  # model -> monotonic end of a cool-down this worker heard of
        self._listener: asyncio.Task | None = None

    async def turn(
        self, redis, job_id: str, call: ModelCall, *, deadline: float,
        stream: Callable[[], Awaitable[StreamEnd | None]], streamed: Callable[[], bool], fallback: bool = False,
    ) -> StreamEnd | None:  # fmt: skip
        """Run one model call within the model's capacity: wait for it, call, give it back. A 429
        before any text cools the model down for every worker, and the call waits and goes again.
        With a `fallback` model to go on to, it waits at most FALLBACK_PATIENCE_SECONDS for the
        model's limits, and a 429 moves it on at once (RateLimited)."""
        limits = self.settings.model_limits_for(call.model)
        cost = prompt_tokens(call) if limits and limits.tpm else 0
        if limits and limits.tpm and cost > limits.tpm:  # admitted, it would hold the model for minutes
            raise RateLimited(
                f"the prompt's ~{cost} tokens can never fit model {call.model!r}'s MODEL_LIMITS "
                f"tpm={limits.tpm} (tokens a minute); send less, or raise the limit",
                model=call.model, limit="tpm", wait=None, upstream=False,
            )  # fmt: skip
        while True:
            if limits is None and self._cooling.get(call.model, 0) <= time.monotonic():
                holder, delay = None, 0.0  # nothing to enforce, and no cool-down heard of: no round trip
            else:
                until = min(deadline, time.monotonic() + FALLBACK_PATIENCE_SECONDS) if fallback else deadline
                holder, delay = await self._admit(
                    redis, job_id, call.model, limits, cost, Until(until, fallback)
                )
            end, settle = None, 0
            try:
                if delay > 0:  # its turn in the rpm schedule (no limits: no loop turn before the call)
                    await asyncio.sleep(delay)
                end = await stream()
                if end is not None and end.usage is not None and limits and limits.tpm:
                    settle = end.usage.total_tokens - cost
            except ProviderError as e:
                if e.status != 429 or streamed() or isinstance(e, RateLimited):
                    raise
                wait = await self._upstream_429(redis, call.model, e)
                if fallback:  # its next model answers now; this one's cool-down still holds for the rest
                    raise self._too_late(call.model, "cooldown", wait, fallback) from None
                continue
            finally:
                if holder is not None or settle:
                    await asyncio.shield(self._give_back(redis, call.model, holder, limits, settle))
            return end

    async def _admit(
        self, redis, job_id: str, model: str, limits: ModelLimits | None, cost: int, until: Until
    ) -> tuple[str | None, float]:
        """Wait until the model lets one more call through; answers the slot's holder (None when
        the model has no concurrency limit) and the seconds until its turn. Raises RateLimited at
        the job's deadline."""
        if limits is None and self._cooling.get(model, 0) <= time.monotonic():
            return None, 0.0  # nothing to enforce, and no cool-down heard of: no round trip
        self._listen(redis)
        holder = f"{job_id}:{uuid.uuid4().hex[:8]}"
        lock = self._locks.setdefault(model, asyncio.Lock())
        try:
            if lock.locked():
                await self._show_wait(redis, job_id, model, "turn", None)
            try:
                async with asyncio.timeout(max(0.0, until.at - time.monotonic())):
                    await lock.acquire()
            except TimeoutError:
                limit = self.waiting.get(job_id, {}).get("limit", "turn")
                raise self._too_late(model, limit, None, until.fallback) from None
            try:
                delay = await self._wait_turn(redis, job_id, model, limits, cost, holder, until)
            finally:
                lock.release()
        finally:
            if self.waiting.pop(job_id, None) is not None:
                with contextlib.suppress(RedisError, OSError):
                    await redis.delete(keys.capacity_waiting(job_id))
        if limits is not None and limits.concurrency:
            self.held[holder] = model
            return holder, delay
        return None, delay

    async def _wait_turn(
        self, redis, job_id: str, model: str, limits: ModelLimits | None, cost: int, holder: str, until: Until
    ) -> float:  # fmt: skip
        """Ask Redis until the model lets the call through; answers the seconds until its turn."""
        while True:
            freed = self._freed.setdefault(model, asyncio.Event())
            freed.clear()
            verdict, wait_ms = await _take(
                redis, cooldown=keys.capacity("cooldown", model), rate=keys.capacity("rpm", model),
                tokens=keys.capacity("tpm", model), slots=keys.capacity("slots", model),
                models=keys.CAPACITY_MODELS, model=model, rpm=limits.rpm if limits else None,
                tpm=limits.tpm if limits else None, cost=cost, concurrency=limits.concurrency if limits else None,
                holder=holder, lease_ms=self.lease_ms, grace_ms=PACE_GRACE_MS, tpm_horizon=TPM_HORIZON_MS,
            )  # fmt: skip
            verdict, wait = verdict.decode(), int(wait_ms) / 1000
            if verdict == "ok":
                self._cooling.pop(model, None)
                return wait
            left = until.at - time.monotonic()
            if verdict == "cooldown":
                self._cooling[model] = time.monotonic() + wait
            if left <= 0 or (verdict != "concurrency" and wait >= left):
                raise self._too_late(model, verdict, wait, until.fallback)
            await self._show_wait(redis, job_id, model, verdict, wait)
            if verdict == "concurrency":  # woken by a release, or at the earliest lease's end
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(wait, left)):
                        await freed.wait()
            else:
                await asyncio.sleep(wait)

    async def _show_wait(self, redis, job_id: str, model: str, limit: str, wait: float | None) -> None:
        """The job's status while it waits: in Redis for get_job, in the heartbeat for health."""
        now = time.time()
        shown = self.waiting.get(job_id)
        if shown is not None and shown["limit"] == limit:
            return
        record = {"model": model, "limit": limit, "since": round(shown["since"] if shown else now, 3),
                  "until": round(now + wait, 3) if wait is not None else None}  # fmt: skip
        self.waiting[job_id] = record
        with contextlib.suppress(RedisError, OSError):
            await redis.set(keys.capacity_waiting(job_id), json.dumps(record), px=self.lease_ms)

    def _too_late(self, model: str, limit: str, wait: float | None, fallback: bool) -> RateLimited:
        timeout = self.settings.job_timeout_seconds
        if limit == "cooldown":
            why = f"the provider answered 429 for model {model!r} and asked every worker to wait"
        elif limit == "turn":
            why = f"jobs ahead of this one are waiting for model {model!r}'s capacity"
        else:
            value = getattr(self.settings.model_limits_for(model), limit, None)
            why = f"model {model!r} is at its limit MODEL_LIMITS {limit}={value}"
        more = f" {wait:.1f} s more" if wait is not None else ""
        allowed = (
            f"a model with a fallback (MODEL_FALLBACKS) waits at most {FALLBACK_PATIENCE_SECONDS:g} s"
            if fallback
            else f"JOB_TIMEOUT_SECONDS={timeout:g} (from the job's start) allows"
        )
        return RateLimited(
            f"no capacity in time: {why}; it would need{more or ' to wait longer'} than {allowed}",
            model=model, limit=limit, wait=wait, upstream=limit == "cooldown",
        )  # fmt: skip

    async def _upstream_429(self, redis, model: str, e: ProviderError) -> float:
        """Count the 429 and cool the model down for everyone; answers the seconds it cools down."""
        self.received_429s[model] = self.received_429s.get(model, 0) + 1
        given = int(e.retry_after * 1000) if e.retry_after is not None else None
        left_ms = await _cool_down(
            redis, cooldown=keys.capacity("cooldown", model), strikes=keys.capacity("strikes", model),
            models=keys.CAPACITY_MODELS, counted=keys.CAPACITY_429S, mine=keys.capacity_cooled(uuid.uuid4().hex),
            model=model, channel=keys.CAPACITY_CHANNEL, given_ms=given, backoff_ms=int(BACKOFF_SECONDS[0] * 1000),
            backoff_max_ms=int(BACKOFF_SECONDS[1] * 1000), mine_ttl=keys.CAPACITY_COOLED_SECONDS,
        )  # fmt: skip
        self._cooling[model] = time.monotonic() + int(left_ms) / 1000
        log.warning("model %s answered 429: every worker waits %.1f s for it", model, int(left_ms) / 1000)
        return int(left_ms) / 1000

    async def _give_back(self, redis, model: str, holder: str | None, limits, settle: int) -> None:
        if holder is not None:
            self.held.pop(holder, None)
        try:
            await _give_back(
                redis, slots=keys.capacity("slots", model), tokens=keys.capacity("tpm", model),
                channel=keys.CAPACITY_CHANNEL, model=model, holder=holder,
                tpm=limits.tpm if limits else None, delta=settle,
            )  # fmt: skip
        except (RedisError, OSError) as e:  # the lease lapses on its own
            log.warning("could not give back model %s's capacity (%s)", model, type(e).__name__)

    async def renew(self, redis) -> None:
        """The heartbeat's part: keep this worker's slot leases and waiting records alive."""
        by_model: dict[str, list[str]] = {}
        for holder, model in list(self.held.items()):
            by_model.setdefault(model, []).append(holder)
        for model, held in by_model.items():
            await _renew(redis, slots=keys.capacity("slots", model), lease_ms=self.lease_ms, held=held)
        if self.waiting:
            async with redis.pipeline(transaction=False) as pipe:
                for job_id in list(self.waiting):
                    pipe.pexpire(keys.capacity_waiting(job_id), self.lease_ms)
                await pipe.execute()

    def waiting_by_model(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in self.waiting.values():
            counts[record["model"]] = counts.get(record["model"], 0) + 1
        return counts

    def _listen(self, redis) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(self._listen_forever(redis))

    async def _listen_forever(self, redis) -> None:
        """`free <model>`: a slot freed somewhere, wake this worker's waiter; `cool <model>`: the
        model cools down, so its next call asks Redis even when it has no MODEL_LIMITS."""

        def subscribed() -> None:
            for event in self._freed.values():  # anything freed while we were not listening
                event.set()

        def told(data: bytes) -> None:
            kind, _, model = data.decode(errors="replace").partition(" ")
            if kind == "free" and model in self._freed:
                self._freed[model].set()
            elif kind == "cool":
                self._cooling[model] = math.inf

        await subscribe_forever(
            redis, {keys.CAPACITY_CHANNEL: told}, on_subscribed=subscribed, what="capacity"
        )

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
