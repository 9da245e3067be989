"""A job waiting for its model's capacity says so: `get_job`'s `waitingFor` and the task's
statusMessage, read by a real messenger from what a real worker process writes while a
MODEL_LIMITS concurrency slot is taken; cancelling the waiting job ends it at once."""

from __future__ import annotations

import json
import time

import anyio
from mcp import Client
from mcp_helpers import messenger_env, running_messengers
from openai_server import eventually
from processes import start_openai_workers
from test_task_status import until

from messenger.tasks.client import Tasks, cancel_task, get_task, start_task

MODEL = "gpt-4o-mini"
WAITING = f"waiting for capacity: {MODEL} concurrency until a slot frees"


async def test_a_job_waiting_for_a_concurrency_slot_says_so_and_cancels_at_once(
    redis_url, redis_server, workers, openai_server, tmp_path
):
    openai_server.script(reply=" ".join(f"w{i}" for i in range(200)), token_delay=0.05, concurrency=1)
    start_openai_workers(
        workers, redis_url, openai_server, MODEL_LIMITS=json.dumps({"*": {"concurrency": 1}}),
        WORKER_CONCURRENCY="4", OPENAI_DEFAULT_MODEL=MODEL,
    )  # fmt: skip
    env = messenger_env(redis_url, AI_PROVIDER="openai", OPENAI_DEFAULT_MODEL=MODEL)
    with running_messengers(tmp_path) as messengers, anyio.fail_after(90):
        async with Client(messengers.http(env).url, extensions=[Tasks()]) as client:
            first = (await start_task(client, "send_message_to_ai", {"message": "first"})).task_id
            await eventually(lambda: openai_server.active == 1, timeout=30)
            second = (await start_task(client, "send_message_to_ai", {"message": "second"})).task_id
            told = await until(client, second, lambda m: m.startswith("waiting for capacity"))
            job = (await client.call_tool("get_job", {"job_id": second})).structured_content
            asked = time.monotonic()
            cancelled = await cancel_task(client, second)
            ended = await until(client, second, lambda m: m.startswith("cancelled"))
            took = time.monotonic() - asked
            after = (await client.call_tool("get_job", {"job_id": second})).structured_content
            first_state = (await get_task(client, first)).status
            await cancel_task(client, first)
    assert told == WAITING
    assert job["status"] == "running" and job["waitingFor"]["model"] == MODEL, job
    assert job["waitingFor"]["limit"] == "concurrency" and job["waitingFor"]["since"] <= time.time(), job
    assert cancelled.status == "cancelled" or ended.startswith("cancelled")
    assert took < 5, f"a job waiting for capacity took {took:.1f} s to cancel"
    assert after["status"] == "cancelled" and after.get("waitingFor") is None, after
    assert first_state == "working", "the call holding the slot runs on"
    assert redis_server.client().exists(f"mcpq:capacity:waiting:{second}") == 0
    assert len(openai_server.chat_requests) == 1, "the cancelled job never called the model"
