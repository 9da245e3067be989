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
from shared.models import ChatRequest, ModelDefaults, effective
from shared.reservations import release
from shared.scripts import Arg, Key, script
from shared.settings import ALL_TENANTS, OPERATOR, Settings
from shared.tokens import estimate_tokens

__all__ = ["Refused", "admit", "enabled", "pinned", "release", "worst_case_usd"]

RATE_WINDOW_TTL_SECONDS = 120  # a minute's request count outlives its minute, then goes


@script("""
-- sent again (redis-py sends a command again when the connection drops with its reply on the way): this
-- job was admitted already; counting its request and holding its cost a second time would refuse it
local again = redis.call('GET', admitted)
if again then return {'ok', again} end
-- holds due for a check: kept while their job waits in the queue or runs, released once it is gone
for _, id in ipairs(redis.call('ZRANGEBYSCORE', reserved_until, '-inf', now_ms, 'LIMIT', 0, 500)) do
  if redis.call('EXISTS', job_prefix .. id, in_progress_prefix .. id) > 0 then
    redis.call('ZADD', reserved_until, now_ms + hold_ms, id)
  else
    redis.call('HDEL', reserved, id)
    redis.call('HDEL', reserved_tenant, id)
    redis.call('ZREM', reserved_until, id)
  end
end
if per_minute and (tonumber(redis.call('GET', rate) or '0') or 0) >= per_minute then
  return {'rate', redis.call('GET', rate)}
end
local owners = {}
local listed = redis.call('HGETALL', reserved_tenant)
for i = 1, #listed, 2 do owners[listed[i]] = listed[i + 1] end
local held, mine = 0, 0
local holds = redis.call('HGETALL', reserved)
for i = 1, #holds, 2 do
  local usd = tonumber(holds[i + 1]) or 0
  held = held + usd
  if owners[holds[i]] == tenant then mine = mine + usd end
end
local cost = tonumber(worst)
local checks = {{'hourly', hourly_cap, spent_hour, held}, {'daily', daily_cap, spent_day, held},
                {'tenant-hourly', tenant_hourly_cap, tenant_spent_hour, mine},
                {'tenant-daily', tenant_daily_cap, tenant_spent_day, mine}}
for _, c in ipairs(checks) do
  if c[2] then
    local used = (tonumber(redis.call('GET', c[3]) or '0') or 0) + c[4]
    if used + cost > c[2] then return {c[1], tostring(used)} end
  end
end
if cost > 0 then
  redis.call('HSET', reserved, job_id, worst)
  redis.call('HSET', reserved_tenant, job_id, tenant)
  redis.call('ZADD', reserved_until, now_ms + hold_ms, job_id)
end
if per_minute then
  redis.call('INCR', rate)
  redis.call('EXPIRE', rate, rate_ttl)
end
redis.call('SET', admitted, worst, 'EX', rate_ttl)
return {'ok', worst}
""")
async def _admit(
    redis, *, reserved: Key, reserved_tenant: Key, reserved_until: Key, spent_hour: Key, spent_day: Key,
    tenant_spent_hour: Key, tenant_spent_day: Key, rate: Key, admitted: Key, job_id: Arg[str], worst: Arg[str],
    now_ms: Arg[int], hold_ms: Arg[int], hourly_cap: Arg[float | None], daily_cap: Arg[float | None],
    per_minute: Arg[int | None], tenant: Arg[str], tenant_hourly_cap: Arg[float | None],
    tenant_daily_cap: Arg[float | None], job_prefix: Arg[str], in_progress_prefix: Arg[str], rate_ttl: Arg[int],
) -> list:  # fmt: skip
    """Sweep the holds due for a check, then count the tenant's request and reserve the request's
    worst case against the global and the tenant's caps, or answer which limit refused it."""
    ...


def enabled(settings: Settings) -> bool:
    return bool(settings.tenant_limits) or any(
        v is not None
        for v in (settings.budget_per_request_usd, settings.budget_hourly_usd, settings.budget_daily_usd,
                  settings.rate_limit_per_minute)
    )  # fmt: skip


def pinned(request: ChatRequest, defaults: ModelDefaults, settings: Settings) -> ChatRequest:
    """The request with the model and max_tokens the worker will use, so the reservation holds."""
    chosen = effective(request, defaults, settings)
    return request.model_copy(update={"model": chosen.model, "max_tokens": chosen.max_tokens})


def worst_case_usd(request: ChatRequest, settings: Settings) -> float | None:
    """A byte a token, the whole max_tokens; a request that may use tools pays for every model turn
    it may take (TOOL_MAX_ROUNDS + 1), and its worker stops before a turn the reservation cannot cover."""
    price = prices.price(request.model or settings.default_model)
    if price is None:
        return None
    prompt = estimate_tokens(request.message + (request.context or ""), worst_case=True) + 32
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
    verdict, value = await _admit(
        redis, reserved=keys.BUDGET_RESERVED, reserved_tenant=keys.BUDGET_RESERVED_TENANT,
        reserved_until=keys.BUDGET_RESERVED_UNTIL, spent_hour=keys.spent_hour(hour), spent_day=keys.spent_day(day),
        tenant_spent_hour=keys.spent_tenant(caller, f"hour:{hour}"),
        tenant_spent_day=keys.spent_tenant(caller, f"day:{day}"), rate=keys.rate(caller, int(now // 60)),
        admitted=keys.admitted(job_id), job_id=job_id, worst=repr(worst), now_ms=int(now * 1000),
        hold_ms=int(settings.budget_reservation_seconds * 1000), hourly_cap=settings.budget_hourly_usd,
        daily_cap=settings.budget_daily_usd, per_minute=rpm, tenant=caller,
        tenant_hourly_cap=limits.hourly_usd if limits else None, tenant_daily_cap=limits.daily_usd if limits else None,
        job_prefix=keys.JOB_PREFIX, in_progress_prefix=keys.IN_PROGRESS_PREFIX, rate_ttl=RATE_WINDOW_TTL_SECONDS,
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
        # the global caps count every tenant: a tenant is told the cap, not what everyone spent
        spent = f"${float(value):.6f} spent or reserved of " if tenant == OPERATOR else "no room left under "
        raise Refused(
            f"{verdict} budget reached: {spent}{name}=${cap:g}, and this "
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
