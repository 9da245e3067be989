"""MCP tasks and resources, in-process, in both protocol eras.

2025-11-25 ("legacy"): task-augmented tools/call, tasks/get|result|list|cancel, notifications/tasks/status.
2026-07-28 ("modern"): the io.modelcontextprotocol/tasks extension (resultType "task"), declared by
the client through messenger.tasks.client.Tasks.
"""

from __future__ import annotations

import json
import re
from datetime import datetime

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from readers import text_of
from runtimes import embedded

from messenger.server import build_server
from messenger.tasks import TASKS_EXTENSION
from messenger.tasks.client import (
    NotATask,
    Tasks,
    cancel_task,
    get_task,
    list_tasks,
    start_task,
    task_result,
)

ERAS = pytest.mark.parametrize("mode", ["auto", "legacy"], ids=["modern", "legacy"])
LONG_PROMPT = " ".join(f"word{i}" for i in range(60))  # a 56-token answer from the mock
UNKNOWN = "0123456789abcdef0123456789abcdef"


def settled(job: dict) -> dict:
    """A job's fields that do not change once it ended (processingTime is re-measured when arq
    stores the result, a moment after the last event)."""
    return {k: v for k, v in job.items() if k != "processingTime"}


async def poll(client, task_id: str) -> list:
    """tasks/get until the task ends (faster than the server's pollInterval: this is a test)."""
    seen = [await get_task(client, task_id)]
    while not seen[-1].final:
        await anyio.sleep(0.02)
        seen.append(await get_task(client, task_id))
    return seen


@ERAS
async def test_a_task_is_the_job_and_its_result_is_the_tools_result(streaming_runtime, mode):
    server = build_server(streaming_runtime)
    with anyio.fail_after(30):
        async with Client(server, mode=mode, extensions=[Tasks()]) as client:
            task = await start_task(client, "send_message_to_ai", {"message": "run me as a task"})
            queued = await streaming_runtime.jobs.get(task.task_id)  # in Redis before the client heard of it
            states = await poll(client, task.task_id)
            result = await task_result(client, task.task_id)
            listed = await list_tasks(client)
        async with Client(server, mode=mode) as plain_client:
            plain = await plain_client.call_tool("send_message_to_ai", {"message": "run me as a task"})

    assert re.fullmatch(r"[0-9a-f]{32}", task.task_id)
    assert queued.job_id == task.task_id and queued.status in ("queued", "running", "completed")
    assert task.status == "working"
    assert task.ttl == 3_600_000 and task.poll_interval == 500
    assert datetime.fromisoformat(task.created_at) <= datetime.fromisoformat(states[-1].last_updated_at)
    assert {s.status for s in states[:-1]} <= {"working"}
    assert states[-1].status == "completed"
    assert states[-1].status_message.startswith("completed")

    # exactly what send_message_to_ai returns for the same request
    job = (await streaming_runtime.jobs.get(task.task_id)).model_dump(mode="json", by_alias=True)
    assert not result.is_error and not plain.is_error
    assert settled(result.structured_content) == settled(job)
    assert json.loads(text_of(result)) == result.structured_content
    assert json.loads(text_of(plain)) == plain.structured_content
    assert set(result.structured_content) == set(plain.structured_content)
    assert result.structured_content["aiResponse"] == plain.structured_content["aiResponse"]
    assert result.meta["io.modelcontextprotocol/related-task"] == {"taskId": task.task_id}
    if mode == "auto":  # 2026-07-28 tasks/get carries the finished task's result
        assert settled(states[-1].result["structuredContent"]) == settled(job)
    assert task.task_id in [t.task_id for t in listed]


@ERAS
async def test_status_notifications_say_when_the_job_starts_and_ends(clean_env, mode):
    statuses = []

    async def on_status(state) -> None:
        statuses.append((state.task_id, state.status, state.status_message))

    async with embedded(clean_env, 20) as rt:
        with anyio.fail_after(30):
            async with Client(build_server(rt), mode=mode, extensions=[Tasks(on_status)]) as client:
                task = await start_task(client, "send_message_to_ai", {"message": "tell me when"})
                await task_result(client, task.task_id)  # 2026-07-28: the notifications ride this request
                await anyio.sleep(0.1)
    assert [s[1] for s in statuses] == ["working", "completed"], statuses
    assert {s[0] for s in statuses} == {task.task_id}
    assert statuses[0][2].startswith("running on ")


@ERAS
async def test_a_failed_job_is_a_failed_task_whose_result_is_the_tools_error(streaming_runtime, mode):
    with anyio.fail_after(30):
        async with Client(build_server(streaming_runtime), mode=mode, extensions=[Tasks()]) as client:
            task = await start_task(client, "send_message_to_ai", {"message": "hi", "model": "gpt-4o"})
            final = (await poll(client, task.task_id))[-1]
            result = await task_result(client, task.task_id)
    assert result.is_error
    assert f"job {task.task_id} failed" in text_of(result) and "gpt-4o" in text_of(result)
    assert "gpt-4o" in final.status_message
    if mode == "legacy":
        assert final.status == "failed"
    else:  # SEP-2663: a tool result with isError is a completed task; `failed` is for protocol errors
        assert final.status == "completed"
        assert final.result["isError"] is True


