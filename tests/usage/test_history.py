"""Conversation history in Redis: the worker sends the earlier turns to the model (capped), appends
the new turn, and the turns expire; get_conversation_history shows them with tokens and cost."""

from __future__ import annotations

import json

import anyio
import pytest
from mcp import Client
from processes import start_openai_workers
from runtimes import runtime_for
from usage_helpers import call, stored_result

from messenger.server import build_server
from shared import prices
from shared.models import ChatRequest

TURNS = [
    ("Plan a trip to Lisbon.", "Day one: Alfama and the castle."),
    ("What about day two?", "Day two: Belem and pastries."),
    ("And the evening?", "Fado in Bairro Alto."),
]


async def converse(runtime, server, client, conversation_id: str) -> list[dict]:
    results = []
    for question, answer in TURNS:
        server.script(reply=answer)
        request = ChatRequest(message=question, model="gpt-4o-mini", conversation_id=conversation_id)
        result = await runtime.jobs.run(request, timeout=30)
        assert result.status == "completed", result.error
        assert result.ai_response == answer
        results.append(await stored_result(client, result.job_id))
    return results


async def test_a_three_turn_conversation_sends_the_earlier_turns(
    redis_url, workers, openai_server, clean_env, redis_server
):
    start_openai_workers(workers, redis_url, openai_server, HISTORY_TTL_SECONDS="600")
    client = redis_server.client()
    async with runtime_for(redis_url) as runtime:
        with anyio.fail_after(60):
            results = await converse(runtime, openai_server, client, "lisbon-trip")
            async with Client(build_server(runtime)) as mcp:
                history = await call(mcp, "get_conversation_history", conversation_id="lisbon-trip")
                last_two = await call(mcp, "get_conversation_history", conversation_id="lisbon-trip", limit=2)
                listed = await call(mcp, "get_conversation_history")
                unknown = await call(mcp, "get_conversation_history", conversation_id="never-started")

    sent = [r.body["messages"] for r in openai_server.chat_requests]
    (q1, a1), (q2, a2), (q3, _) = TURNS
    assert sent[0] == [{"role": "user", "content": q1}]
    assert sent[1] == [
        {"role": "user", "content": q1},
        {"role": "assistant", "content": a1},
        {"role": "user", "content": q2},
    ]
    assert sent[2] == [
        {"role": "user", "content": q1},
        {"role": "assistant", "content": a1},
        {"role": "user", "content": q2},
        {"role": "assistant", "content": a2},
        {"role": "user", "content": q3},
    ]

    turns = history["turns"]
    assert [(t["role"], t["content"]) for t in turns] == [
        (role, text) for q, a in TURNS for role, text in (("user", q), ("assistant", a))
    ]
    for turn, result in zip(turns[1::2], results, strict=True):
        usage = result["usage"]
        assert turn["job_id"] == result["jobId"]
        assert turn["model"] == "gpt-4o-mini"
        assert turn["prompt_tokens"] == usage["promptTokens"] > 0
        assert turn["completion_tokens"] == usage["completionTokens"] > 0
        assert turn["cost_usd"] == pytest.approx(
            prices.cost("gpt-4o-mini", usage["promptTokens"], usage["completionTokens"])
        )
        assert turn["cost_usd"] > 0
    assert [t["job_id"] for t in turns[::2]] == [r["jobId"] for r in results]
    assert [t["content"] for t in last_two["turns"]] == [q3, TURNS[2][1]]

    # the turns expire: HISTORY_TTL_SECONDS on the list, renewed by each turn
    assert 0 < history["expires_in_seconds"] <= 600
    assert 0 < client.ttl("mcpq:conversation:operator:lisbon-trip") <= 600
    assert listed["conversations"][0]["conversation_id"] == "lisbon-trip"
    assert listed["conversations"][0]["turns"] == 6
    assert unknown["turns"] == [] and unknown["expires_in_seconds"] is None


