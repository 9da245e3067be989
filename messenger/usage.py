"""Reading what every worker counted (usage, cost, latency), conversations and the received-messages
log, and setting the runtime model defaults every worker applies, each for the caller's tenant.

A tenant sees and changes only its own; the operator sees every tenant's (and the totals over all of
them) and alone changes the global model defaults.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

from messenger.tenants import LOCAL_OPERATOR, OPERATOR, TENANT_NAME, Tenant
from shared import damaged, keys
from shared.models import ModelDefaults

log = logging.getLogger("messenger.usage")

_COUNTERS = ("requests", "completed", "failed", "cancelled", "prompt_tokens", "completion_tokens",
             "total_tokens", "latency_ms", "unpriced", "dead_attempt_tokens")  # fmt: skip


def _number(raw: dict, name: str, kind: type[int] | type[float] = int) -> Any:
    try:
        value = kind(raw.get(name.encode(), 0))
        if math.isfinite(value):
            return value
    except (TypeError, ValueError):  # a hand-edited counter: skip it, never fail the whole answer
        pass
    log.warning("ignoring a counter that is not a number: %s", name)
    return kind(0)


def _totals(raw: dict) -> dict:
    row: dict[str, Any] = {name: _number(raw, name) for name in _COUNTERS}
    cost = _number(raw, "cost_usd", float) if b"cost_usd" in raw else None
    row["cost_usd"] = round(cost, 8) if cost is not None else (None if row["unpriced"] else 0.0)
    row["avg_latency_ms"] = round(row.pop("latency_ms") / row["requests"], 1) if row["requests"] else None
    return row


def _p95(latencies: list[bytes]) -> float | None:
    values = sorted(int(v) for v in latencies if v.isdigit())
    return float(values[min(len(values) - 1, int(len(values) * 0.95))]) if values else None


def _key(tenant: str | None, part: str) -> str:
    """The all-tenant usage key (tenant None) or one tenant's, for `total`, `models`, `model:<m>`, ..."""
    if tenant is not None:
        return keys.usage_tenant(tenant, part)
    kind, _, name = part.partition(":")
    return {
        "total": lambda: keys.USAGE_TOTAL,
        "models": lambda: keys.USAGE_MODELS,
        "model": lambda: keys.usage_model(name),
        "day": lambda: keys.usage_day(name),
        "latency": lambda: keys.usage_latency(name),
    }[kind]()


async def _stats(redis, tenant: str | None, days: int) -> dict:
    listed = await damaged.read(redis.smembers(_key(tenant, "models")), _key(tenant, "models"), set())
    models = sorted(m.decode(errors="replace") for m in listed)
    today = time.time()
    day_names = [time.strftime("%Y-%m-%d", time.gmtime(today - 86_400 * i)) for i in range(days)]
    names, defaults = [_key(tenant, "total")], [{}]
    for m in models:
        names += [_key(tenant, f"model:{m}"), _key(tenant, f"latency:{m}")]
        defaults += [{}, []]
    names += [_key(tenant, f"day:{d}") for d in day_names]
    defaults += [{} for _ in day_names]
    async with redis.pipeline(transaction=False) as pipe:
        for name, default in zip(names, defaults, strict=True):
            pipe.hgetall(name) if isinstance(default, dict) else pipe.lrange(name, 0, -1)
        replies = damaged.replies(await pipe.execute(raise_on_error=False), names, defaults)
    total, rest = replies[0], replies[1:]
    per_model = {}
    all_latencies: list[bytes] = []
    for i, m in enumerate(models):
        row = _totals(rest[2 * i])
        row["p95_latency_ms"] = _p95(rest[2 * i + 1])
        row["price_source"] = rest[2 * i].get(b"price_source", b"").decode(errors="replace")[:40] or None
        all_latencies += rest[2 * i + 1]
        per_model[m] = row
    totals = _totals(total)
    totals["p95_latency_ms"] = _p95(all_latencies)
    per_day = {d: _totals(r) for d, r in zip(day_names, rest[2 * len(models) :], strict=True) if r}
    return {"totals": totals, "models": per_model, "days": per_day}


