"""Usage and cost totals in Redis: summed by every worker, each job counted once, unpriced never $0,
readable with a plain Redis client and with `messenger stats`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import defaultdict

import anyio
import pytest
from mcp import Client
from processes import start_openai_workers, worker_ids
from runtimes import runtime_for
from usage_helpers import ROOT, call, stored_result, subprocess_env

from messenger.server import build_server
from messenger.usage import usage_stats
from shared import prices
from shared.connection import connect
from shared.models import ChatRequest, JobResult, ResultUsage
from worker import accounting

COUNTERS = ("prompt_tokens", "completion_tokens", "total_tokens")


def sums(results: list[dict]) -> dict:
    """requests, completed, tokens and cost summed from the per-job results."""
    out = {"requests": len(results), "completed": sum(r["status"] == "completed" for r in results)}
    out["prompt_tokens"] = sum(r["usage"]["promptTokens"] for r in results)
    out["completion_tokens"] = sum(r["usage"]["completionTokens"] for r in results)
    out["total_tokens"] = sum(r["usage"]["totalTokens"] for r in results)
    out["cost_usd"] = sum(r["usage"]["estimatedCost"] for r in results)
    return out


async def test_two_workers_totals_equal_the_sum_of_per_job_usage(
    redis_url, workers, openai_server, clean_env, redis_server
):
    openai_server.script(reply="Counted once by whichever worker ran it.", token_delay=0.01)
    start_openai_workers(workers, redis_url, openai_server, count=2, WORKER_CONCURRENCY="5")
    requests = [
        ChatRequest(message=f"question {i} " + "padding " * i, model=("gpt-4o", "gpt-4o-mini")[i % 2])
        for i in range(30)
    ]
    client = redis_server.client()
    async with runtime_for(redis_url) as runtime, asyncio.timeout(60):
        answers = await asyncio.gather(*(runtime.jobs.run(r) for r in requests))
        assert {a.status for a in answers} == {"completed"}, [a.error for a in answers]
        results = [await stored_result(client, a.job_id) for a in answers]
        stats = await usage_stats(runtime.redis)

    # what each job reported is what was counted, nothing more and nothing less
    want = sums(results)
    totals = stats["totals"]
    for name in ("requests", "completed", *COUNTERS):
        assert totals[name] == want[name], name
    assert totals["failed"] == totals["cancelled"] == totals["unpriced"] == 0
    assert totals["cost_usd"] == pytest.approx(want["cost_usd"], rel=1e-9, abs=1e-9)
    assert totals["avg_latency_ms"] is not None and totals["p95_latency_ms"] is not None

    by_model = defaultdict(list)
    for r in results:
        by_model[r["model"]].append(r)
    assert set(stats["models"]) == {"gpt-4o", "gpt-4o-mini"}
    for model, rows in by_model.items():
        got, expected = stats["models"][model], sums(rows)
        assert len(rows) == 15
        for name in ("requests", "completed", *COUNTERS):
            assert got[name] == expected[name], (model, name)
        assert got["cost_usd"] == pytest.approx(expected["cost_usd"], rel=1e-9, abs=1e-9)
        for r in rows:  # each job's cost comes from the price table
            usage = r["usage"]
            assert usage["estimatedCost"] == pytest.approx(
                prices.cost(model, usage["promptTokens"], usage["completionTokens"])
            )
        assert got["p95_latency_ms"] is not None
    assert stats["models"]["gpt-4o"]["cost_usd"] > stats["models"]["gpt-4o-mini"]["cost_usd"] > 0
    days = stats["days"].values()  # one day, or two if the run crossed midnight UTC
    assert sum(d["requests"] for d in days) == 30
    assert sum(d["total_tokens"] for d in days) == want["total_tokens"]

    assert {r["workerId"] for r in results} == worker_ids(client), "both workers counted jobs"

    # redis-cli users read the same numbers
    raw = client.hgetall("mcpq:usage:total")
    assert int(raw[b"requests"]) == 30
    assert int(raw[b"completed"]) == 30
    for name in COUNTERS:
        assert int(raw[name.encode()]) == totals[name]
    assert float(raw[b"cost_usd"]) == pytest.approx(totals["cost_usd"], rel=1e-9)
    assert int(client.hget("mcpq:usage:model:gpt-4o", "requests")) == 15
    assert client.smembers("mcpq:usage:models") == {b"gpt-4o", b"gpt-4o-mini"}


def finished(job_id: str, *, status="completed", model="gpt-4o", prompt=100, completion=50, cost=True):
    usage = ResultUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        estimated_cost=prices.cost(model, prompt, completion) if cost else None,
    )
    return JobResult(
        job_id=job_id,
        status=status,
        ai_response="an answer" if status == "completed" else "",
        model=model,
        usage=usage,
        processing_time=0.25,
        error=None if status == "completed" else "it broke",
        worker_id="w-test",
        attempt=1,
    ).model_dump(mode="json")


async def test_a_job_is_counted_once_however_often_it_is_recorded(redis_url, redis_server):
    client = redis_server.client()
    result = finished("job-once")
    request = {"message": "count me", "conversation_id": "conv-once"}
    client.hset("mcpq:budget:reserved", "job-once", "0.5")  # admitted with a reservation
    client.zadd("mcpq:budget:reserved-until", {"job-once": 10**13})
    redis = connect(redis_url)
    try:
        assert await accounting.record(redis, result, request, history_ttl=600) is True
        assert await accounting.record(redis, result, request, history_ttl=600) is False
        assert await accounting.record(redis, dict(result), request, history_ttl=600) is False
        failed = finished("job-failed", status="failed", prompt=7, completion=0)
        assert await accounting.record(redis, failed, request, history_ttl=600) is True
        stats = await usage_stats(redis)
    finally:
        await redis.aclose()

    totals = stats["totals"]
    assert totals["requests"] == 2
    assert (totals["completed"], totals["failed"]) == (1, 1)
    assert totals["prompt_tokens"] == 107
    assert totals["completion_tokens"] == 50
    assert totals["total_tokens"] == 157
    assert totals["cost_usd"] == pytest.approx(prices.cost("gpt-4o", 107, 50))
    assert client.llen("mcpq:received") == 2
    assert client.lrange("mcpq:usage:latency:gpt-4o", 0, -1) == [b"250", b"250"]
    # the completed job added its two turns once; the failed one added none
    turns = [json.loads(t) for t in client.lrange("mcpq:conversation:operator:conv-once", 0, -1)]
    assert [(t["role"], t["job_id"]) for t in turns] == [("user", "job-once"), ("assistant", "job-once")]
    # the reservation was settled once, into the spent totals
    assert client.hget("mcpq:budget:reserved", "job-once") is None
    assert client.zscore("mcpq:budget:reserved-until", "job-once") is None
    (day_key,) = client.keys("mcpq:budget:spent:day:*")
    assert float(client.get(day_key)) == pytest.approx(prices.cost("gpt-4o", 107, 50))


async def test_a_dead_attempts_streamed_tokens_are_counted_as_estimated(redis_url, redis_server):
    """Issue 12: an attempt whose worker died mid-answer was paid for; when the job settles on a
    later attempt, what the dead attempt streamed (and its prompt) is added to usage and spend."""
    client = redis_server.client()
    message = "twelve characters and some more words here"  # 44 characters: an 11-token prompt
    events = [
        {
            "job_id": "job-rerun",
            "seq": 0,
            "attempt": 1,
            "type": "start",
            "ts": 1.0,
            "worker_id": "w-dead",
            "model": "gpt-4o",
        }
    ]
    events += [
        {"job_id": "job-rerun", "seq": i, "attempt": 1, "type": "token", "ts": 1.0, "text": "w "}
        for i in range(1, 31)
    ]  # 30 tokens, then the worker died
    events += [{"job_id": "job-rerun", "seq": 0, "attempt": 2, "type": "start", "ts": 2.0,
                "worker_id": "w-test", "model": "gpt-4o"}]  # fmt: skip
    client.xadd("mcpq:stream:job-rerun", {"event": b"not an event"})  # junk is not a token
    for event in events:
        client.xadd("mcpq:stream:job-rerun", {"event": json.dumps(event)})
    result = finished("job-rerun") | {"attempt": 2}
    redis = connect(redis_url)
    try:
        assert await accounting.record(redis, result, {"message": message}, history_ttl=600, tenant="alice")
        stats = await usage_stats(redis)
    finally:
        await redis.aclose()
    dead_prompt, dead_completion = len(message) // 4, 30
    totals = stats["totals"]
    assert totals["prompt_tokens"] == 100 + dead_prompt
    assert totals["completion_tokens"] == 50 + dead_completion
    assert totals["total_tokens"] == 150 + dead_prompt + dead_completion
    assert totals["dead_attempt_tokens"] == dead_prompt + dead_completion
    cost = prices.cost("gpt-4o", 100, 50) + prices.cost("gpt-4o", dead_prompt, dead_completion)
    assert totals["cost_usd"] == pytest.approx(cost)
    assert stats["tenants"]["alice"]["totals"]["dead_attempt_tokens"] == dead_prompt + dead_completion
    (day_key,) = client.keys("mcpq:budget:spent:day:*")
    assert float(client.get(day_key)) == pytest.approx(cost)
    (received,) = [json.loads(r) for r in client.lrange("mcpq:received:alice", 0, -1)]
    assert received["dead_attempts"] == {
        "attempts": [1], "prompt_tokens": dead_prompt, "completion_tokens": dead_completion,
        "cost_usd": pytest.approx(prices.cost("gpt-4o", dead_prompt, dead_completion)), "estimated": True,
    }  # fmt: skip


async def test_unpriced_models_show_no_cost_and_the_received_log_shows_every_outcome(
    redis_url, workers, clean_env, redis_server
):
    """mock-1 priced through MODEL_PRICES; `mock-free` has no price; gpt-4o is unknown to the mock."""
    table = {"mock-1": [1.5, 4.0]}
    workers.start(redis_url, count=1, MODEL_PRICES=json.dumps(table))
    (worker_id,) = worker_ids(redis_server.client())
    plan = ["mock-1", "mock-free", "mock-1", "gpt-4o", "mock-free", "mock-1"]
    client = redis_server.client()
    async with runtime_for(redis_url, model_prices=table) as runtime:
        with anyio.fail_after(60):
            results = []
            for i, model in enumerate(plan):
                answer = await runtime.jobs.run(ChatRequest(message=f"message number {i}", model=model))
                results.append(await stored_result(client, answer.job_id))
            stats = await usage_stats(runtime.redis)
            async with Client(build_server(runtime)) as mcp:
                received = (await call(mcp, "get_received_messages"))["received"]
                newest_two = (await call(mcp, "get_received_messages", limit=2))["received"]
                via_tool = await call(mcp, "get_ai_usage_stats")

    assert [r["status"] for r in results] == [
        "completed",
        "completed",
        "completed",
        "failed",
        "completed",
        "completed",
    ]
    for r in results:
        if r["model"] == "mock-1":
            usage = r["usage"]
            assert usage["estimatedCost"] == pytest.approx(
                prices.cost("mock-1", usage["promptTokens"], usage["completionTokens"])
            )
            assert usage["estimatedCost"] > 0
        elif r["model"] == "mock-free":
            assert r["usage"]["estimatedCost"] is None

    free = stats["models"]["mock-free"]
    assert free["cost_usd"] is None, "an unpriced model is never reported as $0"
    assert (free["requests"], free["completed"], free["unpriced"]) == (2, 2, 2)
    assert free["prompt_tokens"] == sum(
        r["usage"]["promptTokens"] for r in results if r["model"] == "mock-free"
    )
    priced = stats["models"]["mock-1"]
    assert priced["unpriced"] == 0
    assert priced["cost_usd"] == pytest.approx(
        sum(r["usage"]["estimatedCost"] for r in results if r["model"] == "mock-1")
    )
    assert stats["models"]["gpt-4o"]["failed"] == 1
    assert stats["totals"]["unpriced"] == 2
    assert stats["totals"]["requests"] == 6
    assert via_tool["totals"] == stats["totals"]

    assert len(received) == 6
    by_job = {e["job_id"]: e for e in received}
    assert set(by_job) == {r["jobId"] for r in results}
    for r in results:
        entry = by_job[r["jobId"]]
        assert entry["worker_id"] == worker_id
        assert entry["model"] == r["model"]
        assert entry["status"] == r["status"]
        assert entry["prompt_tokens"] == r["usage"]["promptTokens"]
    failed = by_job[results[3]["jobId"]]
    assert failed["status"] == "failed" and "unknown model" in failed["error"]
    assert by_job[results[1]["jobId"]]["cost_usd"] is None
    assert [e["ts"] for e in received] == sorted((e["ts"] for e in received), reverse=True), "newest first"
    assert [e["job_id"] for e in newest_two] == [e["job_id"] for e in received[:2]]


async def test_messenger_stats_prints_a_table_and_json(redis_url, redis_server):
    redis = connect(redis_url)
    try:
        for i, (model, cost) in enumerate([("gpt-4o", True), ("gpt-4o", True), ("local-llama", False)]):
            await accounting.record(redis, finished(f"j{i}", model=model, cost=cost), {}, history_ttl=600)
    finally:
        await redis.aclose()

    def stats(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "messenger.cli", "stats", *args],
            env=subprocess_env(redis_url),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    lines = stats().splitlines()
    assert lines[0].split()[:3] == ["MODEL", "REQ", "OK"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"gpt-4o", "local-llama", "TOTAL"}
    assert rows["gpt-4o"][1:3] == ["2", "2"]
    assert f"${prices.cost('gpt-4o', 200, 100):.6f}" in rows["gpt-4o"]
    assert "unpriced" in rows["local-llama"]
    assert lines[0].endswith("PRICE FROM")  # where the worker took each model's price from
    source = {line.split()[0]: line for line in lines[1:]}
    assert source["gpt-4o"].endswith(f"  {prices.source('gpt-4o')}") and "genai-prices" in source["gpt-4o"]
    assert source["local-llama"].endswith("  -")
    assert rows["TOTAL"][1] == "3"
    assert rows["TOTAL"][5:7] == ["300", "150"]  # prompt and completion tokens

    data = json.loads(stats("--json"))
    assert data["totals"]["requests"] == 3
    assert data["totals"]["unpriced"] == 1
    assert data["models"]["local-llama"]["cost_usd"] is None
    assert data["models"]["gpt-4o"]["cost_usd"] == pytest.approx(prices.cost("gpt-4o", 200, 100))
    assert data["models"]["gpt-4o"]["price_source"] == prices.source("gpt-4o")
    assert data["models"]["local-llama"]["price_source"] is None


def dump(client) -> dict:
    """Every key's content, numbers read as numbers (a sum of costs may differ in its last digits)."""

    def value(v: bytes):
        try:
            return pytest.approx(float(v), rel=1e-12)
        except ValueError:
            return v

    out = {}
    for key in sorted(client.keys("*")):
        kind = client.type(key)
        if kind == b"hash":
            out[key] = {f: value(v) for f, v in client.hgetall(key).items()}
        elif kind == b"list":
            out[key] = client.lrange(key, 0, -1)
        elif kind == b"set":
            out[key] = client.smembers(key)
        elif kind == b"zset":
            out[key] = client.zrange(key, 0, -1, withscores=True)
        else:
            out[key] = value(client.get(key))
    return out


