"""`messenger serve` as a real subprocess over stdio, the way Claude Desktop runs it.

(a) embedded: REDIS_URL=memory://, the messenger runs its own worker;
(b) real Redis: the messenger only enqueues, a separate worker process answers.
"""

from __future__ import annotations

import subprocess
import sys

import anyio
import pytest
from mcp import Client
from mcp_helpers import ROOT, messenger_env, running_messengers
from readers import progress_recorder, text_of


@pytest.fixture
def messengers(tmp_path):
    with running_messengers(tmp_path) as m:
        yield m


async def exercise(client: Client) -> None:
    """What every stdio setup must do: list the tools, stream an answer, run a job to the end."""
    tools = {t.name for t in (await client.list_tools()).tools}
    assert {"send_message_to_ai", "submit_message", "get_job", "wait_for_job", "cancel_job"} <= tools

    messages, on_progress = progress_recorder()
    result = await client.call_tool(
        "send_message_to_ai", {"message": "hello over stdio"}, progress_callback=on_progress
    )
    assert not result.is_error, text_of(result)
    answer = result.structured_content
    assert answer["status"] == "completed"
    assert answer["aiResponse"].startswith("Mock answer to: hello over stdio")
    assert messages, "no progress notification arrived"
    assert "".join(messages) == answer["aiResponse"]

    submitted = await client.call_tool("submit_message", {"message": "a job to poll"})
    assert not submitted.is_error, text_of(submitted)
    job_id = submitted.structured_content["jobId"]
    while True:
        job = await client.call_tool("get_job", {"job_id": job_id})
        assert not job.is_error, text_of(job)
        if job.structured_content["status"] not in ("queued", "running"):
            break
        await anyio.sleep(0.05)
    assert job.structured_content["status"] == "completed"
    assert job.structured_content["aiResponse"].startswith("Mock answer to: a job to poll")


@pytest.mark.parametrize("mode", ["auto", "legacy"], ids=["modern", "legacy"])
async def test_stdio_messenger_in_embedded_mode_answers(messengers, mode):
    env = messenger_env("memory://", MOCK_TOKEN_DELAY_MS="5")
    with anyio.fail_after(60):
        async with Client(messengers.stdio(env), mode=mode) as client:
            await exercise(client)
            health = await client.call_tool("check_health", {})
    assert '"embedded"' in text_of(health)


async def test_stdio_messenger_on_real_redis_hands_jobs_to_a_worker_process(
    messengers, redis_url, workers, redis_server
):
    workers.start(redis_url, count=1, MOCK_TOKEN_DELAY_MS="5")
    env = messenger_env(redis_url)
    with anyio.fail_after(60):
        async with Client(messengers.stdio(env)) as client:
            await exercise(client)
    stream_keys = list(redis_server.client().scan_iter("mcpq:stream:*"))
    assert len(stream_keys) == 2  # both jobs went through the shared Redis


def test_python_dash_m_messenger_cli_runs_the_cli():
    """`python -m messenger.cli` is how the MCP configs in these tests (and users) start the server."""
    done = subprocess.run(
        [sys.executable, "-m", "messenger.cli", "--help"],
        cwd=ROOT,
        env=messenger_env("memory://"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "serve" in done.stdout and "usage" in done.stdout.lower()
