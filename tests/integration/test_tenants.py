"""Tenants, tried the way an attacker with one key would: a real Redis, a real worker and a real
messenger over streamable HTTP with six tenant keys and the operator key. Every tool, resource and
`tasks/*` method is probed from each tenant against the others' jobs, tasks, conversations, received
messages, usage, model defaults, rates and budgets: nothing of another tenant is read (0 leaks) and
nothing is changed (0 tampering). The operator sees every tenant and alone sets the global defaults;
the CLI is the operator."""

from __future__ import annotations

import contextlib
import json
import sys
import time
import uuid

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_helpers import ROOT, messenger_env, running_messengers
from processes import WorkerProcesses
from readers import text_of

from messenger.tasks.client import Tasks, cancel_task, get_task, list_tasks, start_task, task_result

KEYS = {name: f"tok-{name}-{uuid.uuid4().hex}" for name in ("alice", "bob", "carol", "dave", "erin", "frank")}
ADMIN = f"tok-admin-{uuid.uuid4().hex}"
CORE = ("alice", "bob", "carol")  # the three that write everything the others probe
PRICES = {"mock-1": [1000.0, 1000.0]}  # USD per 1M tokens: "hi" with 1024 max_tokens may cost ~$1.06
LIMITS = {"erin": {"requests_per_minute": 3}, "frank": {"per_request_usd": 2, "daily_usd": 1.1}}
UNKNOWN = "0123456789abcdef0123456789abcdef"


def settings_env(redis_url: str) -> dict[str, str]:
    return messenger_env(
        redis_url,
        MCP_API_KEYS=json.dumps(KEYS),
        MCP_ADMIN_KEY=ADMIN,
        TENANT_LIMITS=json.dumps(LIMITS),
        MODEL_PRICES=json.dumps(PRICES),
        MOCK_TOKEN_DELAY_MS="30",
    )


@pytest.fixture(scope="module")
def server(redis_server, tmp_path_factory):
    """One messenger over HTTP and one worker, sharing a Redis emptied for this suite."""
    redis_server.client().flushall()
    env = settings_env(redis_server.url)
    workers = WorkerProcesses(redis_server, tmp_path_factory.mktemp("tenant-workers"))
    workers.start(redis_server.url, count=1, **{k: v for k, v in env.items() if k != "PATH"})
    with running_messengers(tmp_path_factory.mktemp("tenants")) as messengers:
        yield messengers.http(env)
    workers.stop_all()


@contextlib.asynccontextmanager
async def client_as(url: str, token: str):
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http,
        Client(streamable_http_client(url, http_client=http), extensions=[Tasks()]) as client,
    ):
        yield client


async def call(client, tool: str, **args) -> tuple[bool, dict | str]:
    """(is_error, the structured answer or the error text)."""
    result = await client.call_tool(tool, args)
    return (True, text_of(result)) if result.is_error else (False, result.structured_content or {})


async def answer(client, tool: str, **args) -> dict:
    failed, got = await call(client, tool, **args)
    assert not failed, f"{tool}: {got}"
    assert isinstance(got, dict)
    return got


def secret(name: str) -> str:
    return f"{name}-secret-{uuid.uuid4().hex[:12]}"


class Written:
    """What one tenant wrote: its messages (secrets), jobs, task and conversation."""

    def __init__(self, name: str):
        self.name = name
        self.secrets: list[str] = []
        self.jobs: list[str] = []
        self.task: str = ""

    def marks(self) -> list[str]:
        return [*self.secrets, *self.jobs, self.task]


async def write_as(url: str, name: str, conversation: str) -> Written:
    """Two turns of `conversation`, a queued job and a task, all with this tenant's secrets."""
    written = Written(name)
    async with client_as(url, KEYS[name]) as client:
        for _ in range(2):
            text = secret(name)
            written.secrets.append(text)
            done = await answer(client, "send_message_to_ai", message=text, conversation_id=conversation)
            written.jobs.append(done["jobId"])
        text = secret(name)
        written.secrets.append(text)
        written.jobs.append((await answer(client, "submit_message", message=text))["jobId"])
        text = secret(name)
        written.secrets.append(text)
        written.task = (await start_task(client, "send_message_to_ai", {"message": text})).task_id
    return written


