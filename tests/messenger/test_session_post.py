"""A session's POST handed to its dispatcher below the SDK's HTTP layers (messenger.session_post):
the same requests through that way and through the SDK's, against real Redis, read the same to a
client (status, headers, SSE events and their ids, bodies), and anything the direct way does not
take goes the SDK's way with its body."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import re
from typing import Any

import anyio
import httpx2
import pytest
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher
from test_session_sdk import events, open_session, serve

from messenger import session_post
from messenger.client_log import JobLog
from messenger.collector import Transcript
from messenger.progress import ATTEMPT, JOB_ID, SEQ, ProgressOut
from messenger.sessions import RETRY_MS, SessionGate

URL = "http://127.0.0.1:8000/mcp"


def test_the_sdk_internals_the_direct_way_copies_are_still_there():
    """The steps of the SDK's POST handler and of its dispatcher's read loop that session_post runs
    itself: an SDK that changes them fails here, not on a client's wire."""
    post = inspect.getsource(StreamableHTTPServerTransport._handle_post_request)
    for step in (
        "if not await self._validate_accept_header(request, scope, send)",
        "if not self._check_content_type(request)",
        "raw_message = pydantic_core.from_json(body)",
        "message = jsonrpc_message_adapter.validate_python(raw_message, by_name=False)",
        "request.headers.get(MCP_PROTOCOL_VERSION_HEADER, DEFAULT_NEGOTIATED_VERSION)",
        "priming_event = await self._mint_priming_event(request_id, protocol_version)",
        "self._sse_stream_writers[request_id] = sse_stream_writer",
        '"Cache-Control": "no-cache, no-transform",',
        '"Connection": "keep-alive",',
        '"Content-Type": CONTENT_TYPE_SSE,',
        "**({MCP_SESSION_ID_HEADER: self.mcp_session_id} if self.mcp_session_id else {}),",
        "self._run_sse_writer, request_id, sse_stream_writer, request_stream_reader, priming_event",
        "session_message = self._create_session_message(message, request, request_id, protocol_version)",
    ):
        assert step in post, step
    handle = inspect.getsource(StreamableHTTPServerTransport._handle_request)
    assert "error_response = await self._security.validate_request(request, is_post=is_post)" in handle
    assert "self._requests_in_flight += 1" in inspect.getsource(StreamableHTTPServerTransport.handle_request)
    loop = inspect.getsource(inspect.unwrap(JSONRPCDispatcher.run))  # (watch_dispatchers wraps it)
    assert "await self._dispatch(item, on_request, on_notify, sender_ctx)" in loop
    dispatch = inspect.getsource(JSONRPCDispatcher._dispatch)
    assert "await self._dispatch_request(msg, metadata, on_request, sender_ctx)" in dispatch


def relaying_replica(redis) -> tuple[SessionGate, Any]:
    """A replica whose tools relay as the messenger's do: a log line, progress, then an answer."""
    server = MCPServer("post")

    @server.tool()
    async def relay(text: str, ctx: Context) -> str:
        out, log = ProgressOut(ctx, None), JobLog(ctx, 0)
        await log(None, Transcript("job-7"))
        for seq, word in enumerate(text.split()):
            await out.send(seq + 1, word, {JOB_ID: "job-7", ATTEMPT: 1, SEQ: seq})
        return text.upper()

    @server.tool()
    async def talk(ctx: Context) -> str:
        out = ProgressOut(ctx, None)
        for seq in range(100_000):
            await out.send(seq + 1, "w", {JOB_ID: "job-8", ATTEMPT: 1, SEQ: seq})
            await asyncio.sleep(0.005)
        return "never"

    app = server.streamable_http_app(retry_interval=RETRY_MS)
    manager = server.session_manager
    return SessionGate(app, manager, redis, 60, f"replica-{id(manager)}"), manager


def call(request_id: Any, name: str, arguments: Any) -> dict:
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
            "params": {"name": name, "arguments": arguments, "_meta": {"progressToken": "t"}}}  # fmt: skip


