"""Counting a finished job once: usage and cost totals (every tenant's and its own), the budget
settlement, the received-messages log and the conversation turn, in one atomic script.

The `mcpq:usage:counted:<id>` marker makes it idempotent: a job re-run after its worker died, or a
result written twice, is never counted twice. What a dead attempt streamed before its worker died was
paid for too: it is counted, estimated from the job's stream, in usage and budgets; what a re-run took
from the job's journal (worker/journal.py) is in the final attempt's own usage, so only a dead
attempt's text after its last journaled step is counted as dead.
"""

from __future__ import annotations

import json
import logging
import time

from redis.exceptions import NoScriptError

from shared import damaged, keys, prices, timeseries
from shared.events import ToolCallEvent, ToolResultEvent, parse_event
from shared.scripts import Arg, Key, script
from shared.settings import OPERATOR, TENANT_NAME, UNOWNED
from shared.tokens import estimate_tokens

log = logging.getLogger("worker.accounting")

COUNTED_TTL_SECONDS = 2 * 86_400
OWNER_KEPT_SECONDS = keys.KEEP_RESULT_SECONDS + 300  # a rewritten owner record lives as long as the result

SPENT_HOUR_TTL_SECONDS = 7200  # an hour's spend is read during its hour; kept one more
SPENT_DAY_TTL_SECONDS = 172_800


# a tenant's owner record that Redis lost while the job ran is written again (kept: 1), so the tenant
# can still read the answer; it runs whether or not the job was counted before
KEEP_OWNER_LUA = """
local kept = 0
if keep_owner then
  local set = redis.pcall('SET', owner, tenant, 'NX', 'EX', owner_ttl)
  if type(set) == 'table' and set.ok then kept = 1 end
end
"""
# the dashboard's minute (shared/timeseries.py): this job's own usage, without earlier attempts'
SERIES_LUA = """
call('HINCRBY', series, 'ended:' .. status, 1)
call('HINCRBY', series, 'prompt_tokens', series_prompt)
call('HINCRBY', series, 'completion_tokens', series_completion)
if series_cost then call('HINCRBYFLOAT', series, 'cost:' .. model, series_cost) end
if ttft_field then call('HINCRBY', series, ttft_field, 1) end
call('EXPIRE', series, series_ttl)
"""

# the job's turn in its tenant's conversation; the script's last part
CONVERSATION_LUA = """
if conversation_id then
  call('RPUSH', conversation, user_turn, assistant_turn)
  call('EXPIRE', conversation, history_ttl)
  call('ZADD', conversations, now, conversation_id)
  call('EXPIRE', conversations, history_ttl)
end
return damaged
"""


# counted once: the totals for everyone, the tenant and the model, the latencies, the received log,
# the budget hold settled into the spend (each key that refuses a write is named in the reply)
COUNT_LUA = """
if not redis.call('SET', counted, '1', 'NX', 'EX', counted_ttl) then return {0, kept} end
-- a key that refuses a write (wrong type, a counter that is not a number: damaged or written by hand)
-- is skipped and named in the reply; every other key, the budget settlement included, is still written
local damaged, seen = {1, kept}, {}
local function call(cmd, key, ...)
  local reply = redis.pcall(cmd, key, ...)
  if type(reply) == 'table' and reply.err and not seen[key] then
    seen[key] = true
    damaged[#damaged + 1] = key
  end
end
for _, totals in ipairs({total, by_model, by_day, tenant_total, tenant_by_model, tenant_by_day}) do
  call('HINCRBY', totals, 'requests', 1)
  call('HINCRBY', totals, status, 1)
  call('HINCRBY', totals, 'prompt_tokens', prompt_tokens)
  call('HINCRBY', totals, 'completion_tokens', completion_tokens)
  call('HINCRBY', totals, 'total_tokens', total_tokens)
  call('HINCRBY', totals, 'latency_ms', latency_ms)
  if dead_attempt_tokens > 0 then call('HINCRBY', totals, 'dead_attempt_tokens', dead_attempt_tokens) end
  if cost then
    call('HINCRBYFLOAT', totals, 'cost_usd', cost)
  else
    call('HINCRBY', totals, 'unpriced', 1)
  end
end
if price_source then  -- where the worker took the price from: "MODEL_PRICES", "genai-prices x.y", "built-in"
  call('HSET', by_model, 'price_source', price_source)
  call('HSET', tenant_by_model, 'price_source', price_source)
end
call('SADD', models, model)
call('SADD', tenant_models, model)
call('SADD', tenants, tenant)
for _, latencies in ipairs({latency, tenant_latency}) do
  call('LPUSH', latencies, latency_ms)
  call('LTRIM', latencies, 0, latencies_kept - 1)
end
for _, log in ipairs({received, tenant_received}) do
  call('LPUSH', log, received_entry)
  call('LTRIM', log, 0, received_kept - 1)
end
call('HDEL', reserved, job_id)
call('HDEL', reserved_tenant, job_id)
call('ZREM', reserved_until, job_id)
if cost then
  for _, spent in ipairs({spent_hour, tenant_spent_hour}) do
    call('INCRBYFLOAT', spent, cost)
    call('EXPIRE', spent, spent_hour_ttl)
  end
  for _, spent in ipairs({spent_day, tenant_spent_day}) do
    call('INCRBYFLOAT', spent, cost)
    call('EXPIRE', spent, spent_day_ttl)
  end
end
"""