def leaked(seen: object, others: list[Written]) -> list[str]:
    text = json.dumps(seen, default=str) if not isinstance(seen, str) else seen
    return [mark for other in others for mark in other.marks() if mark and mark in text]


async def probe_reads(url: str, me: Written, others: list[Written]) -> list[str]:
    """Every read a tenant can make; returns what of the others' data it saw (should be nothing)."""
    found: list[str] = []
    async with client_as(url, KEYS[me.name]) as client:
        never = {
            tool: text_of(await client.call_tool(tool, {"job_id": UNKNOWN, **extra}))
            for tool, extra in (("get_job", {}), ("wait_for_job", {"timeout_seconds": 1}))
        }
        for other in others:
            for job_id in [*other.jobs, other.task]:
                for tool, extra in (("get_job", {}), ("wait_for_job", {"timeout_seconds": 1})):
                    failed, got = await call(client, tool, job_id=job_id, **extra)
                    if not failed or got != never[tool].replace(UNKNOWN, job_id):
                        found.append(f"{tool} {job_id}: {got}")
                for read in (get_task, task_result):
                    with contextlib.suppress(MCPError):
                        found.append(f"{read.__name__} {job_id}: {await read(client, job_id)}")
                with contextlib.suppress(MCPError):
                    found.append(f"job:// {job_id}: {await client.read_resource(f'job://{job_id}')}")
            failed, got = await call(
                client, "get_conversation_history", conversation_id="shared", tenant=other.name
            )
            if not failed:
                found.append(f"conversation of {other.name}: {got}")
            for tool, args in (("list_dead_jobs", {}), ("requeue_dead_job", {"job_id": other.jobs[0]})):
                failed, got = await call(client, tool, **args)  # operator-only
                if not failed or "operator" not in str(got):
                    found.append(f"{tool}: {got}")
        answers = [
            await answer(client, "list_jobs", limit=500),
            [t.model_dump() for t in await list_tasks(client)],
            await answer(client, "get_received_messages", limit=1000),
            await answer(client, "get_conversation_history"),
            await answer(client, "get_conversation_history", conversation_id="shared"),
            await answer(client, "get_ai_usage_stats"),
            await answer(client, "list_models"),
            await answer(client, "list_mcp_servers"),
            await answer(client, "check_health"),
            (await client.read_resource("stats://usage")).model_dump(),
            (await client.read_resource("health://status")).model_dump(),
        ]
        found += leaked(answers, others)
    return found


async def test_no_tenant_reads_another_tenants_data(server):
    with anyio.fail_after(240):
        written = [await write_as(server.url, name, "shared") for name in CORE]
        leaks = []
        for me in written:
            others = [w for w in written if w is not me]
            leaks += [f"{me.name} saw {leak}" for leak in await probe_reads(server.url, me, others)]
            async with client_as(server.url, KEYS[me.name]) as client:
                listed = {j["jobId"] for j in (await answer(client, "list_jobs", limit=500))["jobs"]}
                history = await answer(client, "get_conversation_history", conversation_id="shared")
                received = await answer(client, "get_received_messages", limit=1000)
                usage = await answer(client, "get_ai_usage_stats")
            assert set(me.jobs) | {me.task} <= listed  # its own are all there
            assert [t["content"] for t in history["turns"][::2]] == me.secrets[:2]
            assert set(me.jobs[:2]) <= {r["job_id"] for r in received["received"]}
            assert usage["tenant"] == me.name and "tenants" not in usage and usage["totals"]["requests"] >= 2
    assert leaks == []


async def test_another_tenants_conversation_id_is_a_fresh_conversation(server):
    """The same conversation_id in two tenants: neither's history reaches the other's prompt, and
    neither's turns are appended to the other's conversation."""
    with anyio.fail_after(120):
        async with client_as(server.url, KEYS["alice"]) as alice:
            for _ in range(2):
                await answer(alice, "send_message_to_ai", message=secret("alice"), conversation_id="trip")
            before = await answer(alice, "get_conversation_history", conversation_id="trip")
        async with client_as(server.url, KEYS["bob"]) as bob:
            message = f"{secret('bob')} four more words"
            first = await answer(bob, "send_message_to_ai", message=message, conversation_id="trip")
            bobs = await answer(bob, "get_conversation_history", conversation_id="trip")
        async with client_as(server.url, KEYS["alice"]) as alice:
            after = await answer(alice, "get_conversation_history", conversation_id="trip")
    assert first["usage"]["promptTokens"] == len(message.split())  # no earlier turn in bob's prompt
    assert after["turns"] == before["turns"] and len(after["turns"]) == 4
    assert bobs["turns"][0]["content"] == message and len(bobs["turns"]) == 2