async def known_tenants(redis) -> list[str]:
    """Every tenant that has had a job counted, and the operator."""
    names = set()
    for member in await damaged.read(redis.smembers(keys.TENANTS), keys.TENANTS, set()):
        name = member.decode(errors="replace")
        if TENANT_NAME.fullmatch(name):
            names.add(name)
        else:
            damaged.warn(keys.TENANTS, f"a member is not a tenant name: {name[:40]!r}")
    return sorted(names | {OPERATOR})


async def usage_stats(redis, days: int = 7, tenant: Tenant = LOCAL_OPERATOR) -> dict:
    """Totals, per model (with average and p95 latency) and per day. A tenant gets its own; the
    operator gets the totals over every tenant, and each tenant's under `tenants`."""
    if not tenant.operator:
        return {"tenant": tenant.name, **await _stats(redis, tenant.name, days)}
    stats = await _stats(redis, None, days)
    stats["tenants"] = {name: await _stats(redis, name, days) for name in await known_tenants(redis)}
    return stats


async def conversation(redis, tenant: str, conversation_id: str, limit: int) -> dict:
    key = keys.conversation(tenant, conversation_id)
    turns = _json_items(await damaged.read(redis.lrange(key, -limit, -1), key, []), key)
    ttl = await redis.ttl(key)
    return {
        "conversation_id": conversation_id,
        "tenant": tenant,
        "turns": turns,
        "expires_in_seconds": ttl if ttl > 0 else None,
    }


async def conversations(redis, limit: int, tenant: Tenant = LOCAL_OPERATOR) -> dict:
    """The most recently active conversations: the tenant's own, or every tenant's for the operator."""
    names = await known_tenants(redis) if tenant.operator else [tenant.name]
    rows: list[tuple[float, str, str]] = []
    for name in names:
        key = keys.conversations(name)
        for cid, last in await damaged.read(redis.zrevrange(key, 0, limit - 1, withscores=True), key, []):
            rows.append((last, name, cid.decode(errors="replace")))
    listed = []
    for last, name, cid in sorted(rows, reverse=True)[:limit]:
        key = keys.conversation(name, cid)
        length = await damaged.read(redis.llen(key), key, 0)
        if length:
            listed.append({"conversation_id": cid, "tenant": name, "turns": length, "last_turn_at": last})
    return {"conversations": listed}


async def received_messages(redis, limit: int, tenant: Tenant = LOCAL_OPERATOR) -> dict:
    """What workers processed, newest first: the tenant's own, or every tenant's for the operator."""
    key = keys.RECEIVED if tenant.operator else keys.received(tenant.name)
    return {"received": _json_items(await damaged.read(redis.lrange(key, 0, limit - 1), key, []), key)}


def _json_items(raw: list[bytes], key: str) -> list[dict]:
    """The JSON objects of a list's items; the others are skipped (logged once for the key)."""
    items, bad = [], 0
    for item in raw:
        try:
            value = json.loads(item)
        except ValueError:
            value = None
        if isinstance(value, dict):
            items.append(value)
        else:
            bad += 1
    if bad:
        damaged.warn(key, f"{bad} item(s) that are not JSON objects")
    return items


async def _stored_defaults(redis, key: str) -> ModelDefaults:
    raw = await damaged.read(redis.get(key), key, None)
    try:
        return ModelDefaults.model_validate_json(raw) if raw else ModelDefaults()
    except ValueError:
        damaged.warn(key, "not model defaults (JSON)")
        return ModelDefaults()


async def model_defaults(redis, tenant: str | None = None) -> ModelDefaults:
    """The global defaults, with a tenant's own over them when `tenant` is given."""
    found = await _stored_defaults(redis, keys.MODEL_DEFAULTS)
    if tenant is not None and tenant != OPERATOR:
        found = (await _stored_defaults(redis, keys.model_defaults(tenant))).over(found)
    return found


async def configure_defaults(redis, changes: ModelDefaults, tenant: Tenant = LOCAL_OPERATOR) -> ModelDefaults:
    """Merge `changes` into the caller's layer (the global one for the operator, else the tenant's own)
    and tell every worker to re-read; returns the merged layer."""
    key = keys.MODEL_DEFAULTS if tenant.operator else keys.model_defaults(tenant.name)
    merged = changes.over(await _stored_defaults(redis, key))
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(key, merged.model_dump_json())
        pipe.publish(keys.WAKEUP_CHANNEL, b"config")
        await pipe.execute()
    return merged