REQUESTS: list[tuple[str, dict[str, str], Any]] = [  # (what, extra headers, body: JSON, or bytes as sent)
    ("a call with progress", {}, call(2, "relay", {"text": "x y z"})),
    ("a call with a string id", {}, call("s-1", "relay", {"text": "one"})),
    ("bad arguments", {}, call(3, "relay", {"text": 5})),
    ("an unknown tool", {}, call(4, "nope", {})),
    ("tools/list", {}, {"jsonrpc": "2.0", "id": 5, "method": "tools/list"}),
    ("ping", {}, {"jsonrpc": "2.0", "id": 6, "method": "ping"}),
    ("an unknown method", {}, {"jsonrpc": "2.0", "id": 7, "method": "no/such"}),
    ("params not an object", {}, {"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": 5}),
    ("not JSON", {}, b"{not json"),
    ("a batch", {}, [{"jsonrpc": "2.0", "id": 9, "method": "ping"}]),
    ("a notification", {}, {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}),
    (
        "no event-stream in Accept",
        {"Accept": "application/json"},
        {"jsonrpc": "2.0", "id": 10, "method": "ping"},
    ),
    ("another content type", {"Content-Type": "text/plain"}, {"jsonrpc": "2.0", "id": 11, "method": "ping"}),
    ("an initialize in a session", {}, {"jsonrpc": "2.0", "id": 12, "method": "initialize", "params": {}}),
]


def seen(response: httpx2.Response, sid: str) -> dict:
    """What a client reads, with what differs between two sessions by nature (the session id, the
    entry ids Redis gives, the date) replaced by placeholders; ids keep their stream and job label."""
    headers = {
        k: v.replace(sid, "<sid>") for k, v in response.headers.items() if k not in ("date", "content-length")
    }
    read: list[Any] = []
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        for event in events(response.text):
            event = dict(event)
            if "id" in event:
                event["id"] = re.sub(r"/\d+-\d+", "/<entry>", event["id"])
            if event.get("data"):
                event["data"] = json.loads(event["data"])
            read.append(event)
    else:
        read.append(response.text.replace(sid, "<sid>"))
    return {"status": response.status_code, "headers": headers, "body": read}


async def what_a_client_sees(redis, direct: bool, monkeypatch) -> tuple[list[dict], int]:
    """Each request of REQUESTS in a fresh session of a fresh replica; and how many went the direct way."""
    taken = []
    answer = session_post._answer

    async def counted(*args, **kwargs):
        taken.append(1)
        await answer(*args, **kwargs)

    async def sdk_way(manager, scope, receive, *_):
        return receive

    with monkeypatch.context() as patch:
        patch.setattr(session_post, "_answer", counted)
        if not direct:
            patch.setattr(session_post, "post", sdk_way)
        gate, manager = relaying_replica(redis)
        found = []
        async with contextlib.AsyncExitStack() as stack:
            (client,) = await serve(stack, (gate, manager))
            for _, extra, body in REQUESTS:
                sid, headers = await open_session(client, URL)
                sent = {"content": body} if isinstance(body, bytes) else {"json": body}
                response = await client.post(URL, headers={**headers, **extra}, **sent)
                found.append(seen(response, sid))
    return found, len(taken)


async def test_a_client_sees_the_same_through_both_ways(real_redis, monkeypatch):
    with anyio.fail_after(30):
        sdk, none_taken = await what_a_client_sees(real_redis, False, monkeypatch)
        direct, taken = await what_a_client_sees(real_redis, True, monkeypatch)
    assert none_taken == 0
    assert (
        taken == 7
    )  # the valid requests: not params that are no object, not JSON, a batch, a notification, wrong headers, an initialize
    for (what, *_), by_sdk, by_direct in zip(REQUESTS, sdk, direct, strict=True):
        assert by_direct == by_sdk, what
    first = sdk[0]["body"]
    assert first[0]["id"] == "2/<entry>" and first[0]["retry"] == str(RETRY_MS)  # priming, then the rest
    assert first[-1]["data"]["result"]["structuredContent"] == {"result": "X Y Z"}