@script(KEEP_OWNER_LUA + COUNT_LUA + SERIES_LUA + CONVERSATION_LUA)
async def _record(
    redis, *, counted: Key, total: Key, by_model: Key, by_day: Key, tenant_total: Key, tenant_by_model: Key,
    tenant_by_day: Key, models: Key, tenant_models: Key, tenants: Key, latency: Key, tenant_latency: Key,
    received: Key, tenant_received: Key, reserved: Key, reserved_tenant: Key, reserved_until: Key,
    spent_hour: Key, spent_day: Key, tenant_spent_hour: Key, tenant_spent_day: Key, conversation: Key,
    conversations: Key, owner: Key, series: Key, keep_owner: Arg[bool], owner_ttl: Arg[int], series_prompt: Arg[int],
    series_completion: Arg[int], series_cost: Arg[str | None], ttft_field: Arg[str | None], series_ttl: Arg[int],
    job_id: Arg[str], model: Arg[str], status: Arg[str], prompt_tokens: Arg[int],
    completion_tokens: Arg[int], total_tokens: Arg[int], cost: Arg[str | None], latency_ms: Arg[int],
    dead_attempt_tokens: Arg[int], received_entry: Arg[str], latencies_kept: Arg[int], received_kept: Arg[int],
    counted_ttl: Arg[int], conversation_id: Arg[str | None], user_turn: Arg[str], assistant_turn: Arg[str],
    history_ttl: Arg[int], now: Arg[float], tenant: Arg[str], spent_hour_ttl: Arg[int], spent_day_ttl: Arg[int],
    price_source: Arg[str | None],
) -> list:  # fmt: skip
    """Count one ended job, for everyone, its tenant and the dashboard's minute, once; settle its
    budget hold into the spend; add its turn to the tenant's conversation; write its owner record
    again if it was lost. [counted now (0/1), owner written again (0/1), <each key skipped>...]."""
    ...


async def job_tenant(redis, job_id: str, ctx: dict) -> str:
    """The tenant a job belongs to (its owner record, as the claim read it into arq's ctx, or read
    now). A job whose record is gone or damaged is UNOWNED: it must not read or extend anyone's
    conversation, the operator's included."""
    raw = ctx["owner"] if "owner" in ctx else await redis.get(keys.owner(job_id))
    name = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw or "")
    if TENANT_NAME.fullmatch(name):
        return name
    log.warning("job %s has no valid owner record (%s); it runs as nobody's", job_id, keys.owner(job_id))
    return UNOWNED


