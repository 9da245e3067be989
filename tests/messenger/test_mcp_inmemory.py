"""The MCP tools as a client sees them, in-process, in both protocol eras.

`Client(server)` speaks the 2026-07-28 ("modern") protocol through a direct dispatcher;
`Client(server, mode="legacy")` runs the initialize handshake and real JSON-RPC over memory streams.
The runtime is embedded (fakeredis and one in-process worker with the mock provider).
"""

from __future__ import annotations

import json
import re

import anyio
import pytest
from mcp import Client
from readers import progress_recorder, text_of

from messenger.server import build_server

LONG_PROMPT = " ".join(f"word{i}" for i in range(60))  # the mock echoes 40 of these: a 56-token answer
UNKNOWN_JOB = "0123456789abcdef0123456789abcdef"


pytestmark = pytest.mark.parametrize("mode", ["auto", "legacy"], ids=["modern", "legacy"])


def data_of(result) -> dict:
    """The tool's answer as a dict: structuredContent, or the JSON text when there is none."""
    assert not result.is_error, text_of(result)
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(text_of(result))


async def call(client: Client, tool: str, **arguments) -> dict:
    return data_of(await client.call_tool(tool, arguments))


async def poll_until_final(client: Client, job_id: str) -> dict:
    while True:
        job = await call(client, "get_job", job_id=job_id)
        if job["status"] in ("completed", "failed", "cancelled"):
            return job
        await anyio.sleep(0.02)


async def test_tools_are_listed_with_their_limits(embedded_runtime, mode):
    with anyio.fail_after(30):
        async with Client(build_server(embedded_runtime), mode=mode) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
    expected = {"send_message_to_ai", "submit_message", "get_job", "wait_for_job", "cancel_job",
                "list_jobs", "list_models", "list_mcp_servers", "check_health"}  # fmt: skip
    assert expected <= set(tools)
    for name in ("send_message_to_ai", "submit_message"):
        props = tools[name].input_schema["properties"]
        assert tools[name].input_schema["required"] == ["message"]
        assert props["message"]["maxLength"] == 100_000
        assert props["message"]["minLength"] == 1
        temperature = next(s for s in props["temperature"]["anyOf"] if s.get("type") == "number")
        assert (temperature["minimum"], temperature["maximum"]) == (0, 2)
        max_tokens = next(s for s in props["max_tokens"]["anyOf"] if s.get("type") == "integer")
        assert max_tokens["minimum"] == 1
        servers = next(s for s in props["mcp_servers"]["anyOf"] if s.get("type") == "array")
        assert servers["items"] == {"type": "string"} and servers["maxItems"] == 20
        assert "MCP_SERVERS" in props["mcp_servers"]["description"]
    assert tools["get_job"].input_schema["required"] == ["job_id"]
    assert tools["send_message_to_ai"].description and "progress" in tools["send_message_to_ai"].description


async def test_send_message_returns_camelcase_result_and_streams_tokens_as_progress(streaming_runtime, mode):
    messages, on_progress = progress_recorder()
    with anyio.fail_after(30):
        async with Client(build_server(streaming_runtime), mode=mode) as client:
            result = await client.call_tool(
                "send_message_to_ai", {"message": "tell me about queues"}, progress_callback=on_progress
            )
    assert not result.is_error, text_of(result)
    data = result.structured_content
    assert data["status"] == "completed"
    assert re.fullmatch(r"[0-9a-f]{32}", data["jobId"])
    assert data["aiResponse"].startswith("Mock answer to: tell me about queues")
    assert data["model"] == "mock-1"
    assert data["usage"]["totalTokens"] > 0
    assert data["usage"]["totalTokens"] == data["usage"]["promptTokens"] + data["usage"]["completionTokens"]
    assert data["processingTime"] is not None and data["processingTime"] >= 0
    assert not {"job_id", "ai_response", "processing_time"} & set(data)  # the wire is camelCase
    assert len(messages) >= 2, messages  # tokens came in several batches, not only at the end
    assert "".join(messages) == data["aiResponse"]