async def test_the_open_health_route_shows_no_job_ids(server):
    long = " ".join(["word"] * 40)  # about 1.6 s of tokens: a heartbeat (every 2 s) may catch it
    jobs: list[str] = []
    started = 0.0
    with anyio.fail_after(60):
        async with client_as(server.url, KEYS["alice"]) as alice:
            while True:  # until a worker's heartbeat says it runs one of them
                if time.monotonic() - started > 1:
                    jobs.append((await answer(alice, "submit_message", message=long))["jobId"])
                    started = time.monotonic()
                status, body = server.get("/health")
                workers = json.loads(body)["workers"]
                if any(w["running"] for w in workers):
                    break
                await anyio.sleep(0.05)
            seen = await answer(alice, "check_health")
            for job in jobs:
                await answer(alice, "wait_for_job", job_id=job, timeout_seconds=30)
    assert status == 200 and not [job for job in jobs if job in body.decode()]
    assert all("running_jobs" not in w for w in workers)
    assert all("running_jobs" not in w for w in seen["workers"])  # a tenant's check_health too


async def test_no_tenant_changes_another_tenants_jobs_or_tasks(server):
    with anyio.fail_after(120):
        async with client_as(server.url, KEYS["alice"]) as alice:
            job = (await answer(alice, "submit_message", message=secret("alice")))["jobId"]
            task = (await start_task(alice, "send_message_to_ai", {"message": secret("alice")})).task_id
        async with client_as(server.url, KEYS["bob"]) as bob:
            refused = [await call(bob, "cancel_job", job_id=job_id) for job_id in (job, task)]
            with pytest.raises(MCPError):
                await cancel_task(bob, task)
        async with client_as(server.url, KEYS["alice"]) as alice:
            ends = [
                await answer(alice, "wait_for_job", job_id=job_id, timeout_seconds=60)
                for job_id in (job, task)
            ]
    assert all(failed and "no job with id" in str(got) for failed, got in refused)
    assert [e["status"] for e in ends] == ["completed", "completed"]  # bob cancelled neither


async def test_a_tenants_model_defaults_change_only_its_own_answers(server):
    with anyio.fail_after(120):
        async with client_as(server.url, KEYS["dave"]) as dave:
            set_ = await answer(dave, "configure_ai_model", max_tokens=2)
            short = await answer(dave, "send_message_to_ai", message="how long is my answer")
        async with client_as(server.url, KEYS["carol"]) as carol:
            full = await answer(carol, "send_message_to_ai", message="how long is my answer")
    assert set_["scope"] == "tenant dave" and set_["effective"]["max_tokens"] == 2
    assert short["usage"]["completionTokens"] == 2 and short["finishReason"] == "length"
    assert full["usage"]["completionTokens"] > 2 and full["finishReason"] == "stop"


