"""Counting a finished job once: usage and cost totals (every tenant's and its own), the budget
settlement, the received-messages log and the conversation turn, in one atomic script.

The `mcpq:usage:counted:<id>` marker makes it idempotent: a job re-run after its worker died, or a
result written twice, is never counted twice. What a dead attempt streamed before its worker died was
paid for too: it is counted, estimated from the job's stream, in usage and budgets.
"""

from __future__ import annotations

import json
import time

from shared import keys, prices
from shared.events import parse_event
from shared.settings import OPERATOR, TENANT_NAME

COUNTED_TTL_SECONDS = 2 * 86_400

RECORD_LUA = """
-- KEYS: 1 counted marker; 2-7 counter hashes: usage total, model, day, then the tenant's total, model, day;
--       8 usage models set, 9 tenant models set, 10 tenants set; 11 latency list, 12 tenant latency list;
--       13 received list, 14 tenant received list; 15 budget reserved hash, 16 reserved-tenant hash,
--       17 reserved-until zset; 18 spent hour, 19 spent day, 20 tenant spent hour, 21 tenant spent day;
--       22 conversation list, 23 tenant's conversations zset
-- ARGV: 1 job id, 2 model, 3 status, 4 prompt tokens, 5 completion tokens, 6 total tokens,
--       7 cost ('' = unpriced), 8 latency ms, 9 received entry, 10 latencies kept, 11 received kept,
--       12 marker ttl, 13 conversation id ('' = none), 14 user turn, 15 assistant turn, 16 history ttl,
--       17 now (s), 18 tenant, 19 tokens estimated from dead attempts
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[12]) then return 0 end
for i = 2, 7 do
  redis.call('HINCRBY', KEYS[i], 'requests', 1)
  redis.call('HINCRBY', KEYS[i], ARGV[3], 1)
  redis.call('HINCRBY', KEYS[i], 'prompt_tokens', ARGV[4])
  redis.call('HINCRBY', KEYS[i], 'completion_tokens', ARGV[5])
  redis.call('HINCRBY', KEYS[i], 'total_tokens', ARGV[6])
  redis.call('HINCRBY', KEYS[i], 'latency_ms', ARGV[8])
  if ARGV[19] ~= '0' then redis.call('HINCRBY', KEYS[i], 'dead_attempt_tokens', ARGV[19]) end
  if ARGV[7] == '' then
    redis.call('HINCRBY', KEYS[i], 'unpriced', 1)
  else
    redis.call('HINCRBYFLOAT', KEYS[i], 'cost_usd', ARGV[7])
  end
end
redis.call('SADD', KEYS[8], ARGV[2])
redis.call('SADD', KEYS[9], ARGV[2])
redis.call('SADD', KEYS[10], ARGV[18])
for i = 11, 12 do
  redis.call('LPUSH', KEYS[i], ARGV[8])
  redis.call('LTRIM', KEYS[i], 0, tonumber(ARGV[10]) - 1)
end
for i = 13, 14 do
  redis.call('LPUSH', KEYS[i], ARGV[9])
  redis.call('LTRIM', KEYS[i], 0, tonumber(ARGV[11]) - 1)
end
redis.call('HDEL', KEYS[15], ARGV[1])
redis.call('HDEL', KEYS[16], ARGV[1])
redis.call('ZREM', KEYS[17], ARGV[1])
if ARGV[7] ~= '' then
  for i = 18, 21 do
    redis.call('INCRBYFLOAT', KEYS[i], ARGV[7])
    redis.call('EXPIRE', KEYS[i], (i % 2 == 0) and 7200 or 172800)
  end
end
if ARGV[13] ~= '' then
  redis.call('RPUSH', KEYS[22], ARGV[14], ARGV[15])
  redis.call('EXPIRE', KEYS[22], ARGV[16])
  redis.call('ZADD', KEYS[23], ARGV[17], ARGV[13])
  redis.call('EXPIRE', KEYS[23], ARGV[16])
end
return 1
"""


async def job_tenant(redis, job_id: str) -> str:
    """The tenant a job belongs to (its owner record); a job without one is the operator's."""
    raw = await redis.get(keys.owner(job_id))
    name = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw or "")
    return name if TENANT_NAME.fullmatch(name) else OPERATOR


async def dead_attempts(redis, job_id: str, final_attempt: int, request: dict) -> dict | None:
    """What earlier attempts of this job streamed before their worker died, estimated like an answer
    cut short: one token per streamed piece, plus the prompt (about four characters a token) of each
    attempt that started answering. None when there was no earlier attempt with tokens."""
    if final_attempt <= 1:
        return None
    pieces: dict[int, int] = {}
    models: dict[int, str] = {}
    for _, fields in await redis.xrange(keys.stream(job_id)):
        try:
            event = parse_event(fields.get(b"event", b""))
        except ValueError:
            continue  # junk in the stream is not a token anyone paid for
        if event.attempt >= final_attempt:
            continue
        if event.type == "start":
            models[event.attempt] = event.model
        elif event.type == "token":
            pieces[event.attempt] = pieces.get(event.attempt, 0) + 1
    if not pieces:
        return None
    prompt_each = sum(len(str(request.get(k) or "")) for k in ("message", "context")) // 4
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


async def record(redis, result: dict, request: dict, *, history_ttl: int, tenant: str = OPERATOR) -> bool:
    """Count a finished job (a JobResult dict) once, for everyone and for its tenant; False if it was
    already counted."""
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
    user_turn, assistant_turn = _turns(result, request, now)
    dead_tokens = dead["prompt_tokens"] + dead["completion_tokens"] if dead else 0

    def mine(part: str) -> str:
        return keys.usage_tenant(tenant, part)

    counted = await redis.register_script(RECORD_LUA)(
        keys=[
            keys.usage_counted(job_id), keys.USAGE_TOTAL, keys.usage_model(model), keys.usage_day(day),
            mine("total"), mine(f"model:{model}"), mine(f"day:{day}"),
            keys.USAGE_MODELS, mine("models"), keys.TENANTS, keys.usage_latency(model), mine(f"latency:{model}"),
            keys.RECEIVED, keys.received(tenant),
            keys.BUDGET_RESERVED, keys.BUDGET_RESERVED_TENANT, keys.BUDGET_RESERVED_UNTIL,
            keys.spent_hour(hour), keys.spent_day(day),
            keys.spent_tenant(tenant, f"hour:{hour}"), keys.spent_tenant(tenant, f"day:{day}"),
            keys.conversation(tenant, conversation_id or "-"), keys.conversations(tenant),
        ],
        args=[
            job_id, model, result["status"], prompt, completion, usage["totalTokens"] + dead_tokens,
            "" if cost is None else repr(float(cost)), latency_ms, json.dumps(received),
            keys.USAGE_LATENCY_KEPT, keys.RECEIVED_KEPT, COUNTED_TTL_SECONDS, conversation_id or "",
            json.dumps(user_turn), json.dumps(assistant_turn), history_ttl, round(now, 3), tenant, dead_tokens,
        ],
    )  # fmt: skip
    return bool(counted)
