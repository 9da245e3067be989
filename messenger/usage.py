"""Reading what every worker counted (usage, cost, latency), conversations and the received-messages
log, and setting the runtime model defaults every worker applies."""

from __future__ import annotations

import json
import time
from typing import Any

from shared import keys
from shared.models import ModelDefaults

_COUNTERS = ("requests", "completed", "failed", "cancelled", "prompt_tokens", "completion_tokens",
             "total_tokens", "latency_ms", "unpriced")  # fmt: skip


def _totals(raw: dict) -> dict:
    row: dict[str, Any] = {name: int(raw.get(name.encode(), 0)) for name in _COUNTERS}
    cost = raw.get(b"cost_usd")
    row["cost_usd"] = round(float(cost), 8) if cost is not None else (None if row["unpriced"] else 0.0)
    row["avg_latency_ms"] = round(row.pop("latency_ms") / row["requests"], 1) if row["requests"] else None
    return row


def _p95(latencies: list[bytes]) -> float | None:
    values = sorted(int(v) for v in latencies)
    return float(values[min(len(values) - 1, int(len(values) * 0.95))]) if values else None


async def usage_stats(redis, days: int = 7) -> dict:
    """Totals, per model (with average and p95 latency) and per day, summed over every worker."""
    models = sorted(m.decode() for m in await redis.smembers(keys.USAGE_MODELS))
    today = time.time()
    day_names = [time.strftime("%Y-%m-%d", time.gmtime(today - 86_400 * i)) for i in range(days)]
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.USAGE_TOTAL)
        for m in models:
            pipe.hgetall(keys.usage_model(m))
            pipe.lrange(keys.usage_latency(m), 0, -1)
        for d in day_names:
            pipe.hgetall(keys.usage_day(d))
        replies = await pipe.execute()
    total, rest = replies[0], replies[1:]
    per_model = {}
    all_latencies: list[bytes] = []
    for i, m in enumerate(models):
        row = _totals(rest[2 * i])
        row["p95_latency_ms"] = _p95(rest[2 * i + 1])
        all_latencies += rest[2 * i + 1]
        per_model[m] = row
    totals = _totals(total)
    totals["p95_latency_ms"] = _p95(all_latencies)
    per_day = {d: _totals(r) for d, r in zip(day_names, rest[2 * len(models) :], strict=True) if r}
    return {"totals": totals, "models": per_model, "days": per_day}


async def conversation(redis, conversation_id: str, limit: int) -> dict:
    raw = await redis.lrange(keys.conversation(conversation_id), -limit, -1)
    turns = []
    for item in raw:
        try:
            turns.append(json.loads(item))
        except ValueError:
            continue
    ttl = await redis.ttl(keys.conversation(conversation_id))
    return {
        "conversation_id": conversation_id,
        "turns": turns,
        "expires_in_seconds": ttl if ttl > 0 else None,
    }


async def conversations(redis, limit: int) -> dict:
    """The most recently active conversations."""
    rows = await redis.zrevrange(keys.CONVERSATIONS, 0, limit - 1, withscores=True)
    listed = []
    for cid, last in rows:
        length = await redis.llen(keys.conversation(cid.decode()))
        if length:
            listed.append({"conversation_id": cid.decode(), "turns": length, "last_turn_at": last})
    return {"conversations": listed}


async def received_messages(redis, limit: int) -> dict:
    entries = []
    for item in await redis.lrange(keys.RECEIVED, 0, limit - 1):
        try:
            entries.append(json.loads(item))
        except ValueError:
            continue
    return {"received": entries}


async def model_defaults(redis) -> ModelDefaults:
    raw = await redis.get(keys.MODEL_DEFAULTS)
    try:
        return ModelDefaults.model_validate_json(raw) if raw else ModelDefaults()
    except ValueError:
        return ModelDefaults()


async def configure_defaults(redis, changes: ModelDefaults) -> ModelDefaults:
    """Merge `changes` into the stored defaults and tell every worker to re-read them."""
    merged = (await model_defaults(redis)).model_copy(update=changes.model_dump(exclude_none=True))
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(keys.MODEL_DEFAULTS, merged.model_dump_json())
        pipe.publish(keys.WAKEUP_CHANNEL, b"config")
        await pipe.execute()
    return merged
