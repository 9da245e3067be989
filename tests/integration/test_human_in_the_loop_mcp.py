"""Human in the loop through real MCP clients against `messenger serve` over streamable HTTP, with a
worker process, real Redis, the OpenAI-compatible test server and the stdio ledger tool server: the
2026-07-28 tasks extension (tasks/get shows input_required with inputRequests, tasks/update answers)
and the 2025 eras' tools (send_message_to_ai returns the question, respond_to_job answers it)."""

from __future__ import annotations

import json

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_helpers import messenger_env, running_messengers
from mcp_ledger_server import PREFIX, read_ledger
from processes import start_openai_workers
from readers import text_of
from test_human_in_the_loop import APPROVAL, PREAMBLE, REPLY, charge_script, servers

from messenger.tasks.client import Tasks, get_task, start_task, task_result, update_task, wait_for_task

CHARGE = {"message": "charge 5", "mcp_servers": ["ledger"]}


@pytest.fixture
def stack(redis_url, workers, openai_server, clean_env, tmp_path):
    ledger = tmp_path / "ledger.jsonl"
    charge_script(openai_server)
    start_openai_workers(
        workers, redis_url, openai_server, MCP_SERVERS=json.dumps(servers(ledger)), **APPROVAL
    )
    with running_messengers(tmp_path) as messengers:
        yield messengers.http(messenger_env(redis_url, MCP_SERVERS=json.dumps(servers(ledger)))), ledger


async def paused_task(client: Client):
    task = await start_task(client, "send_message_to_ai", CHARGE)
    while True:  # tasks/get until the job pauses (or ends)
        state = await get_task(client, task.task_id)
        if state.status != "working":
            return state
        await anyio.sleep(0.05)


async def test_tasks_update_answers_a_paused_task(stack):
    messenger, ledger = stack
    async with Client(messenger.url, mode="auto", extensions=[Tasks()]) as client:
        with anyio.fail_after(60):
            state = await paused_task(client)
            assert state.status == "input_required", state
            ((key, asked),) = (state.input_requests or {}).items()
            assert key == f"{state.task_id}:2"
            assert asked["method"] == "elicitation/create"
            assert asked["params"]["message"] == 'Allow the tool call ledger/charge {"amount": 5}?'
            assert "answer key" in (state.status_message or "")

            with pytest.raises(MCPError, match=f"waits for an answer to {key}, not to {state.task_id}:9"):
                await update_task(client, state.task_id, {f"{state.task_id}:9": {"action": "accept"}})
            with pytest.raises(MCPError, match="action accept, decline or cancel"):
                await update_task(client, state.task_id, {key: {"action": "maybe"}})
            assert read_ledger(ledger) == []

            await update_task(client, state.task_id, {key: {"action": "accept"}})
            assert (await wait_for_task(client, state.task_id)).status == "completed"
            result = await task_result(client, state.task_id)
            assert result.structured_content["aiResponse"] == f"{PREAMBLE}{REPLY} {PREFIX} charged 5"
            assert [c["key"] for c in read_ledger(ledger)] == [key]

            declined = await paused_task(client)
            (key,) = declined.input_requests or {}
            await update_task(
                client, declined.task_id, {key: {"action": "decline", "content": {"note": "no"}}}
            )
            assert (await wait_for_task(client, declined.task_id)).status == "completed"
            answer = (await task_result(client, declined.task_id)).structured_content["aiResponse"]
            assert answer == f"{PREAMBLE}{REPLY} Error: not run: the user declined this call; they said: no"
    assert len(read_ledger(ledger)) == 1, "the declined call never ran"


async def test_send_message_returns_the_question_and_respond_to_job_answers_it(stack):
    messenger, ledger = stack
    async with Client(messenger.url, mode="legacy") as client:
        with anyio.fail_after(60):
            paused = await client.call_tool("send_message_to_ai", CHARGE)
            assert not paused.is_error, text_of(paused)
            job = paused.structured_content
            assert job["status"] == "input_required" and job["inputRequest"]["tool"] == "charge", job
            job_id, key = job["jobId"], job["inputRequest"]["key"]
            shown = await client.call_tool("get_job", {"job_id": job_id})
            assert shown.structured_content["inputRequest"]["key"] == key
            waited = await client.call_tool("wait_for_job", {"job_id": job_id, "timeout_seconds": 30})
            assert waited.structured_content["status"] == "input_required", (
                "wait_for_job returns at a question"
            )

            answered = await client.call_tool(
                "respond_to_job", {"job_id": job_id, "approve": True, "key": key}
            )
            assert not answered.is_error, text_of(answered)
            again = await client.call_tool("respond_to_job", {"job_id": job_id, "approve": True})
            assert again.is_error and "waits for no answer" in text_of(again) and "\n" not in text_of(again)
            done = await client.call_tool("wait_for_job", {"job_id": job_id, "timeout_seconds": 30})
            assert done.structured_content["status"] == "completed", done.structured_content
            assert done.structured_content["aiResponse"] == f"{PREAMBLE}{REPLY} {PREFIX} charged 5"
    assert [c["key"] for c in read_ledger(ledger)] == [key]


async def test_a_2025_task_that_pauses_is_told_input_required_and_then_completed(stack):
    messenger, ledger = stack
    heard: list[tuple[str, str]] = []
    changed = anyio.Event()

    async def on_status(state) -> None:
        nonlocal changed
        heard.append((state.task_id, state.status))
        changed.set()
        changed = anyio.Event()

    async def hear(pair: tuple[str, str]) -> None:
        while pair not in heard:
            await changed.wait()

    async with Client(messenger.url, mode="legacy", extensions=[Tasks(on_status)]) as client:
        with anyio.fail_after(60):
            task = await start_task(client, "send_message_to_ai", CHARGE)
            await hear((task.task_id, "input_required"))
            state = await get_task(client, task.task_id)
            assert state.status == "input_required" and state.input_requests, state
            answered = await client.call_tool("respond_to_job", {"job_id": task.task_id, "approve": True})
            assert not answered.is_error, text_of(answered)
            await hear((task.task_id, "completed"))
    assert len(read_ledger(ledger)) == 1