async def dead_attempts(redis, job_id: str, final_attempt: int, request: dict) -> dict | None:
    """What earlier attempts of this job streamed before their worker died, estimated like an answer
    cut short: one token per streamed piece, plus the prompt (about four characters a token) of each
    attempt that started answering. None when there was no earlier attempt with tokens. When the
    next attempt went on from the journal (`start.resumed`), the pieces up to the dead attempt's last
    journaled step are not counted here: their turns' usage came back with the journal."""
    if final_attempt <= 1:
        return None
    pieces: dict[int, int] = {}
    unjournaled: dict[int, int] = {}  # pieces since the attempt's last journaled step
    models: dict[int, str] = {}
    resumed: set[int] = set()  # attempts that went on from the journal
    for _, fields in await redis.xrange(keys.stream(job_id)):
        try:
            event = parse_event(fields.get(b"event", b""))
        except ValueError:
            continue  # junk in the stream is not a token anyone paid for
        if event.type == "start" and event.resumed is not None:
            resumed.add(event.attempt)
        if event.attempt >= final_attempt:
            continue
        if event.type == "start":
            models[event.attempt] = event.model
        elif event.type == "token":
            pieces[event.attempt] = pieces.get(event.attempt, 0) + 1
            unjournaled[event.attempt] = unjournaled.get(event.attempt, 0) + 1
        elif isinstance(event, ToolCallEvent | ToolResultEvent) and event.step is not None:
            unjournaled[event.attempt] = 0
    pieces = {a: unjournaled.get(a, 0) if a + 1 in resumed else n for a, n in pieces.items()}
    pieces = {a: n for a, n in pieces.items() if n}
    if not pieces:
        return None
    prompt_each = estimate_tokens("".join(str(request.get(k) or "") for k in ("message", "context")))
    prompt = prompt_each * len(pieces)
    completion = sum(pieces.values())
    costs = [prices.cost(models.get(a, "?"), prompt_each, n) for a, n in pieces.items()]
    return {
        "attempts": sorted(pieces),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cost_usd": None if any(c is None for c in costs) else sum(c for c in costs if c is not None),
        "estimated": True,
    }


def _turns(result: dict, request: dict, now: float) -> tuple[dict, dict]:
    usage = result["usage"]
    user = {
        "role": "user",
        "content": request.get("message", ""),
        "job_id": result["jobId"],
        "ts": round(now, 3),
    }
    assistant = {
        "role": "assistant",
        "content": result.get("aiResponse", ""),
        "job_id": result["jobId"],
        "model": result.get("model") or "?",
        "prompt_tokens": usage["promptTokens"],
        "completion_tokens": usage["completionTokens"],
        "cost_usd": usage.get("estimatedCost"),
        "ts": round(now, 3),
    }
    return user, assistant


async def record(
    redis, result: dict, request: dict, *, history_ttl: int, tenant: str = OPERATOR,
    first_token_s: float | None = None,
) -> bool:  # fmt: skip
    """Count a finished job (a JobResult dict) once, for everyone, for its tenant and in the
    dashboard's history (`first_token_s`: from its start to its first token); False if it was already
    counted. One round trip, which also writes a tenant's owner record again if Redis lost it."""
    count = await prepare(
        redis, result, request, history_ttl=history_ttl, tenant=tenant, first_token_s=first_token_s
    )
    return await write(redis, count)


async def write(redis, count: dict) -> bool:
    """Write the count `prepare` made (its own round trip); False if the job was counted before."""
    return _counted(count["job_id"], await _record(redis, **count))


def command(count: dict) -> tuple:
    """The count `prepare` made, as one command for the MULTI that stores the job's result
    (worker/wakeups.py: finish_job), so the two land together; its reply goes to `recorded`."""
    return _record.command(**count)  # type: ignore[attr-defined]


async def recorded(redis, count: dict, reply: object) -> bool:
    """Read the reply to `command` (a script cache Redis lost: counted now, the usual way)."""
    if isinstance(reply, NoScriptError):
        reply = await _record(redis, **count)
    if isinstance(reply, BaseException):
        log.warning("could not count the usage of job %s: %s", count["job_id"], type(reply).__name__)
        return False
    return _counted(count["job_id"], reply)  # type: ignore[arg-type]


def _counted(job_id: str, counted: list) -> bool:
    if counted[1]:
        log.warning("job %s: its owner record was lost (Redis restarted without its data?); "
                    "written again for its result", job_id)  # fmt: skip
    if not counted[0]:
        return False
    for key in counted[2:]:
        damaged.warn(key.decode(errors="replace") if isinstance(key, bytes) else str(key),
                     f"job {job_id}'s usage was not added to it (wrong type, or a value that is not a number)")  # fmt: skip
    return True