async def test_history_max_turns_caps_what_is_sent(
    redis_url, workers, openai_server, clean_env, redis_server
):
    start_openai_workers(workers, redis_url, openai_server, HISTORY_MAX_TURNS="2")
    async with runtime_for(redis_url) as runtime:
        with anyio.fail_after(60):
            await converse(runtime, openai_server, redis_server.client(), "capped")
    sent = [r.body["messages"] for r in openai_server.chat_requests]
    (q1, a1), (q2, a2), (q3, _) = TURNS
    assert sent[1] == [
        {"role": "user", "content": q1},
        {"role": "assistant", "content": a1},
        {"role": "user", "content": q2},
    ]
    assert sent[2] == [  # only the newest two earlier turns
        {"role": "user", "content": q2},
        {"role": "assistant", "content": a2},
        {"role": "user", "content": q3},
    ]
    assert redis_server.client().llen("mcpq:conversation:operator:capped") == 6  # all turns are kept


async def test_earlier_turns_keep_the_newest_that_fit_both_caps(redis_url, redis_server):
    from shared.connection import connect
    from worker.history import earlier_turns

    client = redis_server.client()
    key = "mcpq:conversation:operator:capped-by-tokens"
    texts = ["u1 " * 40, "a1 " * 40, "u2", "a2", "u3 " * 10, "a3 " * 10]  # 120, 120, 2, 2, 30, 30 chars
    for i, text in enumerate(texts):
        client.rpush(key, json.dumps({"role": ("user", "assistant")[i % 2], "content": text}))
    client.rpush(key, "not json")  # a damaged turn is skipped
    redis = connect(redis_url)
    try:

        async def sent(**caps) -> list[str]:
            turns = await earlier_turns(redis, "operator", "capped-by-tokens", **caps)
            return [t["content"].split()[0] if t["content"].strip() else "" for t in turns]

        everything = await sent(max_turns=100, max_tokens=10_000)
        by_tokens = await sent(max_turns=100, max_tokens=40)  # the last four cost 4+4+11+11 = 30 (len//4 + 4)
        one_turn = await sent(max_turns=2, max_tokens=10_000)  # the damaged entry and a3
        none = await sent(max_turns=0, max_tokens=10_000)
    finally:
        await redis.aclose()
    assert everything == ["u1", "a1", "u2", "a2", "u3", "a3"]
    assert by_tokens == ["u2", "a2", "u3", "a3"]
    assert one_turn == []  # never starts on an assistant turn
    assert none == []


async def test_a_job_whose_owner_record_is_gone_reads_and_extends_no_ones_conversation(
    redis_url, workers, openai_server, clean_env, redis_server
):
    """An evicted or deleted mcpq:owner:<id> must not make a tenant's job the operator's: it runs with
    no history and its turn goes into no conversation."""
    client = redis_server.client()
    start_openai_workers(workers, redis_url, openai_server)
    async with runtime_for(redis_url) as runtime:
        with anyio.fail_after(60):
            openai_server.script(reply="The operator's secret plan.")
            first = await runtime.jobs.run(
                ChatRequest(message="operator asks", model="gpt-4o-mini", conversation_id="shared5"),
                timeout=30,
            )
            assert first.status == "completed", first.error
            workers.stop_all()
            request = ChatRequest(message="alice asks", model="gpt-4o-mini", conversation_id="shared5")
            job_id = await runtime.jobs.queue.submit(request, caller="alice")
            client.delete(f"mcpq:owner:{job_id}")
            openai_server.script(reply="An answer for nobody.")
            start_openai_workers(workers, redis_url, openai_server)
            result = await runtime.jobs.wait(job_id, timeout=30)
    assert result.status == "completed", result.error
    assert openai_server.chat_requests[-1].body["messages"] == [{"role": "user", "content": "alice asks"}]
    turns = [json.loads(t) for t in client.lrange("mcpq:conversation:operator:shared5", 0, -1)]
    assert [t["content"] for t in turns] == ["operator asks", "The operator's secret plan."]
    assert "runs as nobody's" in workers.logs()
