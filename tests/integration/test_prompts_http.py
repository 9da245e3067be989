"""Prompts, completions and job subscriptions over streamable HTTP with tenant keys: a real messenger
process, a real Redis, a worker process, the real `mcp` client in both protocol eras. Another tenant's
job ids never appear in a completion, and its jobs cannot be subscribed to."""

from __future__ import annotations

import contextlib
import json
import uuid
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_helpers import messenger_env, running_messengers
from mcp_types import PromptReference, ResourceTemplateReference
from processes import WorkerProcesses
from readers import UpdatesRecorder

from messenger.prompts import SHIPPED_DIR

KEYS = {name: f"tok-{name}-{uuid.uuid4().hex}" for name in ("alice", "bob")}
ADMIN = f"tok-admin-{uuid.uuid4().hex}"
JOB_REF = ResourceTemplateReference(type="ref/resource", uri="job://{job_id}")
UNKNOWN = "0123456789abcdef0123456789abcdef"
GREETING = """
description = "A greeting that depends on who asks"
template = "Hello ${who}, ${tone}"

[arguments.who]
required = true

[variables]
tone = "welcome"

[tenants.alice]
tone = "hi alice"
"""


@pytest.fixture(scope="module")
def served(redis_server, tmp_path_factory):
    """One messenger over HTTP with two tenants and the operator, PROMPTS_DIR with a broken file; no
    worker, so submitted jobs stay queued until a test starts one."""
    redis_server.client().flushall()
    prompts = tmp_path_factory.mktemp("prompts")
    for shipped in SHIPPED_DIR.glob("*.toml"):
        (prompts / shipped.name).write_bytes(shipped.read_bytes())
    (prompts / "greeting.toml").write_text(GREETING)
    (prompts / "broken.toml").write_bytes(b"template = '${unterminated")
    env = messenger_env(
        redis_server.url, MCP_API_KEYS=json.dumps(KEYS), MCP_ADMIN_KEY=ADMIN, PROMPTS_DIR=str(prompts),
        MOCK_TOKEN_DELAY_MS="5",
    )  # fmt: skip
    with running_messengers(tmp_path_factory.mktemp("prompts-http")) as messengers:
        yield messengers.http(env), env


@contextlib.asynccontextmanager
async def client_as(url: str, token: str, mode: str = "auto", on_message=None):
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http,
        Client(
            streamable_http_client(url, http_client=http), mode=mode, message_handler=on_message
        ) as client,  # pyright: ignore[reportArgumentType]
    ):
        yield client


async def submit(client: Client) -> str:
    result = await client.call_tool("submit_message", {"message": "a queued job"})
    assert not result.is_error
    return result.structured_content["jobId"]  # pyright: ignore[reportOptionalSubscript]


async def job_ids(client: Client, prefix: str = "") -> list[str]:
    return (await client.complete(JOB_REF, {"name": "job_id", "value": prefix})).completion.values


def test_a_broken_prompt_file_is_one_warning_and_the_others_are_served(served):
    server, _ = served
    lines = [line for line in server.log().splitlines() if "broken.toml" in line]
    assert len(lines) == 1 and "WARNING" in lines[0] and "not TOML" in lines[0]
    assert "${unterminated" not in server.log()