async def mid_call(redis, monkeypatch, direct: bool, then) -> tuple[Any, list[dict], Any]:
    """Start the endless `talk` call (the direct way or the SDK's), let it stream, then `then(client,
    headers)`: what that gave, the events the call's POST got, and a ping sent afterwards."""
    if not direct:
        monkeypatch.setattr(session_post, "post", lambda manager, scope, receive, *_: _passed(receive))
    gate, manager = relaying_replica(redis)
    with anyio.fail_after(20):
        async with contextlib.AsyncExitStack() as stack:
            (client,) = await serve(stack, (gate, manager))
            _, headers = await open_session(client, URL)
            calling = asyncio.create_task(client.post(URL, headers=headers, json=call(5, "talk", {})))
            await asyncio.sleep(0.3)
            done = await then(client, headers)
            sent = events((await calling).text)
            last = sent[0]["id"]
            after = await client.get(URL, headers={**headers, "Last-Event-ID": last})
    return done, sent, after


async def _passed(receive):
    return receive


@pytest.mark.parametrize("direct", [True, False])
async def test_a_cancelled_call_ends_the_same_and_resumes_to_its_end(real_redis, monkeypatch, direct):
    """notifications/cancelled (the SDK's own dispatcher applies it) ends a call either way with the
    SDK's error, stored: a Last-Event-ID from its priming event replays what the client saw, in order,
    up to that same end. (Either way a notification being stored as the cancel ends the call may
    miss the live stream; the replay has it.)"""
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 5}}
    accepted, sent, resumed = await mid_call(
        real_redis,
        monkeypatch,
        direct,
        lambda client, headers: client.post(URL, headers=headers, json=cancel),
    )
    again = events(resumed.text)
    assert accepted.status_code == 202
    assert json.loads(sent[-1]["data"]) == {
        "jsonrpc": "2.0", "id": 5, "error": {"code": -32800, "message": "Request cancelled"}
    }  # fmt: skip
    assert again[-1] == sent[-1]
    replayed = iter(again)
    assert all(event in replayed for event in sent[1:])  # each one live, in the replay's order


@pytest.mark.parametrize("direct", [True, False])
async def test_a_session_deleted_mid_call_ends_the_call_either_way(real_redis, monkeypatch, direct):
    """DELETE ends the session's calls in flight (the SDK's transport closes their streams, its
    dispatcher cancels their handlers): the POST's response ends, without the call's answer, and the
    session is gone."""
    deleted, sent, resumed = await mid_call(
        real_redis, monkeypatch, direct, lambda client, headers: client.delete(URL, headers=headers)
    )
    assert deleted.status_code == 200 and resumed.status_code == 404
    assert sent and all("result" not in json.loads(e["data"]) for e in sent if e.get("data"))


async def test_a_body_over_the_cap_goes_the_sdks_way_whole(real_redis, monkeypatch):
    """A body the direct way will not hold (sent chunked: no length to refuse it by) is handed on with
    what was read of it: the SDK answers it whole."""
    monkeypatch.setattr("messenger.sessions.MCP_BODY_MAX_BYTES", 64)
    gate, manager = relaying_replica(real_redis)
    with anyio.fail_after(20):
        async with contextlib.AsyncExitStack() as stack:
            (client,) = await serve(stack, (gate, manager))
            _, headers = await open_session(client, URL)
            body = json.dumps(call(2, "relay", {"text": "word " * 40})).encode()

            async def chunks():
                yield body[:50]
                yield body[50:]

            answer = await client.post(URL, headers=headers, content=chunks())
    assert answer.status_code == 200
    assert json.loads(events(answer.text)[-1]["data"])["result"]["structuredContent"] == {
        "result": "WORD " * 40
    }