async def test_submit_returns_a_job_id_that_get_job_and_wait_for_job_follow(streaming_runtime, mode):
    with anyio.fail_after(30):
        async with Client(build_server(streaming_runtime), mode=mode) as client:
            submitted = await call(client, "submit_message", message="poll me please")
            job_id = submitted["jobId"]
            assert submitted["status"] == "queued"
            polled = await poll_until_final(client, job_id)
            waited = await call(client, "wait_for_job", job_id=job_id, timeout_seconds=20)
    assert polled["status"] == "completed"
    assert polled["aiResponse"].startswith("Mock answer to: poll me please")
    assert waited["status"] == "completed"
    assert waited["jobId"] == job_id
    assert waited["aiResponse"] == polled["aiResponse"]


async def test_wait_for_job_streams_the_tokens_of_a_running_job(streaming_runtime, mode):
    messages, on_progress = progress_recorder()
    with anyio.fail_after(30):
        async with Client(build_server(streaming_runtime), mode=mode) as client:
            job_id = (await call(client, "submit_message", message=LONG_PROMPT))["jobId"]
            result = await client.call_tool(
                "wait_for_job", {"job_id": job_id, "timeout_seconds": 20}, progress_callback=on_progress
            )
    data = data_of(result)
    assert data["status"] == "completed"
    assert messages and "".join(messages) == data["aiResponse"]


async def test_cancel_job_stops_a_running_job(slow_runtime, mode):
    with anyio.fail_after(30):
        async with Client(build_server(slow_runtime), mode=mode) as client:
            job_id = (await call(client, "submit_message", message=LONG_PROMPT, max_tokens=100_000))["jobId"]
            job = await call(client, "get_job", job_id=job_id)
            while not job["aiResponse"]:  # wait until the worker is streaming
                await anyio.sleep(0.02)
                job = await call(client, "get_job", job_id=job_id)
            cancelled = await call(client, "cancel_job", job_id=job_id)
            await anyio.sleep(0.5)  # five token intervals: a job still running would have grown
            later = await call(client, "get_job", job_id=job_id)
            again = await call(client, "cancel_job", job_id=job_id)
            listed = await call(client, "list_jobs", status="cancelled")
    assert cancelled["status"] == "cancelled"
    assert later["status"] == "cancelled"
    assert later["aiResponse"] == cancelled["aiResponse"]  # no token after the cancel
    assert len(later["aiResponse"].split()) < 50  # the whole answer would be 56 words
    assert again["status"] == "cancelled"  # cancelling twice is harmless
    assert job_id in [j["jobId"] for j in listed["jobs"]]


async def test_list_jobs_shows_the_jobs(embedded_runtime, mode):
    with anyio.fail_after(30):
        async with Client(build_server(embedded_runtime), mode=mode) as client:
            first = await call(client, "send_message_to_ai", message="first job")
            second = await call(client, "send_message_to_ai", message="second job")
            listed = await call(client, "list_jobs")
            completed = await call(client, "list_jobs", status="completed")
            running = await call(client, "list_jobs", status="running")
    ids = [j["jobId"] for j in listed["jobs"]]
    assert ids[:2] == [second["jobId"], first["jobId"]]  # newest first
    by_id = {j["jobId"]: j for j in completed["jobs"]}
    assert by_id[first["jobId"]]["aiResponse"] == first["aiResponse"]
    assert by_id[second["jobId"]]["status"] == "completed"
    assert running["jobs"] == []


async def test_list_models_names_mock_1_as_default(embedded_runtime, mode):
    with anyio.fail_after(30):
        async with Client(build_server(embedded_runtime), mode=mode) as client:
            listed = await call(client, "list_models")
    assert listed["provider"] == "mock"
    assert listed["default_model"] == "mock-1"
    default = [m for m in listed["models"] if m["default"]]
    assert [m["id"] for m in default] == ["mock-1"]


