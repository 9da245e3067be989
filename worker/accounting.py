"""Counting a finished job once: usage and cost totals, the budget settlement, the received-messages
log and the conversation turn, in one atomic script.

The `mcpq:usage:counted:<id>` marker makes it idempotent: a job re-run after its worker died, or a
result written twice, is never counted twice.
"""

from __future__ import annotations

import json
import time

from shared import keys

COUNTED_TTL_SECONDS = 2 * 86_400

RECORD_LUA = """
-- KEYS: counted marker, usage total, usage model, usage day, usage models set, latency list,
--       received list, budget reserved hash, budget reserved-until zset, spent hour, spent day,
--       conversation list, conversations zset
-- ARGV: job id, model, status, prompt tokens, completion tokens, total tokens, cost ('' = unpriced),
--       latency ms, received entry, latencies kept, received kept, marker ttl,
--       conversation id ('' = none), user turn, assistant turn, history ttl, now (s)
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[12]) then return 0 end
for i = 2, 4 do
  redis.call('HINCRBY', KEYS[i], 'requests', 1)
  redis.call('HINCRBY', KEYS[i], ARGV[3], 1)
  redis.call('HINCRBY', KEYS[i], 'prompt_tokens', ARGV[4])
  redis.call('HINCRBY', KEYS[i], 'completion_tokens', ARGV[5])
  redis.call('HINCRBY', KEYS[i], 'total_tokens', ARGV[6])
  redis.call('HINCRBY', KEYS[i], 'latency_ms', ARGV[8])
  if ARGV[7] == '' then
    redis.call('HINCRBY', KEYS[i], 'unpriced', 1)
  else
    redis.call('HINCRBYFLOAT', KEYS[i], 'cost_usd', ARGV[7])
  end
end
redis.call('SADD', KEYS[5], ARGV[2])
redis.call('LPUSH', KEYS[6], ARGV[8])
redis.call('LTRIM', KEYS[6], 0, tonumber(ARGV[10]) - 1)
redis.call('LPUSH', KEYS[7], ARGV[9])
redis.call('LTRIM', KEYS[7], 0, tonumber(ARGV[11]) - 1)
redis.call('HDEL', KEYS[8], ARGV[1])
redis.call('ZREM', KEYS[9], ARGV[1])
if ARGV[7] ~= '' then
  redis.call('INCRBYFLOAT', KEYS[10], ARGV[7])
  redis.call('EXPIRE', KEYS[10], 7200)
  redis.call('INCRBYFLOAT', KEYS[11], ARGV[7])
  redis.call('EXPIRE', KEYS[11], 172800)
end
if ARGV[13] ~= '' then
  redis.call('RPUSH', KEYS[12], ARGV[14], ARGV[15])
  redis.call('EXPIRE', KEYS[12], ARGV[16])
  redis.call('ZADD', KEYS[13], ARGV[17], ARGV[13])
end
return 1
"""


async def record(redis, result: dict, request: dict, *, history_ttl: int) -> bool:
    """Count a finished job (a JobResult dict) once; False if it was already counted."""
    job_id, model, usage = result["jobId"], result.get("model") or "?", result["usage"]
    cost = usage.get("estimatedCost")
    now = time.time()
    day = time.strftime("%Y-%m-%d", time.gmtime(now))
    hour = time.strftime("%Y-%m-%dT%H", time.gmtime(now))
    latency_ms = int((result.get("processingTime") or 0) * 1000)
    received = {
        "job_id": job_id,
        "worker_id": result.get("workerId"),
        "model": model,
        "status": result["status"],
        "error": result.get("error"),
        "prompt_tokens": usage["promptTokens"],
        "completion_tokens": usage["completionTokens"],
        "cost_usd": cost,
        "latency_ms": latency_ms,
        "conversation_id": request.get("conversation_id"),
        "message": str(request.get("message", ""))[:200],
        "ts": round(now, 3),
    }
    conversation_id = request.get("conversation_id") if result["status"] == "completed" else None
    user_turn = {"role": "user", "content": request.get("message", ""), "job_id": job_id, "ts": round(now, 3)}
    assistant_turn = {
        "role": "assistant",
        "content": result.get("aiResponse", ""),
        "job_id": job_id,
        "model": model,
        "prompt_tokens": usage["promptTokens"],
        "completion_tokens": usage["completionTokens"],
        "cost_usd": cost,
        "ts": round(now, 3),
    }
    counted = await redis.register_script(RECORD_LUA)(
        keys=[
            keys.usage_counted(job_id), keys.USAGE_TOTAL, keys.usage_model(model), keys.usage_day(day),
            keys.USAGE_MODELS, keys.usage_latency(model), keys.RECEIVED, keys.BUDGET_RESERVED,
            keys.BUDGET_RESERVED_UNTIL, keys.spent_hour(hour), keys.spent_day(day),
            keys.conversation(conversation_id or "-"), keys.CONVERSATIONS,
        ],
        args=[
            job_id, model, result["status"], usage["promptTokens"], usage["completionTokens"],
            usage["totalTokens"], "" if cost is None else repr(float(cost)), latency_ms, json.dumps(received),
            keys.USAGE_LATENCY_KEPT, keys.RECEIVED_KEPT, COUNTED_TTL_SECONDS, conversation_id or "",
            json.dumps(user_turn), json.dumps(assistant_turn), history_ttl, round(now, 3),
        ],
    )  # fmt: skip
    return bool(counted)
