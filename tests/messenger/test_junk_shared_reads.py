"""Junk in the shared `mcpq:` keys (usage, conversations, received, model defaults, heartbeats, tenants,
dead letters) never breaks a read: every tool, resource, CLI command and the dashboard answers, the
damaged key is skipped and named once in a WARNING (never "the queue is unreachable"), and a chat
job whose conversation key is damaged still runs, without history.

Real redis-server (the test's own) and the real worker code in the test process (embedded_worker on
that Redis, mock provider); the MCP tools through an in-memory MCP client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time

import test_junk_reads
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client
from readers import text_of

from messenger import dashboard, usage
from messenger.runtime import open_runtime
from messenger.server import build_server
from messenger.tenants import Tenant
from shared import dead_letter, keys
from shared.models import ChatRequest
from shared.settings import load_settings
from worker.embedded import embedded_worker

own_redis = test_junk_reads.own_redis  # the fixture: a redis-server of the test's own
TENANT = "acme"
MODEL = "mock-model"
TODAY = time.strftime("%Y-%m-%d", time.gmtime())
CONVERSATION = "talk-1"


def shared_keys() -> list[str]:
    """Every shared key a read path reads, for all tenants and for TENANT."""

    def mine(part: str) -> str:
        return keys.usage_tenant(TENANT, part)

    return [
        keys.USAGE_TOTAL, keys.USAGE_MODELS, keys.usage_model(MODEL), keys.usage_day(TODAY),
        keys.usage_latency(MODEL), mine("total"), mine("models"), mine(f"model:{MODEL}"), mine(f"day:{TODAY}"),
        mine(f"latency:{MODEL}"), keys.TENANTS, keys.conversations(TENANT), keys.conversation(TENANT, CONVERSATION),
        keys.RECEIVED, keys.received(TENANT), keys.MODEL_DEFAULTS, keys.model_defaults(TENANT),
        keys.worker("junk"), keys.DEAD_LETTER, keys.DEAD_LETTER_ORDER, keys.RECENT_JOBS,
    ]  # fmt: skip


async def seed(r) -> None:
    """Every key with the shape it should have, so each wrong-type write replaces a real one."""
    for key in shared_keys():
        await r.delete(key)
    for total in (keys.USAGE_TOTAL, keys.usage_tenant(TENANT, "total"), keys.usage_model(MODEL),
                  keys.usage_tenant(TENANT, f"model:{MODEL}")):  # fmt: skip
        await r.hset(total, mapping={"requests": 1, "completed": 1, "cost_usd": "0.5", "latency_ms": 10})
    await r.sadd(keys.USAGE_MODELS, MODEL)
    await r.sadd(keys.usage_tenant(TENANT, "models"), MODEL)
    await r.sadd(keys.TENANTS, TENANT)
    await r.rpush(keys.usage_latency(MODEL), 10)
    await r.zadd(keys.conversations(TENANT), {CONVERSATION: time.time()})
    await r.rpush(keys.conversation(TENANT, CONVERSATION), json.dumps({"role": "user", "content": "hi"}))
    await r.lpush(keys.RECEIVED, json.dumps({"job_id": "x"}))
    await r.hset(keys.usage_day(TODAY), "requests", 1)
    await r.hset(keys.usage_tenant(TENANT, f"day:{TODAY}"), "requests", 1)
    await r.set(keys.MODEL_DEFAULTS, "{}")
    await r.hset(keys.DEAD_LETTER, "x", "{}")


WRONG_TYPES = {"string": lambda r, k: r.set(k, b"\xff junk"), "hash": lambda r, k: r.hset(k, "f", "v"),
               "list": lambda r, k: r.rpush(k, "v"), "set": lambda r, k: r.sadd(k, "v"),
               "zset": lambda r, k: r.zadd(k, {"v": 1}), "stream": lambda r, k: r.xadd(k, {"f": "v"})}  # fmt: skip


async def damage_types(r) -> list[str]:
    """Every shared key replaced by a value of a type it must not have."""
    damaged = []
    for key in shared_keys():
        kind = (await r.type(key)).decode()
        wrong = "hash" if kind in ("string", "none") else "string"
        await r.delete(key)
        await WRONG_TYPES[wrong](r, key)
        damaged.append(key)
    return damaged


async def read_everything(runtime, queued: tuple[str, ...] = ()) -> dict[str, object]:
    """Every read path once; each must answer (an MCP error result is a failure of the read). A job
    queued before the damage is read by id too."""
    answers: dict[str, object] = {}
    r = runtime.redis
    tenant = Tenant(TENANT)
    answers["stats tenant"] = await usage.usage_stats(r, tenant=tenant)
    answers["conversations tenant"] = await usage.conversations(r, 10, tenant)
    answers["received tenant"] = await usage.received_messages(r, 10, tenant)
    answers["defaults tenant"] = await usage.model_defaults(r, TENANT)
    answers["dashboard"] = await dashboard.snapshot(runtime)
    answers["dead"] = await dead_letter.list_dead(r)
    async with Client(build_server(runtime)) as client:
        for tool, arguments in [
            ("list_jobs", {}), ("get_ai_usage_stats", {}), ("get_conversation_history", {}),
            ("get_conversation_history", {"conversation_id": CONVERSATION, "tenant": TENANT}),
            ("get_received_messages", {}), ("configure_ai_model", {"temperature": 0.5}), ("check_health", {}),
            ("list_dead_jobs", {}),
        ]:  # fmt: skip
            answer = await client.call_tool(tool, arguments)
            assert not answer.is_error, f"{tool}: {text_of(answer)}"
            answers[tool] = answer.structured_content
        for job_id in queued:
            for tool, arguments in [("get_job", {"job_id": job_id}),
                                    ("wait_for_job", {"job_id": job_id, "timeout_seconds": 0.1})]:  # fmt: skip
                answer = await client.call_tool(tool, arguments)
                assert not answer.is_error and answer.structured_content["status"] == "queued", text_of(
                    answer
                )
            resource = await client.read_resource(f"job://{job_id}")
            assert json.loads(resource.contents[0].text)["status"] == "queued"
        for uri in ("stats://usage", "health://status"):
            answers[uri] = json.loads((await client.read_resource(uri)).contents[0].text)
    return answers


def warned_keys(caplog) -> dict[str, int]:
    """How often each shared key was named in a WARNING."""
    counts: dict[str, int] = {}
    for record in caplog.records:
        if record.levelno == logging.WARNING:
            message = record.getMessage()
            for key in shared_keys():
                if f"{key} " in message or f"{key}: " in message or message.endswith(key):
                    counts[key] = counts.get(key, 0) + 1
    return counts


async def test_every_shared_key_of_the_wrong_type_leaves_every_read_answering(own_redis, clean_env, caplog):
    caplog.set_level(logging.WARNING)
    settings = load_settings(redis_url=own_redis.url, ai_provider="mock")
    async with open_runtime(settings) as runtime, asyncio.timeout(40):
        await seed(runtime.redis)
        early = await runtime.queue.submit(ChatRequest(message="queued before the damage"), caller="early")
        damaged = await damage_types(runtime.redis)
        caplog.clear()
        answers = await read_everything(runtime, (early,))
        assert answers["check_health"]["status"] != "down"
        assert answers["get_ai_usage_stats"]["totals"]["requests"] == 0, "a damaged total counts as empty"
        warned = warned_keys(caplog)
        unread = {keys.usage_model(MODEL), keys.usage_latency(MODEL), keys.usage_tenant(TENANT, f"model:{MODEL}"),
                  keys.usage_tenant(TENANT, f"latency:{MODEL}"), keys.DEAD_LETTER_ORDER}  # fmt: skip
        for key in set(damaged) - unread:  # unread: found through a damaged key, or not read at all
            assert warned.get(key), f"no WARNING names {key}: {[r.getMessage() for r in caplog.records]}"
        assert "unreachable" not in caplog.text
        caplog.clear()
        await usage.usage_stats(runtime.redis)  # the operator's: every tenant's keys and the totals
        assert set(warned_keys(caplog).values()) == {1}, "each damaged key is named once per read"

        async with embedded_worker(settings):
            request = ChatRequest(message="still answered", conversation_id=CONVERSATION)
            job_id = await runtime.queue.submit(request, caller=TENANT)
            result = await runtime.jobs.wait(job_id, timeout=20)
        assert result.status == "completed", result.error
        assert result.ai_response
        skipped = f"{keys.USAGE_TOTAL}: job {job_id}'s usage was not added"
        assert sum(skipped in r.getMessage() for r in caplog.records) == 1, "the damaged total, named once"
        counted = await runtime.redis.hgetall(keys.usage_tenant(TENANT, f"model:{settings.default_model}"))
        assert counted[b"requests"] == b"1", "the keys that are not damaged still count the job"


def cli(redis_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "MCP_", "AI_", "OPENAI_"))}
    return subprocess.run(
        [sys.executable, "-m", "messenger.cli", *args], env={**env, "REDIS_URL": redis_url},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


async def test_the_cli_reads_answer_over_damaged_keys(own_redis, clean_env):
    settings = load_settings(redis_url=own_redis.url, ai_provider="mock")
    async with open_runtime(settings) as runtime:
        await seed(runtime.redis)
        await damage_types(runtime.redis)
    for command in ("jobs", "stats", "health", "dead"):
        done = await asyncio.to_thread(cli, own_redis.url, command)
        assert "unreachable" not in done.stderr and "Traceback" not in done.stderr, (command, done.stderr)
        assert done.returncode in (0, 1), (command, done.returncode, done.stderr)  # health: 1 = no workers


junk = st.binary(max_size=40) | st.text(max_size=20).map(str.encode) | st.sampled_from(
    [b"", b"nan", b"1e400", b"-1", b"{}", b"[]", b'{"role": 1}', b'{"role": "user"}', b"null", b"\xff"]
)  # fmt: skip


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(values=st.lists(junk, min_size=6, max_size=6), names=st.lists(junk, min_size=3, max_size=3))
async def test_junk_values_in_the_shared_keys_leave_every_read_answering(own_redis, values, names):
    """Hashes with non-number counters, lists of non-JSON, sets of names that are not tenants/models."""
    async with open_runtime(load_settings(redis_url=own_redis.url, ai_provider="mock")) as runtime:
        r = runtime.redis
        await r.flushdb()
        await seed(r)
        for key in (keys.USAGE_TOTAL, keys.usage_model(MODEL), keys.usage_tenant(TENANT, "total")):
            await r.hset(key, mapping={"requests": values[0], "cost_usd": values[1], "latency_ms": values[2]})
        await r.sadd(keys.USAGE_MODELS, names[0])
        await r.sadd(keys.TENANTS, names[1])
        await r.zadd(keys.conversations(TENANT), {names[2]: 1.0})
        for key in (keys.usage_latency(MODEL), keys.conversation(TENANT, CONVERSATION), keys.RECEIVED,
                    keys.received(TENANT)):  # fmt: skip
            await r.rpush(key, values[3], values[4])
        await r.set(keys.MODEL_DEFAULTS, values[5])
        await r.set(keys.model_defaults(TENANT), values[4])
        await r.hset(keys.DEAD_LETTER, values[0], values[5])
        await r.set(keys.worker("junk"), values[3])
        await read_everything(runtime)


async def test_a_command_redis_refuses_is_named_not_called_unreachable(own_redis, clean_env):
    async with open_runtime(load_settings(redis_url=own_redis.url, ai_provider="mock")) as runtime:
        await runtime.redis.set(keys.QUEUE, b"a string where the queue's sorted set belongs")
        async with Client(build_server(runtime)) as client:
            listed = await client.call_tool("list_jobs", {})
            assert not listed.is_error and listed.structured_content["queueDepth"] == 0, text_of(listed)
            refused = await client.call_tool("submit_message", {"message": "hi"})
        assert refused.is_error
        assert text_of(refused).endswith(
            "Redis refused a command: WRONGTYPE Operation against a key holding the wrong kind of value "
            "(a key damaged or written by hand?)"
        ), text_of(refused)
        assert "\n" not in text_of(refused)