@pytest.mark.parametrize("mode", ["auto", "legacy"], ids=["modern", "legacy"])
async def test_completions_list_only_the_callers_own_jobs_and_prompts_know_the_tenant(served, mode):
    server, _ = served
    with anyio.fail_after(60):
        async with (
            client_as(server.url, KEYS["alice"], mode) as alice,
            client_as(server.url, KEYS["bob"], mode) as bob,
            client_as(server.url, ADMIN, mode) as operator,
        ):
            assert {p.name for p in (await alice.list_prompts()).prompts} == {
                "delegate", "review_job", "summarize", "greeting"
            }  # fmt: skip
            alices = [await submit(alice) for _ in range(3)]
            bobs = [await submit(bob) for _ in range(2)]
            seen = {
                "alice": await job_ids(alice),
                "bob": await job_ids(bob),
                "operator": await job_ids(operator),
            }
            by_prefix = await job_ids(bob, alices[0][:8])
            review = await bob.complete(
                PromptReference(type="ref/prompt", name="review_job"), {"name": "job_id", "value": ""}
            )
            hello_alice = await alice.get_prompt("greeting", {"who": "A-7f3a"})
            hello_bob = await bob.get_prompt("greeting", {"who": "B-7f3a"})
            huge = await job_ids(alice, "x" * 3_000_000)  # under the 4 MiB body cap
    assert set(alices) <= set(seen["alice"]) and not set(bobs) & set(seen["alice"])
    assert set(bobs) <= set(seen["bob"]) and not set(alices) & set(seen["bob"])
    assert set(alices + bobs) <= set(seen["operator"])
    assert by_prefix == [] and not set(alices) & set(review.completion.values)
    assert hello_alice.messages[0].content.text == "Hello A-7f3a, hi alice"  # pyright: ignore[reportAttributeAccessIssue]
    assert hello_bob.messages[0].content.text == "Hello B-7f3a, welcome"  # pyright: ignore[reportAttributeAccessIssue]
    assert huge == []
    assert "7f3a" not in server.log()  # no prompt argument or text in a log line


async def test_a_subscription_notifies_its_owner_on_the_standalone_stream(
    served, redis_server, tmp_path: Path
):
    server, env = served
    to_alice, to_bob = UpdatesRecorder(2), UpdatesRecorder()
    workers = WorkerProcesses(redis_server, tmp_path)
    try:
        with anyio.fail_after(60):
            async with (
                client_as(server.url, KEYS["alice"], "legacy", to_alice) as alice,
                client_as(server.url, KEYS["bob"], "legacy", to_bob) as bob,
            ):
                job = await submit(alice)
                await alice.subscribe_resource(f"job://{job}")
                errors = []
                for uri in (f"job://{job}", f"job://{UNKNOWN}"):
                    with pytest.raises(MCPError) as raised:
                        await bob.subscribe_resource(uri)
                    errors.append(str(raised.value).replace(job, "<id>").replace(UNKNOWN, "<id>"))
                workers.start(redis_server.url, **{k: v for k, v in env.items() if k != "PATH"})
                await to_alice.heard(2).wait()
                await bob.call_tool("list_jobs", {})  # a round trip: anything bob was sent has arrived
    finally:
        workers.stop_all()
    assert (to_alice.uris, to_bob.uris) == ([f"job://{job}", f"job://{job}"], [])
    assert errors[0] == errors[1] and "no job with id '<id>'" in errors[0]  # another's = none at all


async def test_the_2026_era_has_no_resources_subscribe(served):
    server, _ = served
    with anyio.fail_after(30):
        async with client_as(server.url, KEYS["alice"]) as alice:
            resources = alice.server_capabilities.resources
            assert resources is not None and not resources.subscribe
            assert alice.server_capabilities.completions is not None
            job = await submit(alice)
            with pytest.raises(MCPError, match=r"[Mm]ethod not found"):
                await alice.subscribe_resource(f"job://{job}")


async def test_a_subscription_over_stdio_notifies_on_the_pipe(redis_server, tmp_path: Path):
    """stdio has no session id: the one session of the process is the subscriber."""
    redis_server.client().flushall()
    updates = UpdatesRecorder(2)
    env = messenger_env(redis_server.url, MOCK_TOKEN_DELAY_MS="5")
    workers = WorkerProcesses(redis_server, tmp_path)
    try:
        with running_messengers(tmp_path) as messengers, anyio.fail_after(60):
            async with Client(messengers.stdio(env), mode="legacy", message_handler=updates) as client:
                assert [p.name for p in (await client.list_prompts()).prompts] == [
                    "delegate",
                    "review_job",
                    "summarize",
                ]
                job = await submit(client)
                await client.subscribe_resource(f"job://{job}")
                workers.start(redis_server.url, MOCK_TOKEN_DELAY_MS="5")
                await updates.heard(2).wait()
    finally:
        workers.stop_all()
    assert updates.uris == [f"job://{job}", f"job://{job}"]
