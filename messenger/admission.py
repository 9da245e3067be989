"""Budgets and rate limits, enforced when a request is admitted, atomically across every replica.

The script reserves the request's worst-case cost (its prompt, counted generously as one token per
byte, plus `max_tokens` of output at the model's price) against the global hourly and daily caps
(BUDGET_*) and its tenant's own (TENANT_LIMITS), and counts it against the tenant's requests a minute;
the worker settles the real cost when the job ends (worker/accounting.py).

A reservation lives as long as its job: each admission sweeps the reservations that are due for a
check (BUDGET_RESERVATION_SECONDS after they were made or last checked) and keeps those whose job
still waits in the queue or runs (`arq:job:<id>` or `arq:in-progress:<id>` exists), releasing the
rest: a job that settled without counting, was cancelled, dead-lettered or expired.
"""

from __future__ import annotations

import time

from shared import keys, prices
from shared.errors import Refused
from shared.models import ChatRequest, ModelDefaults
from shared.reservations import release
from shared.settings import ALL_TENANTS, OPERATOR, Settings

__all__ = ["Refused", "admit", "enabled", "pinned", "release", "worst_case_usd"]

ADMIT_LUA = """
-- KEYS: 1 reserved hash (job -> USD), 2 reserved-tenant hash (job -> tenant), 3 reserved-until zset,
--       4 spent this hour, 5 spent today, 6 the tenant's spent this hour, 7 the tenant's spent today,
--       8 the tenant's requests this minute
-- ARGV: 1 job id, 2 worst-case USD, 3 now ms, 4 hold ms, 5 hourly cap, 6 daily cap, 7 requests a minute,
--       8 tenant, 9 tenant hourly cap, 10 tenant daily cap ('' = no limit), 11 arq job prefix,
--       12 arq in-progress prefix
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[3], 'LIMIT', 0, 500)
for _, id in ipairs(due) do
  if redis.call('EXISTS', ARGV[11] .. id, ARGV[12] .. id) > 0 then
    redis.call('ZADD', KEYS[3], tonumber(ARGV[3]) + tonumber(ARGV[4]), id)
  else
    redis.call('HDEL', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
    redis.call('ZREM', KEYS[3], id)
  end
end
if ARGV[7] ~= '' and tonumber(redis.call('GET', KEYS[8]) or '0') >= tonumber(ARGV[7]) then
  return {'rate', redis.call('GET', KEYS[8])}
end
local owners = {}
local pairs_ = redis.call('HGETALL', KEYS[2])
for i = 1, #pairs_, 2 do owners[pairs_[i]] = pairs_[i + 1] end
local held, mine = 0, 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local v = tonumber(all[i + 1]) or 0
  held = held + v
  if owners[all[i]] == ARGV[8] then mine = mine + v end
end
local worst = tonumber(ARGV[2])
local function over(cap, key, extra)
  if cap == '' then return nil end
  local used = (tonumber(redis.call('GET', key) or '0') or 0) + extra
  if used + worst > tonumber(cap) then return tostring(used) end
  return nil
end
local checks = {{'hourly', ARGV[5], KEYS[4], held}, {'daily', ARGV[6], KEYS[5], held},
                {'tenant-hourly', ARGV[9], KEYS[6], mine}, {'tenant-daily', ARGV[10], KEYS[7], mine}}
for _, c in ipairs(checks) do
  local used = over(c[2], c[3], c[4])
  if used then return {c[1], used} end
end
if worst > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[8])
  redis.call('ZADD', KEYS[3], tonumber(ARGV[3]) + tonumber(ARGV[4]), ARGV[1])
end
if ARGV[7] ~= '' then
  redis.call('INCR', KEYS[8])
  redis.call('EXPIRE', KEYS[8], 120)
end
return {'ok', ARGV[2]}
"""


def enabled(settings: Settings) -> bool:
    return bool(settings.tenant_limits) or any(
        v is not None
        for v in (settings.budget_per_request_usd, settings.budget_hourly_usd, settings.budget_daily_usd,
                  settings.rate_limit_per_minute)
    )  # fmt: skip


def pinned(request: ChatRequest, defaults: ModelDefaults, settings: Settings) -> ChatRequest:
    """The request with the model and max_tokens the worker will use, so the reservation holds."""
    return request.model_copy(
        update={
            "model": request.model or defaults.default_model or settings.default_model,
            "max_tokens": request.max_tokens or defaults.max_tokens or settings.openai_max_tokens,
        }
    )


def worst_case_usd(request: ChatRequest, settings: Settings) -> float | None:
    """A byte a token, the whole max_tokens; a request that may use tools pays for every model turn
    it may take (TOOL_MAX_ROUNDS + 1), and its worker stops before a turn the reservation cannot cover."""
    price = prices.price(request.model or settings.default_model)
    if price is None:
        return None
    prompt = len(request.message.encode()) + len((request.context or "").encode()) + 32
    if request.conversation_id:
        prompt += 4 * settings.history_max_tokens
    turns = settings.tool_max_rounds + 1 if request.mcp_servers else 1
    return turns * (prompt * price.input + (request.max_tokens or 0) * price.output) / 1_000_000


def _resets_in(window: str, now: float) -> str:
    size = {"rate": 60, "hourly": 3600, "daily": 86_400}[window]
    seconds = int(size - now % size) + 1
    return f"{seconds} s" if seconds < 120 else f"{seconds // 60} min"


