"""Job subscriptions behind a per-request round-robin proxy over 3 messenger replicas (one Redis, a
real worker process, the real `mcp` client, 2025-11-25): the replica that took the subscribe follows
the job, its notifications reach the client's GET stream wherever that landed, and an unsubscribe on
another replica stops it; a prompt is rendered for the session's client name on every replica."""

from __future__ import annotations

import json

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_helpers import messenger_env, running_messengers
from mcp_types import Implementation
from processes import WorkerProcesses
from proxy import round_robin_proxy
from readers import UpdatesRecorder

ALICE = {"Authorization": "Bearer tok-alice"}


async def test_subscriptions_work_whichever_replica_each_request_reaches(redis_server, tmp_path):
    redis_server.client().flushall()
    env = messenger_env(redis_server.url, MCP_API_KEYS=json.dumps({"alice": "tok-alice"}))
    updates = UpdatesRecorder(2)
    workers = WorkerProcesses(redis_server, tmp_path)
    try:
        with running_messengers(tmp_path) as messengers:
            started = [messengers.http(env, wait=False) for _ in range(3)]
            for replica in started:
                replica.wait_ready(60)
            async with (
                round_robin_proxy([m.url for m in started]) as proxy,
                httpx2.AsyncClient(headers=ALICE, timeout=60) as http,
                Client(
                    streamable_http_client(proxy.url, http_client=http), mode="legacy", message_handler=updates,
                    client_info=Implementation(name="claude-code", version="1"),
                ) as client,
            ):  # fmt: skip
                with anyio.fail_after(60):
                    jobs = []
                    for message in ("dropped", "kept"):  # one worker slot: "dropped" runs and ends first
                        result = await client.call_tool("submit_message", {"message": message})
                        jobs.append(result.structured_content["jobId"])  # pyright: ignore[reportOptionalSubscript]
                    dropped, kept = jobs
                    await client.subscribe_resource(f"job://{dropped}")
                    await client.subscribe_resource(f"job://{kept}")
                    await client.unsubscribe_resource(f"job://{dropped}")
                    workers.start(redis_server.url, MOCK_TOKEN_DELAY_MS="5", WORKER_CONCURRENCY="1")
                    await updates.heard(2).wait()
                    await client.call_tool("get_job", {"job_id": kept})
                    rendered = [await client.get_prompt("summarize", {"text": "t"}) for _ in range(3)]
                subscribes = proxy.backends_of("resources/subscribe")
                prompt_replicas = proxy.backends_of("prompts/get")
                unsubscribes = proxy.backends_of("resources/unsubscribe")
    finally:
        workers.stop_all()
    assert updates.uris == [f"job://{kept}", f"job://{kept}"]  # started, ended; nothing for "dropped"
    assert len(set(subscribes)) == 2 and unsubscribes[0] != subscribes[0]  # each on another replica
    # the session's client name (from its initialize, kept in Redis) picks the variables on every replica
    assert sorted(prompt_replicas) == [0, 1, 2]
    assert all("for a software engineer" in r.messages[0].content.text for r in rendered)  # pyright: ignore[reportAttributeAccessIssue]