async def test_a_batch_of_endings_counts_as_the_same_jobs_counted_one_by_one(redis_url, redis_server):
    """The worker counts the jobs that end together in one script call (worker/endings.py), which adds
    up the counters they share: the totals, lists, spend and minute must be what one call a job writes,
    a job counted before must not count again, and a damaged key is named for each job that wrote it."""
    client = redis_server.client()
    redis = connect(redis_url)
    jobs = [
        (finished("b1"), {"message": "one", "conversation_id": "c1"}, "alice"),
        (finished("b2", model="gpt-4o-mini"), {"message": "two", "conversation_id": "c1"}, "alice"),
        (finished("b3", cost=False, model="local-llama"), {"message": "three"}, "bob"),
        (finished("b4", status="failed", prompt=7, completion=0), {"message": "four"}, "alice"),
        (finished("b5", prompt=3, completion=9), {"message": "five"}, "operator"),
    ]
    try:
        counts = [
            await accounting.prepare(redis, r, q, history_ttl=600, tenant=t, first_token_s=0.01)
            for r, q, t in jobs
        ]

        def damage() -> None:
            client.flushall()
            client.set("mcpq:usage:counted:b4", "1")  # counted before: not again
            client.set("mcpq:usage:tenant:bob:total", "junk")  # damaged: b3's key only
            client.hset("mcpq:budget:reserved", mapping={"b1": "0.5", "b2": "0.5", "other": "1"})

        damage()
        for count in counts:  # (the first call also loads the script, which a MULTI cannot)
            await accounting.write(redis, count)
        one_by_one = dump(client)
        damage()
        async with redis.pipeline(transaction=True) as tr:
            tr.execute_command(*accounting.command(counts))
            (replies,) = await tr.execute()
        batch = dump(client)
    finally:
        await redis.aclose()
    assert batch == one_by_one
    assert [r[0] for r in replies] == [1, 1, 1, 0, 1]
    assert [r[2:] for r in replies] == [[], [], [b"mcpq:usage:tenant:bob:total"], [], []]
    assert batch[b"mcpq:budget:reserved"] == {b"other": 1.0}
    assert batch[b"mcpq:usage:total"][b"requests"] == 4


@pytest.mark.parametrize(
    "message",
    [
        pytest.param("naïve — 日本語", id="non-ascii"),
        # a lone surrogate (a job value pushed by hand: "\ud800" in its JSON): the fast encoder refuses
        # it, json.dumps takes over
        pytest.param("odd \ud800 text é", id="lone-surrogate"),
    ],
)
async def test_a_count_lists_the_message_and_its_turns_as_sent(redis_url, redis_server, message):
    client = redis_server.client()
    client.flushall()
    redis = connect(redis_url)
    try:
        request = {"message": message, "conversation_id": "conv-text"}
        assert await accounting.record(redis, finished("job-text"), request, history_ttl=600) is True
    finally:
        await redis.aclose()
    (entry,) = [json.loads(e) for e in client.lrange("mcpq:received", 0, -1)]
    assert (entry["job_id"], entry["message"]) == ("job-text", message)
    turns = [json.loads(t) for t in client.lrange("mcpq:conversation:operator:conv-text", 0, -1)]
    assert [(t["role"], t["content"]) for t in turns] == [("user", message), ("assistant", "an answer")]