def _limit_name(settings: Settings, tenant: str, field: str) -> str:
    """Which setting a tenant's limit comes from, as a person would look it up."""
    own = settings.tenant_limits.get(tenant)
    if own is not None and getattr(own, field) is not None:
        return f"TENANT_LIMITS[{tenant!r}].{field}"
    shared = settings.tenant_limits.get(ALL_TENANTS)
    if shared is not None and getattr(shared, field) is not None:
        return f"TENANT_LIMITS['*'].{field}"
    return "RATE_LIMIT_PER_MINUTE"


def _per_request(request: ChatRequest, settings: Settings, worst: float, tenant: str) -> None:
    caps = [(settings.budget_per_request_usd, "BUDGET_PER_REQUEST_USD")]
    if tenant != OPERATOR:
        own = settings.limits_for(tenant).per_request_usd
        caps.append((own, _limit_name(settings, tenant, "per_request_usd")))
    for cap, name in caps:
        if cap is not None and worst > cap:
            turns = (
                f", over up to {settings.tool_max_rounds + 1} model turns with tools"
                if request.mcp_servers
                else ""
            )
            who = f" for tenant {tenant!r}" if name.startswith("TENANT") else ""
            raise Refused(
                f"this request could cost up to ${worst:.6f} ({request.max_tokens} max_tokens on {request.model}"
                f"{turns}), over {name}=${cap:g}{who}; ask for fewer max_tokens"
                + (" or lower TOOL_MAX_ROUNDS" if turns else "")
            )


async def admit(
    redis, settings: Settings, request: ChatRequest, *, job_id: str, caller: str = OPERATOR
) -> None:
    """Reserve the request's worst-case cost for tenant `caller` and count it against its rate, or
    raise Refused naming the limit. The operator is held only to the global caps."""
    limits = settings.limits_for(caller) if caller != OPERATOR else None
    caps = (settings.budget_per_request_usd, settings.budget_hourly_usd, settings.budget_daily_usd,
            *((limits.per_request_usd, limits.hourly_usd, limits.daily_usd) if limits else ()))  # fmt: skip
    worst = worst_case_usd(request, settings)
    if worst is None:
        if any(c is not None for c in caps):
            raise Refused(
                f"model {request.model!r} has no known price, so the cost caps cannot be enforced for it; "
                "add its price to MODEL_PRICES or PRICES_FILE"
            )
        worst = 0.0
    _per_request(request, settings, worst, caller)
    rpm = limits.requests_per_minute if limits else settings.rate_limit_per_minute
    now = time.time()
    hour, day = time.strftime("%Y-%m-%dT%H", time.gmtime(now)), time.strftime("%Y-%m-%d", time.gmtime(now))
    verdict, value = await redis.register_script(ADMIT_LUA)(
        keys=[
            keys.BUDGET_RESERVED, keys.BUDGET_RESERVED_TENANT, keys.BUDGET_RESERVED_UNTIL,
            keys.spent_hour(hour), keys.spent_day(day),
            keys.spent_tenant(caller, f"hour:{hour}"), keys.spent_tenant(caller, f"day:{day}"),
            keys.rate(caller, int(now // 60)),
        ],
        args=[
            job_id, repr(worst), int(now * 1000), int(settings.budget_reservation_seconds * 1000),
            _cap(settings.budget_hourly_usd), _cap(settings.budget_daily_usd), _cap(rpm), caller,
            _cap(limits.hourly_usd if limits else None), _cap(limits.daily_usd if limits else None),
            keys.JOB_PREFIX, keys.IN_PROGRESS_PREFIX,
        ],
    )  # fmt: skip
    _refuse(verdict.decode(), value, settings, caller, worst, now, rpm)


def _refuse(verdict: str, value, settings: Settings, tenant: str, worst: float, now: float, rpm) -> None:
    """The script's verdict as a Refused naming the limit, or nothing when it admitted the request."""
    if verdict == "rate":
        name = (
            "RATE_LIMIT_PER_MINUTE"
            if tenant == OPERATOR
            else _limit_name(settings, tenant, "requests_per_minute")
        )
        raise Refused(
            f"rate limit reached: {name}={rpm} requests a minute for tenant {tenant!r}; "
            f"it resets in {_resets_in('rate', now)}"
        )
    if verdict in ("hourly", "daily"):
        cap = settings.budget_hourly_usd if verdict == "hourly" else settings.budget_daily_usd
        name = "BUDGET_HOURLY_USD" if verdict == "hourly" else "BUDGET_DAILY_USD"
        raise Refused(
            f"{verdict} budget reached: ${float(value):.6f} spent or reserved of {name}=${cap:g}, and this "
            f"request could cost up to ${worst:.6f}; it resets in {_resets_in(verdict, now)}"
        )
    if verdict in ("tenant-hourly", "tenant-daily"):
        window = verdict.removeprefix("tenant-")
        field = f"{window}_usd"
        cap = getattr(settings.limits_for(tenant), field)
        raise Refused(
            f"tenant {tenant!r} {window} budget reached: ${float(value):.6f} spent or reserved of "
            f"{_limit_name(settings, tenant, field)}=${cap:g}, and this request could cost up to "
            f"${worst:.6f}; it resets in {_resets_in(window, now)}"
        )


def _cap(value: float | int | None) -> str:
    return "" if value is None else repr(value)
