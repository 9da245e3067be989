"""Budgets and rate limits at admission: a Lua script reserves each request's worst case, atomically
across messenger replicas; the worker settles the real cost; a reservation lapses after its expiry."""

from __future__ import annotations

import asyncio
import json
import time

import anyio
import pytest
from mcp import Client
from readers import text_of
from runtimes import runtime_for
from usage_helpers import stored_result

from messenger import admission
from messenger.admission import Refused
from messenger.queue import ANONYMOUS
from messenger.server import build_server
from shared import keys, prices
from shared.models import ChatRequest
from shared.settings import load_settings

RESERVED = "mcpq:budget:reserved"
REQUEST = ChatRequest(message="How much will this cost?", model="gpt-4o-mini", max_tokens=1000)


def worst_case(request: ChatRequest, **settings) -> float:
    """What admission reserves for `request` (gpt-4o-mini: a built-in price)."""
    worst = admission.worst_case_usd(request, load_settings(**settings))
    assert worst is not None and worst > 0
    return worst


def reserved_total(client) -> float:
    return sum(float(v) for v in client.hvals(RESERVED))


def today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


async def test_100_concurrent_requests_against_a_budget_for_10_admit_exactly_10(
    redis_url, clean_env, redis_server
):
    worst = worst_case(REQUEST)
    cap = worst * 10.5  # room for ten worst cases, not eleven
    client = redis_server.client()
    most_held = 0.0
    burst_over = asyncio.Event()

    async def watch(runtime) -> None:
        nonlocal most_held
        while not burst_over.is_set():
            held = sum(float(v) for v in await runtime.redis.hvals(RESERVED))
            most_held = max(most_held, held)
            await asyncio.sleep(0)

    # two messenger replicas, no worker: every admitted job stays reserved
    async with (
        runtime_for(redis_url, budget_daily_usd=cap) as one,
        runtime_for(redis_url, budget_daily_usd=cap) as two,
        asyncio.timeout(60),
    ):
        watcher = asyncio.create_task(watch(one))
        outcomes = await asyncio.gather(
            *((one, two)[i % 2].queue.submit(REQUEST, caller=ANONYMOUS) for i in range(100)),
            return_exceptions=True,
        )
        burst_over.set()
        await watcher
        depth = await one.redis.zcard(keys.QUEUE)

    admitted = [o for o in outcomes if isinstance(o, str)]
    refused = [o for o in outcomes if isinstance(o, Refused)]
    assert len(admitted) == 10, [o for o in outcomes if not isinstance(o, str | Refused)]
    assert len(refused) == 90
    assert depth == 10
    for e in refused:
        assert "BUDGET_DAILY_USD" in str(e)
        assert "resets in" in str(e)
    assert most_held <= cap
    assert reserved_total(client) <= cap
    assert reserved_total(client) == pytest.approx(10 * worst)
    assert set(client.hkeys(RESERVED)) == {job_id.encode() for job_id in admitted}
    assert client.get(f"mcpq:budget:spent:day:{today()}") is None  # nothing ran, nothing spent


async def test_hourly_and_per_request_caps_name_their_limit(redis_url, clean_env):
    worst = worst_case(REQUEST)
    small = REQUEST.model_copy(update={"max_tokens": 10})
    small_worst = worst_case(small)
    async with runtime_for(
        redis_url, budget_per_request_usd=worst / 2, budget_hourly_usd=small_worst * 5.5
    ) as rt:
        with pytest.raises(Refused) as too_big:
            await rt.queue.submit(REQUEST, caller=ANONYMOUS)
        with pytest.raises(Refused) as unpriced:
            await rt.queue.submit(
                ChatRequest(message="hi", model="my-local-llama", max_tokens=10), caller=ANONYMOUS
            )
        admitted = 0
        with pytest.raises(Refused) as hourly:
            for _ in range(20):
                await rt.queue.submit(small, caller=ANONYMOUS)
                admitted += 1
    message = str(too_big.value)
    assert "BUDGET_PER_REQUEST_USD" in message and "max_tokens" in message
    assert admitted == 5
    assert "BUDGET_HOURLY_USD" in str(hourly.value) and "resets in" in str(hourly.value)
    assert "MODEL_PRICES" in str(unpriced.value) and "my-local-llama" in str(unpriced.value)


