"""The count script makes its key names itself (BATCH_LUA's `named`, from shared/keys.py's templates in
worker/accounting.py): what it writes must be exactly the keys shared/keys.py names, whatever the
tenant, model and conversation are called (a model's name is anything a caller or a provider said)."""

from __future__ import annotations

import pytest
from test_totals import finished

from shared import keys
from shared.connection import connect
from worker import accounting

HOSTILE_MODELS = [
    "gpt-4o",
    "gpt-4o-mini",
    "a:b%1%%c",
    "\x01t\x01m\x01j",
    "x\x00y",
    "日本 é {}",
    "..",
    "(%a)[",
    "?",
]


def named_by_keys(tenant: str, model: str, job_id: str, conversation: str, count: dict) -> set[bytes]:
    """What one completed job in a conversation writes, named by shared/keys.py alone."""
    day, hour, minute = count["day"], count["hour"], int(count["minute"])

    def mine(part: str) -> str:
        return keys.usage_tenant(tenant, part)

    names = {
        keys.usage_counted(job_id), keys.USAGE_TOTAL, keys.usage_model(model), keys.usage_day(day),
        mine("total"), mine(f"model:{model}"), mine(f"day:{day}"), keys.USAGE_MODELS, mine("models"),
        keys.TENANTS, keys.usage_latency(model), mine(f"latency:{model}"), keys.RECEIVED, keys.received(tenant),
        keys.conversation(tenant, conversation),
        keys.conversations(tenant), keys.series(minute), keys.BUDGET_RESERVED, keys.BUDGET_RESERVED_TENANT,
        keys.BUDGET_RESERVED_UNTIL,
    }  # fmt: skip
    if count["cost"] is not None:  # (an unknown model's price: nothing spent)
        names |= {keys.spent_hour(hour), keys.spent_day(day), keys.spent_tenant(tenant, f"hour:{hour}"),
                  keys.spent_tenant(tenant, f"day:{day}")}  # fmt: skip
    if tenant != "operator":
        names.add(keys.owner(job_id))  # (its owner record, written again: none was there)
    return {n.encode() for n in names}


@pytest.mark.parametrize("batched", [False, True], ids=["one-by-one", "batched"])
async def test_the_count_writes_the_keys_shared_keys_names_for_any_model_name(
    redis_url, redis_server, batched
):
    client = redis_server.client()
    client.flushall()
    redis = connect(redis_url)
    jobs = [
        (f"job-{i}\x01j%", model, "a.b-c_1" if i % 2 else "operator")
        for i, model in enumerate(HOSTILE_MODELS)
    ]
    conversation = "conv:%1\x01c\x01t"
    try:
        request = {"message": "m", "conversation_id": conversation}
        counts = [
            await accounting.prepare(
                redis, finished(job_id, model=model), request, history_ttl=600, tenant=tenant
            )
            for job_id, model, tenant in jobs
        ]
        # (held back until settled: the keys a count deletes from are there before)
        for job_id, _, tenant in jobs:
            client.hset(keys.BUDGET_RESERVED, job_id, "0.5")
            client.hset(keys.BUDGET_RESERVED_TENANT, job_id, tenant)
            client.zadd(keys.BUDGET_RESERVED_UNTIL, {job_id: 1})
        client.hset(keys.BUDGET_RESERVED, "other", "1")  # (so the hashes stay)
        client.hset(keys.BUDGET_RESERVED_TENANT, "other", "x")
        client.zadd(keys.BUDGET_RESERVED_UNTIL, {"other": 1})
        if batched:
            await accounting.write(redis, counts[0])  # (loads the script, which a MULTI cannot)
            async with redis.pipeline(transaction=True) as tr:
                tr.execute_command(*accounting.command(counts[1:]))
                (replies,) = await tr.execute()
            assert [r[:1] for r in replies] == [[1]] * (len(jobs) - 1)
        else:
            for count in counts:
                assert await accounting.write(redis, count) is True
    finally:
        await redis.aclose()
    expected = set().union(
        *(named_by_keys(t, m, j, conversation, c) for (j, m, t), c in zip(jobs, counts, strict=True))
    )
    assert set(client.keys("*")) == expected
    for job_id, model, tenant in jobs:
        assert (
            client.hget(keys.usage_model(model), "requests")
            == str(sum(1 for _, m, _ in jobs if m == model)).encode()
        ), model
        assert client.sismember(keys.usage_tenant(tenant, "models"), model)
        assert client.hget(keys.BUDGET_RESERVED, job_id) is None, "its hold not settled"
    assert client.hkeys(keys.BUDGET_RESERVED) == [b"other"]