async def test_the_operator_sees_every_tenant_and_alone_sets_the_global_defaults(server):
    with anyio.fail_after(180):
        written = [await write_as(server.url, name, "ops") for name in CORE]
        async with client_as(server.url, ADMIN) as admin:
            listed = {j["jobId"] for j in (await answer(admin, "list_jobs", limit=500))["jobs"]}
            got = [await answer(admin, "get_job", job_id=w.jobs[0]) for w in written]
            received = await answer(admin, "get_received_messages", limit=1000)
            conversations = await answer(admin, "get_conversation_history", limit=1000)
            alices = await answer(admin, "get_conversation_history", conversation_id="ops", tenant="alice")
            usage = await answer(admin, "get_ai_usage_stats")
            global_ = await answer(admin, "configure_ai_model", max_tokens=5)
        try:
            async with client_as(server.url, KEYS["carol"]) as carol:
                follows = await answer(carol, "send_message_to_ai", message="how long is the global answer")
            async with client_as(server.url, KEYS["dave"]) as dave:
                await answer(dave, "configure_ai_model", max_tokens=2)  # its own, over the global
                own = await answer(dave, "send_message_to_ai", message="how long is the global answer")
        finally:
            async with client_as(server.url, ADMIN) as admin:
                await answer(admin, "configure_ai_model", max_tokens=1024)
    for w, job in zip(written, got, strict=True):
        assert set(w.jobs) | {w.task} <= listed and job["jobId"] == w.jobs[0]
    assert {w.jobs[0] for w in written} <= {r["job_id"] for r in received["received"]}
    assert {(c["tenant"], c["conversation_id"]) for c in conversations["conversations"]} >= {
        (name, "ops") for name in CORE
    }
    assert [t["content"] for t in alices["turns"][::2]] == written[0].secrets[:2]
    assert set(CORE) <= set(usage["tenants"])
    per_tenant = sum(t["totals"]["requests"] for t in usage["tenants"].values())
    assert per_tenant == usage["totals"]["requests"]  # each counted once, under one tenant
    assert global_["scope"] == "global"
    assert follows["usage"]["completionTokens"] == 5 and own["usage"]["completionTokens"] == 2


async def test_a_tenants_rate_and_budget_refuse_only_that_tenant(server):
    with anyio.fail_after(120):
        async with client_as(server.url, KEYS["erin"]) as erin, client_as(server.url, KEYS["alice"]) as alice:
            if time.time() % 60 > 55:  # the window is the wall-clock minute: start in a fresh one
                await anyio.sleep(60 - time.time() % 60)
            outcomes = [await call(erin, "submit_message", message="hi", max_tokens=5) for _ in range(4)]
            others = await call(alice, "submit_message", message="hi", max_tokens=5)
        async with client_as(server.url, KEYS["frank"]) as frank, client_as(server.url, KEYS["bob"]) as bob:
            too_big = await call(frank, "submit_message", message="hi" * 600)  # ~$2.2 worst case
            first = await call(frank, "submit_message", message="hi")  # ~$1.06 held until it settles
            second = await call(frank, "submit_message", message="hi")
            bobs = [await call(bob, "submit_message", message="hi") for _ in range(2)]
    assert [failed for failed, _ in outcomes] == [False, False, False, True]
    assert "TENANT_LIMITS['erin'].requests_per_minute=3 requests a minute for tenant 'erin'" in outcomes[3][1]
    assert not others[0] and not first[0] and all(not failed for failed, _ in bobs)
    assert too_big[0] and "over TENANT_LIMITS['frank'].per_request_usd=$2 for tenant 'frank'" in too_big[1]
    assert second[0] and "tenant 'frank' daily budget reached" in second[1]
    assert "TENANT_LIMITS['frank'].daily_usd=$1.1" in second[1]


async def test_the_cli_is_the_operator_and_counts_each_tenant(server, redis_server):
    with anyio.fail_after(120):
        for name in CORE:
            async with client_as(server.url, KEYS[name]) as client:
                await answer(client, "send_message_to_ai", message=secret(name))
    env = settings_env(redis_server.url)
    with anyio.fail_after(120):
        asked = await anyio.run_process(
            [sys.executable, "-m", "messenger.cli", "ask", "from the cli", "--json"],
            env=env,
            cwd=ROOT,
            check=False,
        )
        assert asked.returncode == 0, asked.stderr
        job_id = json.loads(asked.stdout)["jobId"]
        table = await anyio.run_process(
            [sys.executable, "-m", "messenger.cli", "stats", "--by", "tenant"], env=env, cwd=ROOT, check=False
        )
    assert redis_server.client().get(f"mcpq:owner:{job_id}") == b"operator"
    assert table.returncode == 0, table.stderr
    lines = table.stdout.decode().splitlines()
    rows = {line.split()[0]: int(line.split()[1]) for line in lines[1:]}
    client = redis_server.client()
    for name in ("operator", *CORE):
        assert rows[name] == int(client.hget(f"mcpq:usage:tenant:{name}:total", "requests"))
    assert rows["TOTAL"] == sum(v for k, v in rows.items() if k != "TOTAL")
    assert lines[0].startswith("TENANT")
