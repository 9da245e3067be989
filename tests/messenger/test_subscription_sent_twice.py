"""A resources/subscribe whose write redis-py sent again (the connection dropped with Redis's reply on
the way: a failover, a network blip) still follows its job: the second run finds the subscription the
first one added, where it took it for another replica's and followed nothing."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import anyio
from mcp_types import SubscribeRequestParams
from relays import losing_one_reply
from runtimes import runtime_for

from messenger.calls import remember_headers
from messenger.subscriptions import JobSubscriptions
from shared import keys
from shared.models import ChatRequest


class RecordingSession:
    """What a subscription sends on: the MCP session's standalone stream."""

    def __init__(self):
        self.sent: list[str] = []

    async def send_resource_updated(self, uri) -> None:
        self.sent.append(str(uri))


async def subscribe(replica: JobSubscriptions, session_id: str, session: RecordingSession, job: str) -> None:
    ctx: Any = SimpleNamespace(
        request=SimpleNamespace(headers={"mcp-session-id": session_id}), session=session
    )
    params = SubscribeRequestParams(uri=f"job://{job}")
    await remember_headers(ctx, lambda c: replica.subscribe(c, params))


async def test_a_subscribe_sent_again_after_its_reply_was_lost_follows_its_job(
    redis_server, redis_url, workers
):
    async with losing_one_reply(redis_server.port, b"session-MARKED") as port:
        async with runtime_for(f"redis://127.0.0.1:{port}/0") as runtime:
            replica = JobSubscriptions(runtime)
            earlier, session = RecordingSession(), RecordingSession()
            for sid in ("session-earlier", "session-MARKED"):  # what messenger.sessions keeps
                redis_server.client().set(keys.session(sid), b"{}")  # (not through the relay)
            first, job = [await runtime.queue.submit(ChatRequest(message=m), caller="operator") for m in "ab"]
            await subscribe(replica, "session-earlier", earlier, first)  # (a script is known to Redis then)
            await subscribe(replica, "session-MARKED", session, job)  # its reply is lost: sent again
            followers = replica.following
            workers.start(redis_url, MOCK_TOKEN_DELAY_MS="5")
            with anyio.fail_after(30):
                await asyncio.gather(*followers, return_exceptions=True)
    assert len(followers) == 2, "the subscribe sent again follows nothing"
    assert session.sent == [f"job://{job}", f"job://{job}"]  # started, ended
