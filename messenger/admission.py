"""Budgets and rate limits, enforced when a request is admitted, atomically across every replica.

The script reserves the request's worst-case cost (its prompt, counted generously as one token per
byte, plus `max_tokens` of output at the model's price) against the hourly and daily caps; the worker
settles the real cost when the job ends (worker/accounting.py). A reservation lapses after
BUDGET_RESERVATION_SECONDS, so a job whose worker died cannot hold budget forever.
"""

from __future__ import annotations

import time

from shared import keys, prices
from shared.models import ChatRequest, ModelDefaults
from shared.settings import Settings

ADMIT_LUA = """
-- KEYS: reserved hash, reserved-until zset, spent this hour, spent today, this caller's requests this minute
-- ARGV: job id, worst-case USD, now ms, hold ms, hourly cap, daily cap, requests per minute ('' = no limit)
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
for _, id in ipairs(lapsed) do
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
end
if ARGV[7] ~= '' and tonumber(redis.call('GET', KEYS[5]) or '0') >= tonumber(ARGV[7]) then
  return {'rate', redis.call('GET', KEYS[5])}
end
local held = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do held = held + tonumber(v) end
local worst = tonumber(ARGV[2])
local hour = tonumber(redis.call('GET', KEYS[3]) or '0') + held
if ARGV[5] ~= '' and hour + worst > tonumber(ARGV[5]) then return {'hourly', tostring(hour)} end
local day = tonumber(redis.call('GET', KEYS[4]) or '0') + held
if ARGV[6] ~= '' and day + worst > tonumber(ARGV[6]) then return {'daily', tostring(day)} end
if worst > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('ZADD', KEYS[2], tonumber(ARGV[3]) + tonumber(ARGV[4]), ARGV[1])
end
if ARGV[7] ~= '' then
  redis.call('INCR', KEYS[5])
  redis.call('EXPIRE', KEYS[5], 120)
end
return {'ok', ARGV[2]}
"""


class Refused(Exception):
    """A limit refused the request; the message names the limit and when it resets."""


def enabled(settings: Settings) -> bool:
    return any(
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


async def admit(redis, settings: Settings, request: ChatRequest, *, job_id: str, caller: str) -> None:
    """Reserve the request's worst-case cost and count it against the caller's rate, or raise Refused."""
    caps = (settings.budget_per_request_usd, settings.budget_hourly_usd, settings.budget_daily_usd)
    worst = worst_case_usd(request, settings)
    model = request.model
    if worst is None:
        if any(c is not None for c in caps):
            raise Refused(
                f"model {model!r} has no known price, so the cost caps cannot be enforced for it; "
                "add its price to MODEL_PRICES or PRICES_FILE"
            )
        worst = 0.0
    if settings.budget_per_request_usd is not None and worst > settings.budget_per_request_usd:
        turns = (
            f", over up to {settings.tool_max_rounds + 1} model turns with tools"
            if request.mcp_servers
            else ""
        )
        raise Refused(
            f"this request could cost up to ${worst:.6f} ({request.max_tokens} max_tokens on {model}{turns}), "
            f"over BUDGET_PER_REQUEST_USD=${settings.budget_per_request_usd:g}; ask for fewer max_tokens"
            + (" or lower TOOL_MAX_ROUNDS" if turns else "")
        )
    now = time.time()
    minute = int(now // 60)
    verdict, value = await redis.register_script(ADMIT_LUA)(
        keys=[
            keys.BUDGET_RESERVED, keys.BUDGET_RESERVED_UNTIL,
            keys.spent_hour(time.strftime("%Y-%m-%dT%H", time.gmtime(now))),
            keys.spent_day(time.strftime("%Y-%m-%d", time.gmtime(now))),
            keys.rate(caller, minute),
        ],
        args=[
            job_id, repr(worst), int(now * 1000), int(settings.budget_reservation_seconds * 1000),
            _cap(settings.budget_hourly_usd), _cap(settings.budget_daily_usd), _cap(settings.rate_limit_per_minute),
        ],
    )  # fmt: skip
    verdict = verdict.decode()
    if verdict == "rate":
        raise Refused(
            f"rate limit reached: RATE_LIMIT_PER_MINUTE={settings.rate_limit_per_minute} requests a minute for "
            f"this caller; it resets in {_resets_in('rate', now)}"
        )
    if verdict in ("hourly", "daily"):
        cap = settings.budget_hourly_usd if verdict == "hourly" else settings.budget_daily_usd
        name = "BUDGET_HOURLY_USD" if verdict == "hourly" else "BUDGET_DAILY_USD"
        raise Refused(
            f"{verdict} budget reached: ${float(value):.6f} spent or reserved of {name}=${cap:g}, and this "
            f"request could cost up to ${worst:.6f}; it resets in {_resets_in(verdict, now)}"
        )


async def release(redis, job_id: str) -> None:
    """Give back a reservation for a job that was never enqueued."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hdel(keys.BUDGET_RESERVED, job_id)
        pipe.zrem(keys.BUDGET_RESERVED_UNTIL, job_id)
        await pipe.execute()


def _cap(value: float | int | None) -> str:
    return "" if value is None else repr(value)