async def prepare(
    redis, result: dict, request: dict, *, history_ttl: int, tenant: str = OPERATOR,
    first_token_s: float | None = None,
) -> dict:  # fmt: skip
    """What `record` writes, as the script's arguments (reads what dead attempts streamed, if any)."""
    job_id, model, usage = result["jobId"], result.get("model") or "?", result["usage"]
    dead = await dead_attempts(redis, job_id, int(result.get("attempt") or 1), request)
    prompt, completion = usage["promptTokens"], usage["completionTokens"]
    cost = usage.get("estimatedCost")
    if dead:
        prompt, completion = prompt + dead["prompt_tokens"], completion + dead["completion_tokens"]
        cost = None if cost is None or dead["cost_usd"] is None else cost + dead["cost_usd"]
    now = time.time()
    day = time.strftime("%Y-%m-%d", time.gmtime(now))
    hour = time.strftime("%Y-%m-%dT%H", time.gmtime(now))
    latency_ms = int((result.get("processingTime") or 0) * 1000)
    received = {
        "job_id": job_id, "tenant": tenant, "worker_id": result.get("workerId"), "model": model,
        "status": result["status"], "error": result.get("error"), "prompt_tokens": prompt,
        "completion_tokens": completion, "cost_usd": cost, "latency_ms": latency_ms,
        "conversation_id": request.get("conversation_id"), "message": str(request.get("message", ""))[:200],
        "dead_attempts": dead, "ts": round(now, 3),
    }  # fmt: skip
    conversation_id = request.get("conversation_id") if result["status"] == "completed" else None
    user_turn, assistant_turn = _turns(result, request, now) if conversation_id else ({}, {})
    dead_tokens = dead["prompt_tokens"] + dead["completion_tokens"] if dead else 0

    def mine(part: str) -> str:
        return keys.usage_tenant(tenant, part)

    return dict(
        counted=keys.usage_counted(job_id), total=keys.USAGE_TOTAL, by_model=keys.usage_model(model),
        by_day=keys.usage_day(day), tenant_total=mine("total"), tenant_by_model=mine(f"model:{model}"),
        tenant_by_day=mine(f"day:{day}"), models=keys.USAGE_MODELS, tenant_models=mine("models"),
        tenants=keys.TENANTS, latency=keys.usage_latency(model), tenant_latency=mine(f"latency:{model}"),
        received=keys.RECEIVED, tenant_received=keys.received(tenant), reserved=keys.BUDGET_RESERVED,
        reserved_tenant=keys.BUDGET_RESERVED_TENANT, reserved_until=keys.BUDGET_RESERVED_UNTIL,
        spent_hour=keys.spent_hour(hour), spent_day=keys.spent_day(day),
        tenant_spent_hour=keys.spent_tenant(tenant, f"hour:{hour}"),
        tenant_spent_day=keys.spent_tenant(tenant, f"day:{day}"),
        conversation=keys.conversation(tenant, conversation_id or "-"), conversations=keys.conversations(tenant),
        job_id=job_id, model=model, status=result["status"], prompt_tokens=prompt, completion_tokens=completion,
        total_tokens=usage["totalTokens"] + dead_tokens, cost=None if cost is None else repr(float(cost)),
        latency_ms=latency_ms, dead_attempt_tokens=dead_tokens, received_entry=json.dumps(received),
        latencies_kept=keys.USAGE_LATENCY_KEPT, received_kept=keys.RECEIVED_KEPT, counted_ttl=COUNTED_TTL_SECONDS,
        conversation_id=conversation_id or None, user_turn=json.dumps(user_turn),
        assistant_turn=json.dumps(assistant_turn), history_ttl=history_ttl, now=round(now, 3), tenant=tenant,
        spent_hour_ttl=SPENT_HOUR_TTL_SECONDS, spent_day_ttl=SPENT_DAY_TTL_SECONDS,
        price_source=prices.source(model) if cost is not None else None, owner=keys.owner(job_id),
        keep_owner=tenant not in (OPERATOR, UNOWNED), owner_ttl=OWNER_KEPT_SECONDS,
        **_series(usage, now, first_token_s),
    )  # fmt: skip


def _series(usage: dict, now: float, first_token_s: float | None) -> dict:
    """The dashboard's minute (shared/timeseries.py): the job's own usage, without earlier attempts'."""
    return dict(
        series=keys.series(int(now // 60)), series_prompt=max(0, usage["promptTokens"]),
        series_completion=max(0, usage["completionTokens"]),
        series_cost=None if usage.get("estimatedCost") is None else repr(float(usage["estimatedCost"])),
        ttft_field=timeseries.ttft_field(first_token_s), series_ttl=keys.SERIES_KEPT_SECONDS,
    )  # fmt: skip
