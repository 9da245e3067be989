"""A session's job subscriptions behind a round-robin proxy over 3 replicas: the README's "a session
follows at most 100 jobs at once" and "subscribing twice is once" hold for the session, not per
replica (each subscribe of this test reaches another replica than the one before)."""

from __future__ import annotations

import json

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_helpers import messenger_env, running_messengers
from processes import WorkerProcesses
from proxy import round_robin_proxy
from readers import UpdatesRecorder

ALICE = {"Authorization": "Bearer tok-alice"}


async def test_the_cap_and_once_hold_for_the_session_across_replicas(redis_server, tmp_path):
    redis_server.client().flushall()
    env = messenger_env(redis_server.url, MCP_API_KEYS=json.dumps({"alice": "tok-alice"}))
    updates = UpdatesRecorder(4)
    workers = WorkerProcesses(redis_server, tmp_path)
    try:
        with running_messengers(tmp_path) as messengers:
            started = [messengers.http(env, wait=False) for _ in range(3)]
            for replica in started:
                replica.wait_ready(60)
            async with (
                round_robin_proxy([m.url for m in started]) as proxy,
                httpx2.AsyncClient(headers=ALICE, timeout=60) as http,
                Client(streamable_http_client(proxy.url, http_client=http), mode="legacy",
                       message_handler=updates) as client,
            ):  # fmt: skip
                with anyio.fail_after(120):
                    jobs = []
                    for i in range(101):  # no worker yet: every job stays queued
                        result = await client.call_tool("submit_message", {"message": f"job {i}"})
                        jobs.append(result.structured_content["jobId"])  # pyright: ignore[reportOptionalSubscript]
                    first, last = jobs[0], jobs[100]
                    for _ in range(3):  # three replicas: still one subscription
                        await client.subscribe_resource(f"job://{first}")
                    for job in jobs[1:100]:
                        await client.subscribe_resource(f"job://{job}")
                    with pytest.raises(MCPError) as refused:  # the 101st, on whichever replica
                        await client.subscribe_resource(f"job://{last}")
                    for job in jobs[1:100]:
                        await client.unsubscribe_resource(f"job://{job}")
                    await client.subscribe_resource(f"job://{last}")  # room again
                    workers.start(redis_server.url, MOCK_TOKEN_DELAY_MS="1", WORKER_CONCURRENCY="1")
                    await updates.heard(4).wait()  # `last` runs after every other job (one slot, FIFO)
                    await client.call_tool("wait_for_job", {"job_id": last})
                subscribes = proxy.backends_of("resources/subscribe")
    finally:
        workers.stop_all()
    assert "already follows 100 jobs" in str(refused.value)
    assert sorted(set(subscribes)) == [0, 1, 2]
    assert updates.uris == [f"job://{first}"] * 2 + [f"job://{last}"] * 2  # started, ended: once each
