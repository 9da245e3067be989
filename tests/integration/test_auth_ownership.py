"""With MCP_API_KEY set, a job (or task) belongs to the key that created it: another key cannot read,
wait on, cancel or list it, and gets the same answer as for an id that never existed. /health stays
open, and MCP_ALLOWED_HOSTS lets the server answer to a real host name."""

from __future__ import annotations

import contextlib
import json

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_helpers import messenger_env, running_messengers
from readers import text_of

from messenger.tasks import client as task_client
from messenger.tasks.client import Tasks, cancel_task, get_task, list_tasks, start_task, task_result

ALICE = {"Authorization": "Bearer tok1"}
ALICE_AGAIN = {"X-Api-Key": "tok1"}  # the same key through the other header: the same caller
BOB = {"X-Api-Key": "tok2"}
UNKNOWN = "0123456789abcdef0123456789abcdef"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "0"},
    },
}
POST_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """An embedded messenger over HTTP with two API keys and one extra allowed host name."""
    env = messenger_env(
        "memory://", MCP_API_KEY="tok1,tok2", MCP_ALLOWED_HOSTS="mcp.example.com", MOCK_TOKEN_DELAY_MS="50"
    )
    with running_messengers(tmp_path_factory.mktemp("auth")) as messengers:
        yield messengers.http(env)


@contextlib.asynccontextmanager
async def client_as(url: str, headers: dict, mode: str = "auto"):
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode, extensions=[Tasks()]) as client,
    ):
        yield client


async def test_missing_or_wrong_keys_get_401_and_health_stays_open(server):
    with anyio.fail_after(30):
        async with httpx2.AsyncClient(timeout=10) as http:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-Api-Key": "wrong"}):
                response = await http.post(server.url, json=INITIALIZE, headers=POST_HEADERS | headers)
                assert response.status_code == 401, headers
                assert "tok1" not in response.text and "tok2" not in response.text
            health = await http.get(f"{server.base_url}/health")
            accepted = await http.post(server.url, json=INITIALIZE, headers=POST_HEADERS | ALICE)
    assert health.status_code == 200 and json.loads(health.text)["redis"]["ok"] is True
    assert accepted.status_code == 200


@pytest.mark.parametrize("mode", ["auto", "legacy"], ids=["modern", "legacy"])
async def test_another_keys_jobs_and_tasks_are_unknown_to_it(server, mode):
    with anyio.fail_after(60):
        async with client_as(server.url, ALICE, mode) as alice:
            mine = (await alice.call_tool("submit_message", {"message": "alice's secret"})).structured_content
            task = await start_task(alice, "send_message_to_ai", {"message": "alice's task"})

        async with client_as(server.url, BOB, mode) as bob:
            theirs = (await bob.call_tool("submit_message", {"message": "bob's own"})).structured_content
            refused = []  # (what bob got for alice's id, what he gets for an id that never existed)
            for tool, extra in (
                ("get_job", {}),
                ("wait_for_job", {"timeout_seconds": 1}),
                ("cancel_job", {}),
                ("respond_to_job", {"approve": True}),
            ):
                never = text_of(await bob.call_tool(tool, {"job_id": UNKNOWN, **extra}))
                for job_id in (mine["jobId"], task.task_id):
                    got = await bob.call_tool(tool, {"job_id": job_id, **extra})
                    refused.append((got.is_error, text_of(got), never.replace(UNKNOWN, job_id)))
            task_errors = []
            for read in (get_task, task_result, cancel_task):
                with pytest.raises(MCPError) as refused_task:
                    await read(bob, task.task_id)
                task_errors.append(refused_task.value.message)
            if mode == "auto":  # tasks/update (2026-07-28), answering a question alice's job might ask
                with pytest.raises(MCPError) as refused_task:
                    await task_client.update_task(
                        bob, task.task_id, {f"{task.task_id}:2": {"action": "accept"}}
                    )
                task_errors.append(refused_task.value.message)
            with pytest.raises(MCPError) as refused_resource:
                await bob.read_resource(f"job://{mine['jobId']}")
            bobs_jobs = {
                j["jobId"] for j in (await bob.call_tool("list_jobs", {})).structured_content["jobs"]
            }
            bobs_tasks = {t.task_id for t in await list_tasks(bob)}

        async with client_as(server.url, ALICE_AGAIN, mode) as alice:
            still_mine = await alice.call_tool("get_job", {"job_id": mine["jobId"]})
            alices_jobs = {
                j["jobId"] for j in (await alice.call_tool("list_jobs", {})).structured_content["jobs"]
            }
            alices_task = await get_task(alice, task.task_id)

    for is_error, got, never in refused:  # the same answer as for an id that never existed
        assert is_error and got == never and "no job with id '" in got
    for message in [*task_errors, refused_resource.value.message]:
        assert message.startswith("no job with id '") and "alice" not in message
    assert bobs_jobs == bobs_tasks  # list_jobs and tasks/list agree: bob's jobs and no one else's
    assert not {mine["jobId"], task.task_id} & (bobs_jobs | bobs_tasks)
    assert theirs["jobId"] in bobs_jobs
    assert not still_mine.is_error and still_mine.structured_content["jobId"] == mine["jobId"]
    assert {mine["jobId"], task.task_id} <= alices_jobs and theirs["jobId"] not in alices_jobs
    assert alices_task.task_id == task.task_id  # nobody cancelled it on alice's behalf
    assert alices_task.status != "cancelled"


async def test_allowed_hosts_admit_a_real_host_name_and_refuse_others(server):
    with anyio.fail_after(30):
        async with httpx2.AsyncClient(timeout=10) as http:
            answers = {
                host: (
                    await http.post(
                        server.url, json=INITIALIZE, headers=POST_HEADERS | ALICE | {"Host": host}
                    )
                )
                for host in (
                    "mcp.example.com",
                    "mcp.example.com:8443",
                    f"127.0.0.1:{server.port}",
                    "evil.example",
                )
            }
    assert {host: r.status_code for host, r in answers.items()} == {
        "mcp.example.com": 200,
        "mcp.example.com:8443": 200,
        f"127.0.0.1:{server.port}": 200,
        "evil.example": 421,
    }
