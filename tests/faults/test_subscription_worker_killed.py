"""A subscribed job whose worker is killed mid-stream: the subscriber hears the start, the restart on
another worker, and the end (a real Redis, worker processes, the real `mcp` client, 2025-11-25)."""

from __future__ import annotations

import anyio
from mcp import Client
from readers import UpdatesRecorder
from runtimes import runtime_for

from messenger.server import build_server

LONG_MESSAGE = " ".join(f"word{i}" for i in range(40))  # the mock answers ~50 words: 2.5 s at 50 ms a word


async def test_a_subscriber_hears_the_start_the_restart_and_the_end(redis_url, workers):
    updates = UpdatesRecorder(1, 2, 3)
    env = {"MOCK_TOKEN_DELAY_MS": "50", "WORKER_LEASE_SECONDS": "1"}
    async with runtime_for(redis_url) as runtime:
        with anyio.fail_after(60):
            async with Client(build_server(runtime), mode="legacy", message_handler=updates) as client:
                submitted = await client.call_tool("submit_message", {"message": LONG_MESSAGE})
                job = submitted.structured_content["jobId"]  # pyright: ignore[reportOptionalSubscript]
                await client.subscribe_resource(f"job://{job}")
                (first,) = workers.start(redis_url, **env)
                await updates.heard(1).wait()  # running on the first worker
                first.kill()
                workers.start(redis_url, **env)
                await updates.heard(2).wait()  # restarted on the second
                await updates.heard(3).wait()  # ended
                result = await client.call_tool("get_job", {"job_id": job})
    assert updates.uris == [f"job://{job}"] * 3
    assert result.structured_content and result.structured_content["status"] == "completed"
    assert result.structured_content["attempt"] == 2
