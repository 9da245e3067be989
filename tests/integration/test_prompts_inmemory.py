"""Prompts, completions and job subscriptions as the real `mcp` client sees them in-process, in both
protocol eras, on a real Redis (worker processes where a job has to run)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import (
    Implementation,
    PromptReference,
    ResourceTemplateReference,
    SubscribeRequestParams,
    UnsubscribeRequestParams,
)
from readers import UpdatesRecorder
from runtimes import runtime_for

from messenger.calls import remember_headers
from messenger.server import build_server
from messenger.subscriptions import JobSubscriptions
from shared import keys
from shared.models import ChatRequest

JOB_REF = ResourceTemplateReference(type="ref/resource", uri="job://{job_id}")
ERAS = pytest.mark.parametrize("mode", ["auto", "legacy"], ids=["modern", "legacy"])


async def submit(client: Client, message: str = "hi") -> str:
    result = await client.call_tool("submit_message", {"message": message})
    assert not result.is_error
    return result.structured_content["jobId"]  # pyright: ignore[reportOptionalSubscript]


@ERAS
async def test_prompts_are_listed_and_rendered_for_the_client_by_name(redis_url, mode):
    async with runtime_for(redis_url) as runtime:
        server = build_server(runtime)
        with anyio.fail_after(30):
            async with Client(
                server, mode=mode, client_info=Implementation(name="claude-code", version="1")
            ) as code:
                listed = {p.name: p for p in (await code.list_prompts()).prompts}
                for_code = await code.get_prompt("summarize", {"text": "Queues decouple work."})
            async with Client(
                server, mode=mode, client_info=Implementation(name="some-ide", version="1")
            ) as ide:
                for_ide = await ide.get_prompt(
                    "summarize", {"text": "Queues decouple work.", "style": "one-line"}
                )
    assert set(listed) == {"delegate", "review_job", "summarize"}
    arguments = {a.name: a.required for a in listed["summarize"].arguments or []}
    assert arguments == {"text": True, "style": False}
    code_text = for_code.messages[0].content.text  # pyright: ignore[reportAttributeAccessIssue]
    ide_text = for_ide.messages[0].content.text  # pyright: ignore[reportAttributeAccessIssue]
    assert "for a software engineer. Style: bullets." in code_text and "Queues decouple work." in code_text
    assert "for a busy reader. Style: one-line. Use Markdown." in ide_text


@ERAS
async def test_bad_prompt_requests_get_one_line_and_the_server_keeps_serving(redis_url, mode, caplog):
    async with runtime_for(redis_url) as runtime:
        with anyio.fail_after(30):
            async with Client(build_server(runtime), mode=mode) as client:
                errors = []
                for name, arguments in [
                    ("summarize", {}),
                    ("summarize", {"text": "x" * 10_000_000}),
                    ("summarize", {"text": "a", "style": "sonnet"}),
                    ("nope" * 1000, {}),
                ]:
                    with pytest.raises(MCPError) as raised:
                        await client.get_prompt(name, arguments)
                    errors.append(str(raised.value))
                still = await client.get_prompt("summarize", {"text": "fine"})
    assert "needs argument 'text'" in errors[0]
    assert "is 10000000 characters; at most 100000" in errors[1]
    assert "must be one of bullets, paragraph, one-line" in errors[2]
    assert "no prompt named 'nopenope" in errors[3]
    assert all("\n" not in e and len(e) < 300 for e in errors)
    assert "fine" in still.messages[0].content.text  # pyright: ignore[reportAttributeAccessIssue]
    assert "Traceback" not in caplog.text


@ERAS
async def test_completions_offer_argument_choices_and_the_callers_job_ids_capped_at_100(redis_url, mode):
    async with runtime_for(redis_url) as runtime:
        with anyio.fail_after(60):
            async with Client(build_server(runtime), mode=mode) as client:
                assert client.server_capabilities.completions is not None
                jobs = [await submit(client) for _ in range(105)]  # no worker: they wait in the queue
                style = await client.complete(
                    PromptReference(type="ref/prompt", name="summarize"), {"name": "style", "value": "p"}
                )
                tool = await client.complete(
                    PromptReference(type="ref/prompt", name="delegate"), {"name": "tool", "value": ""}
                )
                free = await client.complete(
                    PromptReference(type="ref/prompt", name="summarize"), {"name": "text", "value": "a"}
                )
                every = await client.complete(JOB_REF, {"name": "job_id", "value": ""})
                one = await client.complete(JOB_REF, {"name": "job_id", "value": jobs[0][:12]})
                review = await client.complete(
                    PromptReference(type="ref/prompt", name="review_job"),
                    {"name": "job_id", "value": jobs[1][:12]},
                )
                none = await client.complete(JOB_REF, {"name": "job_id", "value": "zz"})
    assert style.completion.values == ["paragraph"]
    assert tool.completion.values == ["send_message_to_ai", "submit_message"]
    assert free.completion.values == []
    assert len(every.completion.values) == 100 and every.completion.total == 105 and every.completion.has_more
    assert every.completion.values[0] == jobs[-1] and set(every.completion.values) <= set(jobs)
    assert one.completion.values == [jobs[0]] and review.completion.values == [jobs[1]]
    assert none.completion.values == [] and not none.completion.has_more


async def test_subscribe_is_declared_in_2025_11_25_only(redis_url):
    async with runtime_for(redis_url) as runtime:
        server = build_server(runtime)
        async with Client(server, mode="legacy") as legacy, Client(server) as modern:
            assert legacy.server_capabilities.resources and legacy.server_capabilities.resources.subscribe
            assert modern.server_capabilities.resources and not modern.server_capabilities.resources.subscribe
            assert legacy.server_capabilities.prompts and modern.server_capabilities.prompts


async def test_a_subscribed_job_notifies_its_start_and_its_end(redis_server, redis_url, workers):
    updates = UpdatesRecorder(2)
    async with runtime_for(redis_url) as runtime:
        with anyio.fail_after(60):
            async with Client(build_server(runtime), mode="legacy", message_handler=updates) as client:
                job = await submit(client, "a subscribed job")
                dropped = await submit(client, "unsubscribed again")
                await client.subscribe_resource(f"job://{job}")
                await client.subscribe_resource(f"job://{job}")  # twice is once
                await client.subscribe_resource(f"job://{dropped}")
                await client.unsubscribe_resource(f"job://{dropped}")
                for uri in ("job://0123456789abcdef0123456789abcdef", "stats://usage", "job://" + "x" * 5000):
                    with pytest.raises(MCPError) as raised:
                        await client.subscribe_resource(uri)
                    assert "\n" not in str(raised.value) and len(str(raised.value)) < 300
                assert updates.uris == []  # still queued: nothing changed yet
                workers.start(redis_url, MOCK_TOKEN_DELAY_MS="5")
                await updates.heard(2).wait()
                final = await client.call_tool("wait_for_job", {"job_id": dropped})
                await client.call_tool("get_job", {"job_id": job})  # a round trip after the last update
    assert updates.uris == [f"job://{job}", f"job://{job}"]  # started, then ended; none for the dropped one
    assert final.structured_content and final.structured_content["status"] == "completed"


class RecordingSession:
    """What a subscription sends on: the MCP session's standalone stream."""

    def __init__(self):
        self.sent: list[str] = []

    async def send_resource_updated(self, uri) -> None:
        self.sent.append(str(uri))