async def test_a_global_cap_refusal_tells_a_tenant_nothing_of_the_others_spend(redis_url, clean_env):
    """The global caps count every tenant: a tenant's refusal names the cap but not what everyone
    spent (a large max_tokens would otherwise read the others' spend at any time); the operator's does."""
    small = REQUEST.model_copy(update={"max_tokens": 10})
    cap = worst_case(small) * 3.5
    async with runtime_for(
        redis_url, budget_daily_usd=cap, mcp_api_keys={"alice": "key-a", "bob": "key-b"}
    ) as rt:
        for _ in range(3):
            await rt.queue.submit(small, caller="alice")
        refused = {}
        for caller in ("bob", ANONYMOUS):
            with pytest.raises(Refused) as got:
                await rt.queue.submit(small, caller=caller)
            refused[caller] = str(got.value)
    spent = f"${worst_case(small) * 3:.6f}"
    assert "BUDGET_DAILY_USD" in refused["bob"] and "resets in" in refused["bob"]
    assert spent not in refused["bob"] and "spent" not in refused["bob"]
    assert spent in refused[ANONYMOUS]


async def test_rate_limit_is_per_caller_and_names_its_setting(redis_url, clean_env):
    async with runtime_for(redis_url, rate_limit_per_minute=3) as rt:
        for attempt in range(3):  # a minute boundary in the middle restarts the count: try again
            alice, bob = f"key-alice-{attempt}", f"key-bob-{attempt}"
            minute = int(time.time() // 60)
            for _ in range(3):
                await rt.queue.submit(REQUEST, caller=alice)
            try:
                await rt.queue.submit(REQUEST, caller=alice)
            except Refused as e:
                refused = e
            else:
                assert int(time.time() // 60) != minute, "a fourth request in the same minute was admitted"
                continue
            await rt.queue.submit(REQUEST, caller=bob)  # another caller still passes
            break
    assert "RATE_LIMIT_PER_MINUTE=3" in str(refused)
    assert "resets in" in str(refused)


async def test_a_refused_request_is_an_mcp_tool_error_with_the_limit(redis_url, clean_env):
    big = {"message": "hi", "model": "gpt-4o-mini", "max_tokens": 1000}
    small = {**big, "max_tokens": 400}
    per_request = worst_case(ChatRequest(**big)) / 2
    daily = worst_case(ChatRequest(**small)) * 1.5  # one small request fits, two do not
    async with runtime_for(redis_url, budget_per_request_usd=per_request, budget_daily_usd=daily) as rt:
        with anyio.fail_after(30):
            async with Client(build_server(rt)) as mcp:
                too_big = await mcp.call_tool("send_message_to_ai", big)
                first = await mcp.call_tool("submit_message", small)
                over_daily = await mcp.call_tool("send_message_to_ai", small)
    assert too_big.is_error
    assert "BUDGET_PER_REQUEST_USD" in text_of(too_big)
    assert not first.is_error, text_of(first)
    assert over_daily.is_error
    assert "BUDGET_DAILY_USD" in text_of(over_daily) and "resets in" in text_of(over_daily)


async def test_a_reservation_lives_as_long_as_its_job_and_no_longer(redis_url, clean_env, redis_server):
    """Issue 12: a hold due for its check (BUDGET_RESERVATION_SECONDS) is kept while its job still
    waits in the queue, and given back once the job is gone (expired, dead-lettered, deleted)."""
    worst = worst_case(REQUEST)
    client = redis_server.client()
    async with runtime_for(redis_url, budget_daily_usd=worst * 1.5, budget_reservation_seconds=1) as rt:
        stuck = await rt.queue.submit(REQUEST, caller=ANONYMOUS)  # no worker: it waits in the queue
        client.zadd("mcpq:budget:reserved-until", {stuck: 0})  # long past its check time
        with pytest.raises(Refused, match="BUDGET_DAILY_USD"):
            await rt.queue.submit(REQUEST, caller=ANONYMOUS)
        assert client.hkeys(RESERVED) == [stuck.encode()]
        assert client.zscore("mcpq:budget:reserved-until", stuck) > 0  # checked again later
        client.delete(f"arq:job:{stuck}")  # the job is gone without being counted
        client.zrem("arq:queue", stuck)
        client.zadd("mcpq:budget:reserved-until", {stuck: 0})
        later = await rt.queue.submit(
            REQUEST, caller=ANONYMOUS
        )  # fits only because the gone job's hold was released
    assert client.hkeys(RESERVED) == [later.encode()]
    assert client.hkeys("mcpq:budget:reserved-tenant") == [later.encode()]
    assert client.zscore("mcpq:budget:reserved-until", stuck) is None
    assert reserved_total(client) == pytest.approx(worst)


async def test_a_tenants_rate_and_budget_hold_across_replicas_and_spare_the_others(
    redis_url, clean_env, redis_server
):
    worst = worst_case(REQUEST)
    tenants = {"mcp_api_keys": {"alice": "key-a", "bob": "key-b"}, "budget_daily_usd": worst * 100}
    limits = {"alice": {"requests_per_minute": 10}, "bob": {"daily_usd": worst * 5.5}}

    async def burst(name: str) -> tuple[list[str], list[Refused]]:
        got = await asyncio.gather(
            *((one, two)[i % 2].queue.submit(REQUEST, caller=name) for i in range(50)), return_exceptions=True
        )
        assert all(isinstance(g, str | Refused) for g in got), got
        return [g for g in got if isinstance(g, str)], [g for g in got if isinstance(g, Refused)]

    if time.time() % 60 > 57:  # the rate window is the wall-clock minute: start in a fresh one
        await anyio.sleep(60 - time.time() % 60)
    async with (
        runtime_for(redis_url, **tenants, tenant_limits=limits) as one,
        runtime_for(redis_url, **tenants, tenant_limits=limits) as two,
        asyncio.timeout(60),
    ):
        alice, bob, operator = await burst("alice"), await burst("bob"), await burst(ANONYMOUS)
    assert len(alice[0]) == 10 and len(alice[1]) == 40
    assert {str(e).split(";")[0] for e in alice[1]} == {
        "rate limit reached: TENANT_LIMITS['alice'].requests_per_minute=10 requests a minute for tenant 'alice'"
    }
    assert len(bob[0]) == 5 and len(bob[1]) == 45
    assert all("tenant 'bob' daily budget reached" in str(e) for e in bob[1])
    assert all("TENANT_LIMITS['bob'].daily_usd=" in str(e) for e in bob[1])
    assert len(operator[0]) == 50  # neither tenant's limits touch the operator (or each other)
    client = redis_server.client()
    held = client.hgetall("mcpq:budget:reserved-tenant")
    assert sorted(v.decode() for v in held.values()).count("bob") == 5


async def test_a_backlog_older_than_the_reservation_time_cannot_overspend(
    redis_url, workers, clean_env, redis_server
):
    """Issue 12: a queue backlog that outlives BUDGET_RESERVATION_SECONDS keeps its holds, so bursts
    while it waits and while workers drain it admit nothing past the cap (spend <= cap + one job)."""
    table = {"mock-1": [0.0, 1000.0]}  # output only: a job that fills max_tokens costs its worst case
    request = ChatRequest(message=" ".join(["word"] * 40), model="mock-1", max_tokens=20)
    worst = 20 * 1000.0 / 1_000_000
    cap = worst * 5.5
    client = redis_server.client()
    settings = {"budget_daily_usd": cap, "budget_reservation_seconds": 1, "model_prices": table}

    async def burst(rt, n: int) -> list[str]:
        got = await asyncio.gather(
            *(rt.queue.submit(request, caller=ANONYMOUS) for _ in range(n)), return_exceptions=True
        )
        assert all(isinstance(g, str | Refused) for g in got), got
        return [g for g in got if isinstance(g, str)]

    async with runtime_for(redis_url, **settings) as rt, asyncio.timeout(120):
        admitted = await burst(rt, 8)
        assert len(admitted) == 5
        await anyio.sleep(1.5)  # the backlog ages past BUDGET_RESERVATION_SECONDS (1 s), no worker yet
        admitted += await burst(rt, 20)
        workers.start(redis_url, count=2, MODEL_PRICES=json.dumps(table))
        while client.zcard("arq:queue") or client.keys("arq:in-progress:*"):  # bursts while it drains
            admitted += await burst(rt, 5)
            await asyncio.sleep(0.05)
        results = [await stored_result(client, job_id) for job_id in admitted]
    spent = float(client.get(f"mcpq:budget:spent:day:{today()}"))
    assert all(r["status"] == "completed" for r in results), [r["error"] for r in results]
    assert sum(r["usage"]["estimatedCost"] for r in results) == pytest.approx(spent)
    assert spent <= cap + worst, f"spent ${spent:.4f} of a ${cap:.4f} cap ({len(admitted)} jobs admitted)"
    assert len(admitted) == 5 and spent == pytest.approx(5 * worst)
    assert client.hlen(RESERVED) == 0  # every hold settled


async def test_a_finished_job_settles_its_real_cost(redis_url, workers, clean_env, redis_server):
    table = {"mock-1": [2.0, 8.0]}
    client = redis_server.client()
    async with runtime_for(redis_url, budget_daily_usd=1.0, model_prices=table) as rt:
        request = ChatRequest(message="settle me please", max_tokens=50)  # model: the default, mock-1
        job_id = await rt.queue.submit(request, caller=ANONYMOUS)
        held = float(client.hget(RESERVED, job_id))
        pinned = admission.pinned(request, admission.ModelDefaults(), rt.settings)
        assert held == pytest.approx(admission.worst_case_usd(pinned, rt.settings))
        workers.start(redis_url, count=1, MODEL_PRICES=json.dumps(table))
        with anyio.fail_after(30):
            result = await stored_result(client, job_id)
    assert result["status"] == "completed", result["error"]
    usage = result["usage"]
    cost = prices.cost("mock-1", usage["promptTokens"], usage["completionTokens"])
    assert usage["estimatedCost"] == pytest.approx(cost) and 0 < cost < held
    assert client.hget(RESERVED, job_id) is None
    assert client.zscore("mcpq:budget:reserved-until", job_id) is None
    assert float(client.get(f"mcpq:budget:spent:day:{today()}")) == pytest.approx(cost)


async def test_cancelling_a_queued_job_gives_back_its_reservation(redis_url, clean_env, redis_server):
    """A job cancelled before any worker took it ends too; its hold must not wait for the expiry."""
    worst = worst_case(REQUEST)
    client = redis_server.client()
    async with runtime_for(redis_url, budget_daily_usd=worst * 1.5) as rt:
        queued = await rt.queue.submit(REQUEST, caller=ANONYMOUS)
        cancelled = await rt.jobs.cancel(queued)
        assert cancelled.status == "cancelled"
        assert client.hget(RESERVED, queued) is None, "the cancelled job still holds its worst case"
        await rt.queue.submit(REQUEST, caller=ANONYMOUS)  # the budget it held is free again


async def test_a_request_the_queue_cannot_take_gives_back_its_reservation(redis_url, clean_env, redis_server):
    from shared.errors import QueueFull

    client = redis_server.client()
    async with runtime_for(redis_url, budget_daily_usd=1.0, max_queue_depth=1) as rt:
        first = await rt.queue.submit(REQUEST, caller=ANONYMOUS)
        with pytest.raises(QueueFull):
            await rt.queue.submit(REQUEST, caller=ANONYMOUS)
    assert client.hkeys(RESERVED) == [first.encode()]


async def test_a_tool_job_reserves_every_turn_and_stops_before_a_turn_its_reservation_cannot_cover(
    redis_url, workers, openai_server, clean_env, redis_server
):
    import sys

    from processes import start_openai_workers
    from usage_helpers import ROOT

    servers = {"clock": {"command": sys.executable, "args": [str(ROOT / "tests" / "mcp_clock_server.py")]}}
    request = ChatRequest(
        message="What time is it?", model="gpt-4o-mini", max_tokens=50, mcp_servers=["clock"]
    )
    single = worst_case(request.model_copy(update={"mcp_servers": None}), tool_max_rounds=3)
    # the model asks for the clock every turn and reports a costly first turn: 100k + 100k tokens
    openai_server.script(tool_calls=[("clock__now", "{}")], tool_rounds=100, usage=(100_000, 100_000))
    start_openai_workers(
        workers, redis_url, openai_server, MCP_SERVERS=json.dumps(servers), TOOL_MAX_ROUNDS="3"
    )
    client = redis_server.client()
    async with runtime_for(redis_url, budget_daily_usd=100.0, mcp_servers=servers, tool_max_rounds=3) as rt:
        job_id = await rt.queue.submit(request, caller=ANONYMOUS)
        held = float(client.hget(RESERVED, job_id))
        with anyio.fail_after(30):
            result = await stored_result(client, job_id)
    assert held == pytest.approx(4 * single)  # one model turn plus TOOL_MAX_ROUNDS=3 more
    assert result["status"] == "failed"
    assert "reserved for this job" in result["error"] and "TOOL_MAX_ROUNDS" in result["error"]
    assert len(openai_server.chat_requests) == 1 and len(result["toolCalls"]) == 1
    first_turn = prices.cost("gpt-4o-mini", 100_000, 100_000)
    assert result["usage"]["estimatedCost"] == pytest.approx(first_turn)
    assert client.hget(RESERVED, job_id) is None  # settled at its real cost
    assert float(client.get(f"mcpq:budget:spent:day:{today()}")) == pytest.approx(first_turn)


async def test_a_tool_request_over_the_per_request_cap_names_tool_max_rounds(redis_url, clean_env):
    servers = {"clock": {"command": "clock-server"}}
    tools = REQUEST.model_copy(update={"mcp_servers": ["clock"]})
    async with runtime_for(
        redis_url, budget_per_request_usd=worst_case(REQUEST) * 2, mcp_servers=servers, tool_max_rounds=8
    ) as rt:
        assert await rt.queue.submit(REQUEST, caller=ANONYMOUS)  # one turn fits
        with pytest.raises(Refused) as refused:
            await rt.queue.submit(tools, caller=ANONYMOUS)  # nine turns do not
    assert "9 model turns" in str(refused.value) and "TOOL_MAX_ROUNDS" in str(refused.value)


async def test_an_admission_sent_again_after_its_reply_was_lost_counts_the_request_once(
    redis_url, redis_server, clean_env
):
    """redis-py sends the admission script again when the connection drops with its reply on the way:
    the second run finds the job admitted, instead of counting its request a second time (a limit of
    one a minute refused the only request made) or holding its cost twice."""
    from relays import losing_one_reply

    from shared.connection import connect

    settings = load_settings(redis_url=redis_url, rate_limit_per_minute=1, budget_hourly_usd=1.0)
    request = ChatRequest(message="hi", model="gpt-4o-mini", max_tokens=10)
    redis_server.client().script_load(admission._admit.lua)  # type: ignore[attr-defined]  # (its EVALSHA runs)
    async with losing_one_reply(redis_server.port, b"admitted-once") as port:
        redis = connect(f"redis://127.0.0.1:{port}/0")
        try:
            await admission.admit(redis, settings, request, job_id="admitted-once")
            rate = [await redis.get(k) for k in await redis.keys(f"{keys.RATE_PREFIX}*")]
            held = await redis.hlen(keys.BUDGET_RESERVED)
        finally:
            await redis.aclose()
    assert (rate, held) == ([b"1"], 1)