@ERAS
async def test_cancelling_a_task_stops_its_job(slow_runtime, mode):
    with anyio.fail_after(30):
        async with Client(build_server(slow_runtime), mode=mode, extensions=[Tasks()]) as client:
            arguments = {"message": LONG_PROMPT, "max_tokens": 100_000}
            task = await start_task(client, "send_message_to_ai", arguments)
            while True:  # until the worker is streaming
                if (await slow_runtime.jobs.get(task.task_id)).ai_response:
                    break
                await anyio.sleep(0.02)
            cancelled = await cancel_task(client, task.task_id)
            result = await task_result(client, task.task_id)
            if mode == "legacy":  # 2025-11-25: cancelling a finished task is an error
                with pytest.raises(MCPError, match="already cancelled"):
                    await cancel_task(client, task.task_id)
            else:  # 2026-07-28: an acknowledgement either way
                assert (await cancel_task(client, task.task_id)).status == "cancelled"
    assert cancelled.status == "cancelled"
    job = await slow_runtime.jobs.get(task.task_id)
    assert job.status == "cancelled"
    assert len(job.ai_response.split()) < 50  # it stopped well before the whole answer
    assert result.structured_content["status"] == "cancelled"


@ERAS
async def test_task_errors_are_clear(streaming_runtime, mode):
    with anyio.fail_after(30):
        async with Client(build_server(streaming_runtime), mode=mode, extensions=[Tasks()]) as client:
            with pytest.raises(NotATask, match="message"):
                await start_task(client, "send_message_to_ai", {"message": ""})
            for read in (get_task, task_result, cancel_task):
                with pytest.raises(MCPError, match=f"no job with id '{UNKNOWN}'"):
                    await read(client, UNKNOWN)
            if mode == "legacy":
                with pytest.raises(MCPError, match="cannot run as a task") as refused:
                    await start_task(client, "list_models", {})
                assert refused.value.code == -32601
            after = await client.call_tool("send_message_to_ai", {"message": "still serving"})
    assert not after.is_error


async def test_legacy_clients_see_the_tasks_capability_and_tool_support(streaming_runtime):
    with anyio.fail_after(30):
        async with Client(build_server(streaming_runtime), mode="legacy") as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            capabilities = client.server_capabilities
    assert tools["send_message_to_ai"].execution.task_support == "optional"
    assert tools["submit_message"].execution is None
    assert capabilities.tasks.list is not None and capabilities.tasks.cancel is not None
    assert capabilities.tasks.requests.tools.call is not None


async def test_modern_clients_get_tasks_only_when_they_declare_the_extension(streaming_runtime):
    server = build_server(streaming_runtime)
    with anyio.fail_after(30):
        async with Client(server) as plain_client:
            assert TASKS_EXTENSION in plain_client.server_capabilities.extensions
            plain = await plain_client.call_tool("send_message_to_ai", {"message": "no tasks here"})
            with pytest.raises(MCPError) as undeclared:
                await get_task(plain_client, plain.structured_content["jobId"])
        async with Client(server, extensions=[Tasks()]) as task_client:  # polls behind the scenes
            claimed = await task_client.call_tool("send_message_to_ai", {"message": "no tasks here"})
    assert plain.structured_content["status"] == "completed"
    assert undeclared.value.code == -32021  # missing required client capability
    assert claimed.structured_content["aiResponse"] == plain.structured_content["aiResponse"]
    assert claimed.structured_content["jobId"] != plain.structured_content["jobId"]


@ERAS
async def test_job_usage_and_health_are_json_resources(streaming_runtime, mode):
    with anyio.fail_after(30):
        async with Client(build_server(streaming_runtime), mode=mode) as client:
            answer = (
                await client.call_tool("send_message_to_ai", {"message": "as a resource"})
            ).structured_content
            templates = [t.uri_template for t in (await client.list_resource_templates()).resource_templates]
            listed = {str(r.uri): r for r in (await client.list_resources()).resources}
            job = await client.read_resource(f"job://{answer['jobId']}")
            got = (await client.call_tool("get_job", {"job_id": answer["jobId"]})).structured_content
            stats = await client.read_resource("stats://usage")
            health = await client.read_resource("health://status")
            with pytest.raises(MCPError, match=f"no job with id '{UNKNOWN}'"):
                await client.read_resource(f"job://{UNKNOWN}")
    assert "job://{job_id}" in templates
    assert {"stats://usage", "health://status"} <= set(listed)
    assert job.contents[0].mime_type == "application/json"
    assert settled(json.loads(job.contents[0].text)) == settled(got)
    assert got["aiResponse"] == answer["aiResponse"]
    assert json.loads(stats.contents[0].text)["totals"]["requests"] >= 1
    assert json.loads(health.contents[0].text)["redis"]["ok"] is True