async def test_check_health_reports_the_embedded_worker_alive(embedded_runtime, mode):
    with anyio.fail_after(30):
        async with Client(build_server(embedded_runtime), mode=mode) as client:
            report = await call(client, "check_health")
    assert report["status"] == "ok"
    assert report["mode"] == "embedded"
    assert report["redis"]["ok"] is True
    assert len(report["workers"]) == 1
    assert report["workers"][0]["heartbeat_age_s"] < 30
    assert report["provider_reachable"] is True


BAD_CALLS = [
    pytest.param("send_message_to_ai", {"message": ""}, ["message", r"empty|at least 1 char"], id="empty"),
    pytest.param("send_message_to_ai", {"message": " \n\t "}, ["message", "empty"], id="whitespace"),
    pytest.param("submit_message", {"message": "   "}, ["message", "empty"], id="whitespace-submit"),
    pytest.param("send_message_to_ai", {"message": "x" * 100_001}, ["message", "100000"], id="oversized"),
    pytest.param(
        "send_message_to_ai", {"message": "hi", "temperature": 5}, ["temperature", r"\b2\b"], id="temperature"
    ),
    pytest.param(
        "send_message_to_ai", {"message": "hi", "max_tokens": 0}, ["max_tokens", r"\b1\b"], id="max_tokens"
    ),
    pytest.param("get_job", {"job_id": UNKNOWN_JOB}, ["no job", UNKNOWN_JOB], id="get_job-unknown"),
    pytest.param("wait_for_job", {"job_id": UNKNOWN_JOB}, ["no job", UNKNOWN_JOB], id="wait_for_job-unknown"),
    pytest.param("cancel_job", {"job_id": UNKNOWN_JOB}, ["no job", UNKNOWN_JOB], id="cancel_job-unknown"),
    pytest.param("get_job", {"job_id": "../../etc/passwd"}, ["no job"], id="get_job-garbage-id"),
    pytest.param("send_message_to_ai", {}, ["message", "required"], id="missing-message"),
    pytest.param(
        "send_message_to_ai",
        {"message": "hi", "max_tokens": "many"},
        ["max_tokens", "integer"],
        id="wrong-type",
    ),
]


@pytest.mark.parametrize(("tool", "arguments", "says"), BAD_CALLS)
async def test_bad_input_is_a_clear_error_and_the_server_keeps_serving(
    embedded_runtime, mode, tool, arguments, says
):
    with anyio.fail_after(30):
        async with Client(build_server(embedded_runtime), mode=mode) as client:
            bad = await client.call_tool(tool, arguments)
            after = await call(client, "send_message_to_ai", message="still there?")
    assert bad.is_error
    text = text_of(bad)
    for pattern in says:
        assert re.search(pattern, text, re.IGNORECASE), f"{pattern!r} not in {text!r}"
    assert len(text) < 2000  # an oversized input is not echoed back whole
    assert "\n" not in text and "pydantic" not in text, f"not one line: {text!r}"
    assert after["status"] == "completed"
    assert after["aiResponse"].startswith("Mock answer to: still there?")


async def test_unknown_model_fails_the_job_with_a_message_naming_the_model(embedded_runtime, mode):
    with anyio.fail_after(30):
        async with Client(build_server(embedded_runtime), mode=mode) as client:
            bad = await client.call_tool("send_message_to_ai", {"message": "hi", "model": "gpt-4o"})
            job_id = re.search(r"\b[0-9a-f]{32}\b", text_of(bad))
            job = await call(client, "get_job", job_id=job_id.group(0)) if job_id else None
            after = await call(client, "send_message_to_ai", message="and now the default model")
    assert bad.is_error
    assert "gpt-4o" in text_of(bad)
    assert job_id, f"the error names no job id: {text_of(bad)!r}"
    assert job["status"] == "failed"
    assert "gpt-4o" in job["error"]
    assert after["status"] == "completed"