def http_request_context(session_id: str, session: RecordingSession) -> Any:
    """A request on streamable HTTP's session `session_id`, as a handler sees it (no key configured)."""
    return SimpleNamespace(request=SimpleNamespace(headers={"mcp-session-id": session_id}), session=session)


async def test_an_unsubscribe_or_a_delete_on_another_replica_stops_the_replica_that_follows(
    redis_url, workers
):
    """Two replicas on one Redis: a session subscribes on one and unsubscribes on the other; another
    session subscribes and is then ended (DELETE removes its record from Redis)."""
    async with runtime_for(redis_url) as one, runtime_for(redis_url) as two:
        replica_one, replica_two = JobSubscriptions(one), JobSubscriptions(two)
        session, ended_session = RecordingSession(), RecordingSession()
        ctx, ended_ctx = (
            http_request_context("session-1", session),
            http_request_context("session-2", ended_session),
        )
        for sid in ("session-1", "session-2"):
            await one.redis.set(keys.session(sid), b"{}")  # what messenger.sessions keeps while it lives
        kept, dropped, orphan = [
            await one.queue.submit(ChatRequest(message=m), caller="operator")
            for m in ("kept", "dropped", "orphan")
        ]
        for job, on in ((kept, ctx), (dropped, ctx), (orphan, ended_ctx)):
            params = SubscribeRequestParams(uri=f"job://{job}")
            await remember_headers(on, lambda c, p=params: replica_one.subscribe(c, p))
        params = UnsubscribeRequestParams(uri=f"job://{dropped}")
        await remember_headers(ctx, lambda c: replica_two.unsubscribe(c, params))
        await two.redis.delete(keys.session("session-2"))
        workers.start(redis_url, MOCK_TOKEN_DELAY_MS="5")
        followers = replica_one.following
        assert len(followers) == 3  # the replica that took the subscribes follows every job
        with anyio.fail_after(30):
            await asyncio.gather(*followers, return_exceptions=True)  # the jobs ended, then each follower
    assert session.sent == [f"job://{kept}", f"job://{kept}"]
    assert ended_session.sent == []
