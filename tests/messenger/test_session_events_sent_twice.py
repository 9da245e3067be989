"""A session's events stored twice, because redis-py sent their pipeline again after the connection
dropped with Redis's reply on the way (a failover, a network blip), reach a client that resumes
with Last-Event-ID once each: no progress text said twice."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
from mcp_types import JSONRPCMessage, jsonrpc_message_adapter
from relays import losing_one_reply

from messenger.sessions import SessionEvents, SessionRecord, SessionRegistry, stream_key
from shared import keys
from shared.connection import connect

INIT = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}


def note(text: str, seq: int) -> JSONRPCMessage:
    return jsonrpc_message_adapter.validate_python({"jsonrpc": "2.0", "method": "notifications/progress",
        "params": {"progressToken": 1, "progress": seq, "message": text}})  # fmt: skip


@contextlib.asynccontextmanager
async def stored_once_twice(redis_server) -> AsyncIterator[tuple[SessionEvents, str]]:
    """A session's request stream "7" of "Hel", "lo MARKED" (stored twice: its reply was lost and redis-py
    sent it again), " there" and the response; the store (open until the end) and its priming event id."""
    async with losing_one_reply(redis_server.port, b"MARKED") as port:
        redis = connect(f"redis://127.0.0.1:{port}/0")
        try:
            registry = SessionRegistry(redis, 60)
            await registry.create("s1", SessionRecord("2025-11-25", INIT, None, 0.0))
            store = SessionEvents(redis, "s1", registry, "r1")
            await redis.set(keys.replica("r1"), "1", ex=60)  # the writer is alive
            primed = await store.store_event("7", None)
            await store.store_event("7", note("Hel", 1))
            await store.store_event("7", note("lo MARKED", 2))  # its reply is lost: sent again
            await store.store_event("7", note(" there", 3))
            done = {"jsonrpc": "2.0", "id": 7, "result": {"content": []}}
            await store.store_event("7", jsonrpc_message_adapter.validate_python(done))
            yield store, primed
        finally:
            await redis.aclose()


async def resumed(store: SessionEvents, last_event_id: str) -> list:
    """What a GET with this Last-Event-ID sends."""
    sent: list = []

    async def send(event) -> None:
        sent.append(event)

    with anyio.fail_after(10):
        await store.replay_events_after(last_event_id, send)
    return sent


def texts(sent: list) -> list:
    assert getattr(sent[-1].message, "result", None) == {"content": []}, "ends with the response"
    return [getattr(e.message, "params", {}).get("message") for e in sent[:-1]]


async def test_events_whose_pipeline_was_sent_twice_are_resumed_once_each(redis_server, redis_url):
    async with stored_once_twice(redis_server) as (store, primed):
        stored = await store.redis.xrange(stream_key("s1", "7"))
        sent = await resumed(store, primed)
    bodies = [fields[b"m"] for _, fields in stored]
    assert sum(b"MARKED" in body for body in bodies) == 2, (
        "Redis holds the event twice (the pipeline was resent)"
    )
    assert texts(sent) == ["Hel", "lo MARKED", " there"]


async def test_a_client_that_resumes_again_from_an_events_first_copy_gets_no_copy_of_it(
    redis_server, redis_url
):
    """The first resume sent an event's first copy, whose id is now the client's Last-Event-ID: a second
    resume from there must not send that event's second copy, which follows it in the stream."""
    async with stored_once_twice(redis_server) as (store, primed):
        first = await resumed(store, primed)
        again = await resumed(store, first[1].event_id)  # after "lo MARKED", as the first resume sent it
    assert texts(again) == [" there"], "an event the client had was sent again"
