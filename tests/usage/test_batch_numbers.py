"""The batched usage script gets its numbers through cjson (doubles) and hands sums to Redis
as Lua numbers (%.17g): a count Redis takes exactly one job at a time (any int64) is rounded, or
refused as '1e+18', in a batch, and the refusal drops the *other* jobs' share of the shared keys."""

from __future__ import annotations

from test_totals import finished

from shared.connection import connect
from worker import accounting


async def counted(redis, client, counts, batched: bool) -> dict:
    client.flushall()
    if batched:
        await accounting.write(redis, counts[0])  # loads the script
        client.flushall()
        async with redis.pipeline(transaction=True) as tr:
            tr.execute_command(*accounting.command(counts))
            await tr.execute()
    else:
        for count in counts:
            await accounting.write(redis, count)
    return {k: v for k, v in client.hgetall("mcpq:usage:total").items()}


async def test_a_big_count_of_one_tenant_does_not_drop_another_tenants_share(redis_url, redis_server):
    client = redis_server.client()
    redis = connect(redis_url)
    try:
        counts = [
            await accounting.prepare(
                redis,
                finished("big", prompt=10**18, cost=False),
                {"message": "a"},
                history_ttl=60,
                tenant="alice",
            ),
            await accounting.prepare(
                redis, finished("small", prompt=7, cost=False), {"message": "b"}, history_ttl=60, tenant="bob"
            ),
        ]
        one_by_one = await counted(redis, client, counts, batched=False)
        batch = await counted(redis, client, counts, batched=True)
    finally:
        await redis.aclose()
    # before bbbc19f (one script a job, counts as string arguments): 1000000000000000007 both ways;
    # at e187755: one by one b'7' (alice's refused as '1e+18', mcpq:usage:total named 'damaged'),
    # batched: no prompt_tokens at all (bob's 7 dropped with it)
    assert batch.get(b"prompt_tokens") == one_by_one.get(b"prompt_tokens")
    assert int(batch.get(b"prompt_tokens", 0)) > 10**12 + 7, batch
