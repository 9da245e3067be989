"""Pins the private mcp SDK paths that shared sessions use (messenger/session_sdk.py, and the SDK
behaviour messenger/sessions.py relies on): if an SDK upgrade renames or reshapes them, these fail
here, loudly, instead of sessions breaking across replicas for users.

Two apps in one process stand for two replicas (two session managers, one Redis): a session opened
on one is served, resumed and deleted through the other; and the Redis side of it (what an event
costs, junk, Redis refusing, a call whose replica is gone) is checked here, in process."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from typing import Any

import anyio
import httpx2
import pytest
import redis as sync_redis
from mcp.server import runner
from mcp.server.connection import Connection
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp_types import JSONRPCError, JSONRPCMessage, jsonrpc_message_adapter
from redis.exceptions import ConnectionError as RedisConnectionError

from messenger import session_sdk
from messenger.client_log import JobLog
from messenger.collector import Transcript
from messenger.progress import ATTEMPT, JOB_ID, SEQ, ProgressOut, ProgressRelay
from messenger.sessions import (
    RETRY_MS,
    SessionEvents,
    SessionGate,
    SessionRecord,
    SessionRegistry,
    split_event_id,
)
from shared import keys
from shared.connection import connect
from shared.events import DoneEvent, StartEvent, TokenEvent

POST = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "pin", "version": "1"}}


def test_the_manager_internals_are_still_there():
    handle = inspect.getsource(StreamableHTTPSessionManager._handle_stateful_request)
    assert "request_mcp_session_id in self._server_instances" in handle
    assert "requestor != self._session_owners.get(request_mcp_session_id)" in handle
    assert list(inspect.signature(StreamableHTTPSessionManager._admit_session).parameters) == [
        "self",
        "requestor",
    ]
    discard = inspect.signature(StreamableHTTPSessionManager._discard_session).parameters
    assert list(discard) == ["self", "session_id", "transport"]
    run = inspect.getsource(StreamableHTTPSessionManager.run)
    assert "self._lifespan_state = lifespan_state" in run and "self._task_group = tg" in run
    assert "self._event_store = event_store" in inspect.getsource(StreamableHTTPServerTransport.__init__)


def test_the_loop_recipe_rehydrate_copies_is_still_the_sdks():
    loop = inspect.getsource(runner.serve_loop)
    assert 'inline_methods=frozenset({"initialize"})' in loop
    assert "Connection.for_loop(dispatcher, session_id=session_id)" in loop
    assert "initialize_accepted" in inspect.getsource(Connection)
    commit = inspect.getsource(runner.ServerRunner._on_request)
    assert "self.connection.client_params, self.connection.protocol_version = " in commit


def test_events_are_stored_before_delivery_and_a_none_replay_opens_no_local_stream():
    connect = inspect.getsource(StreamableHTTPServerTransport.connect)
    assert connect.index("store_event(request_stream_id, message)") < connect.index(
        "self._request_streams[request_stream_id][0].send"
    )
    replay = inspect.getsource(StreamableHTTPServerTransport._replay_events)
    assert "stream_id = await event_store.replay_events_after(last_event_id, send_event)" in replay
    assert "if stream_id and stream_id not in self._request_streams" in replay


def replica(redis, idle_seconds: float = 60) -> tuple[SessionGate, StreamableHTTPSessionManager]:
    server = MCPServer("pin")

    @server.tool()
    async def shout(text: str, ctx: Context) -> str:
        for word in text.split():
            await ctx.report_progress(1, None, word)
        return text.upper()

    app = server.streamable_http_app(retry_interval=RETRY_MS)  # as serve.py
    manager = server.session_manager
    return SessionGate(app, manager, redis, idle_seconds, f"replica-{id(manager)}"), manager


def events(text: str) -> list[dict]:
    found = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if fields:
            found.append(fields)
    return found


async def serve(stack: contextlib.AsyncExitStack, *replicas) -> list[httpx2.AsyncClient]:
    """Run each replica's session manager, and an HTTP client for each (both end with `stack`)."""
    for _, manager in replicas:
        await stack.enter_async_context(manager.run())
    return [
        await stack.enter_async_context(httpx2.AsyncClient(transport=httpx2.ASGITransport(gate)))
        for gate, _ in replicas
    ]


async def open_session(client: httpx2.AsyncClient, url: str) -> tuple[str, dict[str, str]]:
    """Initialize a session: its id, and the headers of a request in it."""
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INIT}
    sid = (await client.post(url, headers=POST, json=init)).headers["mcp-session-id"]
    return sid, {**POST, "Mcp-Session-Id": sid, "Mcp-Protocol-Version": "2025-11-25"}


async def test_a_session_opened_on_one_replica_is_served_and_deleted_on_another(redis):
    (gate_a, manager_a), (gate_b, manager_b) = replica(redis), replica(redis)
    with anyio.fail_after(20):
        async with contextlib.AsyncExitStack() as stack:
            a, b = await serve(stack, (gate_a, manager_a), (gate_b, manager_b))
            url = "http://127.0.0.1:8000/mcp"
            opened = await a.post(
                url, headers=POST, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INIT}
            )
            sid = opened.headers["mcp-session-id"]
            record = json.loads(await redis.get(f"mcpq:session:{sid}"))
            headers = {**POST, "Mcp-Session-Id": sid, "Mcp-Protocol-Version": "2025-11-25"}
            call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                    "params": {"name": "shout", "arguments": {"text": "a b c"}, "_meta": {"progressToken": 1}}}  # fmt: skip
            called = await b.post(url, headers=headers, json=call)
            assert session_sdk.is_local(manager_b, sid)
            sent = events(called.text)
            deleted = await b.delete(url, headers=headers)
            gone = await a.post(url, headers=headers, json={"jsonrpc": "2.0", "id": 3, "method": "ping"})
    assert record["params"] == INIT and record["protocolVersion"] == "2025-11-25" and record["owner"] is None
    assert sent[0]["id"].startswith("2/") and sent[0]["retry"] == "1000"  # the priming event
    assert [json.loads(e["data"])["params"]["message"] for e in sent[1:4]] == ["a", "b", "c"]
    assert json.loads(sent[-1]["data"])["result"]["structuredContent"] == {"result": "A B C"}
    assert [e["id"] for e in sent] == [
        f"2/{i.decode()}" for i, _ in await redis.xrange(f"mcpq:session:{sid}:events:2")
    ]
    assert deleted.status_code == 200 and gone.status_code == 404
    assert not session_sdk.is_local(manager_a, sid)  # the 404 made replica A forget its copy too


def test_the_request_stream_internals_direct_notifications_use_are_still_there():
    """messenger.session_sdk.RequestStream puts pre-encoded events on a request's own stream: the SSE
    writer must still send the priming event first, then drain that stream, asking each message for
    `model_dump_json`, and end at the response."""
    writer = inspect.getsource(StreamableHTTPServerTransport._run_sse_writer)
    assert writer.index("send(priming_event)") < writer.index(
        "async for event_message in request_stream_reader"
    )
    assert "self._create_event_data(event_message)" in writer and "JSONRPCResponse | JSONRPCError" in writer
    assert "event_message.message.model_dump_json(" in inspect.getsource(
        StreamableHTTPServerTransport._create_event_data
    )
    post = inspect.getsource(StreamableHTTPServerTransport._handle_post_request)
    assert "self._request_streams[request_id] = anyio.create_memory_object_stream" in post
    assert "request_id = str(message.id)" in post


def direct_replica(redis, sent_direct: list[bool]) -> tuple[SessionGate, StreamableHTTPSessionManager]:
    """A replica whose tool relays like the messenger's: ProgressOut notifications and a JobLog line."""
    server = MCPServer("direct")

    @server.tool()
    async def relay(text: str, ctx: Context) -> str:
        out = ProgressOut(ctx, None)
        log = JobLog(ctx, 0)
        sent_direct.append(out.direct is not None and log.direct is not None)
        transcript = Transcript("job-7")
        await log(None, transcript)  # "job job-7 queued", as a notifications/message
        for seq, word in enumerate(text.split()):
            await out.send(seq + 1, word, {JOB_ID: "job-7", ATTEMPT: 1, SEQ: seq})
        return text.upper()

    app = server.streamable_http_app(retry_interval=RETRY_MS)
    manager = server.session_manager
    return SessionGate(app, manager, redis, 60, f"replica-{id(manager)}"), manager


@pytest.mark.parametrize("priming_out_first", [True, False])
async def test_direct_notifications_keep_the_sdks_order_ids_store_and_resume(
    redis, monkeypatch, priming_out_first
):
    """Progress and log notifications written straight to the response's socket (not through the
    SDK's session and SSE writer): priming event first, then each in the order sent, then the
    response; every id is the stored entry's (a job's progress labelled with its job and seq), so a
    Last-Event-ID resumes on another replica with the rest, as for any SDK-sent event. A call whose
    first notification comes before the priming event is out sends it, and the rest, the SDK's way:
    nothing overtakes the priming event or a notification still in the SDK's stream."""
    sent_direct: list[bool] = []
    on_the_wire: list[str] = []  # the events written to the socket directly, not by the SDK
    encode = session_sdk.sse
    monkeypatch.setattr(session_sdk, "sse", lambda i, body: on_the_wire.append(body) or encode(i, body))
    if not priming_out_first:
        seen = session_sdk.Wire.__call__

        async def priming_seen_late(self, message):
            await seen(self, message)
            self.started = self.started and self.queued

        monkeypatch.setattr(session_sdk.Wire, "__call__", priming_seen_late)
    (gate_a, manager_a), (gate_b, manager_b) = direct_replica(redis, sent_direct), direct_replica(redis, [])
    url = "http://127.0.0.1:8000/mcp"
    with anyio.fail_after(20):
        async with contextlib.AsyncExitStack() as stack:
            a, b = await serve(stack, (gate_a, manager_a), (gate_b, manager_b))
            sid, headers = await open_session(a, url)
            call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                    "params": {"name": "relay", "arguments": {"text": "x y z"}, "_meta": {"progressToken": "t"}}}  # fmt: skip
            sent = events((await a.post(url, headers=headers, json=call)).text)
            again = events((await b.get(url, headers={**headers, "Last-Event-ID": sent[2]["id"]})).text)
    assert sent_direct == [True]
    messages = [json.loads(e["data"]) for e in sent[1:]]
    assert [json.loads(body) for body in on_the_wire] == (messages[:-1] if priming_out_first else [])
    assert messages[0] == {"jsonrpc": "2.0", "method": "notifications/message",
                           "params": {"level": "info", "logger": "mcp-queue", "data": "job job-7 queued"}}  # fmt: skip
    assert [m["params"] for m in messages[1:4]] == [
        {
            "progressToken": "t",
            "progress": i + 1,
            "message": w,
            "_meta": {JOB_ID: "job-7", ATTEMPT: 1, SEQ: i},
        }
        for i, w in enumerate("x y z".split())
    ]
    assert messages[-1]["result"]["structuredContent"] == {"result": "X Y Z"}
    assert [e["id"] for e in sent] == [
        f"2/{i.decode()}" + (f"@job-7:1.{n - 2}" if 2 <= n <= 4 else "")
        for n, (i, _) in enumerate(await redis.xrange(f"mcpq:session:{sid}:events:2"))
    ]
    assert again == sent[3:]  # after the first progress event: the rest and the response, same ids


async def test_each_stored_event_costs_about_one_redis_command(redis_url):
    """The README's Redis cost, measured on a real Redis: a call with 100 progress notifications."""
    redis = connect(redis_url)
    gate, manager = replica(redis, idle_seconds=3600)
    plain = sync_redis.Redis.from_url(redis_url)
    text = " ".join(f"w{i}" for i in range(100))
    try:
        with anyio.fail_after(20):
            async with manager.run(), httpx2.AsyncClient(transport=httpx2.ASGITransport(gate)) as http:
                url = "http://127.0.0.1:8000/mcp"
                init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INIT}
                sid = (await http.post(url, headers=POST, json=init)).headers["mcp-session-id"]
                headers = {**POST, "Mcp-Session-Id": sid, "Mcp-Protocol-Version": "2025-11-25"}
                call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                        "params": {"name": "shout", "arguments": {"text": text}, "_meta": {"progressToken": 1}}}  # fmt: skip
                plain.config_resetstat()
                sent = events((await http.post(url, headers=headers, json=call)).text)
                stats = plain.info("commandstats")
                kept = plain.ttl(f"mcpq:session:{sid}:events:2")
    finally:
        await redis.aclose()
    calls = {name.removeprefix("cmdstat_"): row["calls"] for name, row in stats.items()}
    calls.pop("info", None)
    calls.pop("config|resetstat", None)
    assert len(sent) == 102  # the priming event, 100 notes, the result
    assert calls["xadd"] == len(sent)
    per_event = sum(calls.values()) / len(sent)
    print(f"Redis commands per stored event: {per_event:.3f} ({calls})")
    assert per_event < 1.05, calls  # one XADD each; EXPIRE on the first and last; one GETEX per request
    assert 0 < kept <= 300  # an answered call's events are kept 5 minutes, not the session's hour


async def test_a_finished_stream_replays_whole_on_another_replica_and_junk_in_it_is_skipped(redis, caplog):
    (gate_a, manager_a), (gate_b, manager_b) = replica(redis), replica(redis)
    url = "http://127.0.0.1:8000/mcp"
    with anyio.fail_after(20):
        async with contextlib.AsyncExitStack() as stack:
            a, b = await serve(stack, (gate_a, manager_a), (gate_b, manager_b))
            sid, headers = await open_session(a, url)
            call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                    "params": {"name": "shout", "arguments": {"text": "x y"}, "_meta": {"progressToken": 1}}}  # fmt: skip
            sent = events((await a.post(url, headers=headers, json=call)).text)
            again = events((await b.get(url, headers={**headers, "Last-Event-ID": sent[0]["id"]})).text)
            after_end = await b.get(url, headers={**headers, "Last-Event-ID": sent[-1]["id"]})
            key = f"mcpq:session:{sid}:events:9"  # a stream with junk between its first event and its end
            first = (await redis.xadd(key, {"m": "", "r": "x"})).decode()
            await redis.xadd(key, {"m": "not json", "r": "x"})
            await redis.xadd(key, {"m": '{"jsonrpc": "2.0", "id": 9, "result": {}}', "r": "x"})
            junk = await b.get(url, headers={**headers, "Last-Event-ID": f"9/{first}"})
    assert again == sent[1:]  # everything after the priming event, ids included
    assert after_end.status_code == 200 and events(after_end.text) == []
    assert junk.status_code == 200 and [json.loads(e["data"]) for e in events(junk.text)] == [
        {"jsonrpc": "2.0", "id": 9, "result": {}}
    ]
    assert "no JSON-RPC message skipped" in caplog.text and "Traceback" not in caplog.text


async def test_with_redis_refusing_a_session_request_gets_503_and_a_live_call_still_answers(
    redis, monkeypatch, caplog
):
    gate, manager = replica(redis)
    url = "http://127.0.0.1:8000/mcp"

    async def refused(*args, **kwargs):
        raise RedisConnectionError("Connection refused")

    with anyio.fail_after(20):
        async with manager.run(), httpx2.AsyncClient(transport=httpx2.ASGITransport(gate)) as http:
            init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INIT}
            sid = (await http.post(url, headers=POST, json=init)).headers["mcp-session-id"]
            headers = {**POST, "Mcp-Session-Id": sid, "Mcp-Protocol-Version": "2025-11-25"}
            call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                    "params": {"name": "shout", "arguments": {"text": "p q"}, "_meta": {"progressToken": 1}}}  # fmt: skip
            monkeypatch.setattr(gate.registry, "touch", refused)
            unavailable = await http.post(url, headers=headers, json=call)
            monkeypatch.undo()
            batch = gate.registry.batch
            run, send_each = batch.run, batch.send_each

            async def no_event_stored(*commands):
                return await (refused() if commands[0][0] == "XADD" else run(*commands))

            def no_events_stored(*commands):
                if commands[0][0] != "XADD":
                    return send_each(*commands)
                refusal = asyncio.get_running_loop().create_future()
                refusal.set_exception(RedisConnectionError("Connection refused"))
                return refusal

            monkeypatch.setattr(batch, "run", no_event_stored)
            monkeypatch.setattr(batch, "send_each", no_events_stored)
            answered = events((await http.post(url, headers=headers, json=call)).text)
    assert unavailable.status_code == 503 and "Redis" in unavailable.json()["error"]["message"]
    assert json.loads(answered[-1]["data"])["result"]["structuredContent"] == {"result": "P Q"}
    assert {e["id"] for e in answered} == {"2/0-0"}  # ids that a Last-Event-ID then gets 404 for
    assert "an event not stored" in caplog.text and "Traceback" not in caplog.text


async def test_a_call_whose_replica_is_gone_ends_with_an_error_naming_its_job(redis):
    """The resumed stream of a call whose writer stopped: the job id comes from the progress the
    client saw before it resumed (messenger.progress puts it in `_meta`)."""
    registry = SessionRegistry(redis, 60)
    await registry.create("s1", SessionRecord("2025-11-25", INIT, None, 0.0))
    store = SessionEvents(redis, "s1", registry, "gone-replica")  # no mcpq:replica:gone-replica key
    await store.store_event("7", None)
    note = {"jsonrpc": "2.0", "method": "notifications/progress",
            "params": {"progressToken": 1, "progress": 1, "message": "Hel", "_meta": {"mcp-queue/jobId": "job-42"}}}  # fmt: skip
    seen = await store.store_event("7", jsonrpc_message_adapter.validate_python(note))
    sent: list = []

    async def send(event) -> None:
        sent.append(event)

    with anyio.fail_after(10):
        await store.replay_events_after(seen, send)
    (error,) = [e.message for e in sent]
    assert isinstance(error, JSONRPCError) and error.id == 7 and error.error.code == -32603
    assert "job job-42 goes on" in error.error.message and error.error.data == {"jobId": "job-42"}


async def test_a_progress_event_id_names_its_job_and_seq_and_resumes_like_any_other(redis):
    """Issue 18: the id of a job's progress event says which job and where in it
    (`<stream>/<entry>@<job>:<attempt>.<seq>`); a Last-Event-ID of it resumes after that event."""
    registry = SessionRegistry(redis, 60)
    await registry.create("s2", SessionRecord("2025-11-25", INIT, None, 0.0))
    store = SessionEvents(redis, "s2", registry, "r1")
    await redis.set(keys.replica("r1"), "1", ex=60)  # the writer is alive

    def note(text: str, seq: int) -> JSONRPCMessage:
        meta = {"mcp-queue/jobId": "job/42", "mcp-queue/attempt": 2, "mcp-queue/seq": seq}
        return jsonrpc_message_adapter.validate_python({"jsonrpc": "2.0", "method": "notifications/progress",
            "params": {"progressToken": 1, "progress": seq, "message": text, "_meta": meta}})  # fmt: skip

    first = await store.store_event("req/7", note("Hel", 3))
    assert first.startswith("req/7/") and first.endswith("@job/42:2.3")
    assert split_event_id(first) == ("req/7", first[len("req/7/") : first.index("@")])
    await store.store_event("req/7", note("lo", 5))
    done = {"jsonrpc": "2.0", "id": "req/7", "result": {"content": []}}
    await store.store_event("req/7", jsonrpc_message_adapter.validate_python(done))
    sent: list = []

    async def send(event) -> None:
        sent.append(event)

    with anyio.fail_after(10):
        await store.replay_events_after(first, send)
    assert [getattr(e.message, "params", {}).get("message") for e in sent[:-1]] == ["lo"]
    assert sent[0].event_id.endswith("@job/42:2.5")  # replayed on any replica with the same label
    assert sent[-1].event_id.endswith(tuple("0123456789"))  # the response names no job
    assert split_event_id("req/7/1-0@") == ("req/7", "1-0")
    assert split_event_id("req/7/x-0@job:1.2") is None and split_event_id("/1-0") is None


async def test_a_wrong_type_session_key_is_an_unknown_session_not_redis_away(redis, caplog):
    """A hash written by hand where a session record belongs: that session gets 404 (its client
    opens a new one) and one WARNING names the key; Redis being away would be 503 for ever."""
    await redis.hset(keys.session("s3"), "x", "y")
    registry = SessionRegistry(redis, 60)
    assert await registry.touch("s3") is None
    assert "mcpq:session:s3" in caplog.text and "wrong type" in caplog.text


def quiet_replica(redis) -> tuple[MCPServer, Any, SessionGate]:
    """A replica whose tool `wait` says nothing for `seconds` (the pinger's timer rings first)."""
    server = MCPServer("quiet")

    @server.tool()
    async def wait(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"

    app = server.streamable_http_app(retry_interval=RETRY_MS)
    return server, app, SessionGate(app, server.session_manager, redis, 60, f"replica-{id(server)}")


def test_the_post_response_the_sdk_builds_is_still_the_module_global_sse_response():
    """messenger.session_sdk.answer_posts_lightly swaps the module global the SDK's POST handler
    builds its SSE response by; it must still be built there, with these arguments."""
    post = inspect.getsource(StreamableHTTPServerTransport._handle_post_request)
    assert "response = EventSourceResponse(" in post
    assert "content=sse_stream_reader" in post and "data_sender_callable=partial(" in post
    assert "headers=headers" in post and "tg.start_soon(response, scope, receive, send)" in post


async def test_a_posts_light_response_has_sse_starlettes_headers_and_pings_a_quiet_stream(redis, monkeypatch):
    """A session's POST is answered by PostStream: the headers sse-starlette sent (but its
    Date), a comment line every PING_SECONDS while the call is quiet, then the response; the same
    call without SessionGate (sse-starlette's response) for comparison."""
    monkeypatch.setattr(session_sdk, "PING_SECONDS", 0.05)
    server, app, gate = quiet_replica(redis)
    url = "http://127.0.0.1:8000/mcp"
    call = wait_call(0.3)
    with anyio.fail_after(20):
        async with contextlib.AsyncExitStack() as stack:
            (light,) = await serve(stack, (gate, server.session_manager))
            plain = await stack.enter_async_context(httpx2.AsyncClient(transport=httpx2.ASGITransport(app)))
            _, headers = await open_session(light, url)
            answered = await light.post(url, headers=headers, json=call)
            _, headers = await open_session(plain, url)
            call["params"]["arguments"]["seconds"] = 0
            unchanged = await plain.post(url, headers=headers, json=call)
    assert not session_sdk._PINGED  # every stream left the pinger's set
    drop = {"date", "mcp-session-id"}
    assert {k: v for k, v in answered.headers.items() if k not in drop} == {
        k: v for k, v in unchanged.headers.items() if k not in drop
    }
    assert ": ping\r\n\r\n" in answered.text and ": ping" not in unchanged.text
    sent = [e for e in events(answered.text) if "id" in e]
    assert sent[0]["retry"] == "1000" and json.loads(sent[-1]["data"])["result"]["structuredContent"] == {
        "result": "done"
    }


def wait_call(seconds: float) -> dict:
    """A tools/call of quiet_replica's `wait` tool, id 2."""
    return {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "wait", "arguments": {"seconds": seconds}}}  # fmt: skip


async def answer_one_wait(redis):
    """(server, session id, response) of one `wait` call, 0 s, in a fresh session on a quiet replica."""
    server, _, gate = quiet_replica(redis)
    url = "http://127.0.0.1:8000/mcp"
    call = wait_call(0)
    with anyio.fail_after(20):
        async with contextlib.AsyncExitStack() as stack:
            (client,) = await serve(stack, (gate, server.session_manager))
            sid, headers = await open_session(client, url)
            answered = await client.post(url, headers=headers, json=call)
    return server, sid, answered


async def test_a_posts_events_are_written_without_the_sdks_sse_writer_task(redis, monkeypatch):
    """PostStream does the SDK's SSE writer's work in its own task (the priming event, then the
    request's stream up to the response, the streams cleaned up after): no writer task and no second
    memory stream per call, the same events and the same ids."""
    started: list[str] = []
    writer = StreamableHTTPServerTransport._run_sse_writer

    async def counted(self, request_id, *args):
        started.append(request_id)
        await writer(self, request_id, *args)

    monkeypatch.setattr(StreamableHTTPServerTransport, "_run_sse_writer", counted)
    server, sid, answered = await answer_one_wait(redis)
    transport = server.session_manager._server_instances.get(sid)
    assert started == ["1"]  # the initialize's (its scope has no Wire): sse-starlette's, unchanged
    sent = [e for e in events(answered.text) if "id" in e]
    assert sent[0]["retry"] == "1000" and sent[0]["data"] == ""
    assert json.loads(sent[-1]["data"])["result"]["structuredContent"] == {"result": "done"}
    assert [e["id"] for e in sent] == [
        f"2/{i.decode()}" for i, _ in await redis.xrange(f"mcpq:session:{sid}:events:2")
    ]
    assert transport is None or (
        "2" not in transport._request_streams and "2" not in transport._sse_stream_writers
    )


@pytest.mark.parametrize("burst", [False, True])
async def test_a_job_events_log_message_text_and_status_go_out_in_one_write(redis, monkeypatch, burst):
    """ProgressRelay holds what one job event makes (its log message, the text, the status) and
    RequestStream sends it together: one Batch entry and one socket write, in the order and with the
    ids the events have in the session's store. Events that come in one burst (each with the rest
    behind it in the follower's mailbox: an instant job) go out together as a whole, the same
    events in the same order with the same ids."""
    sends: list[list[str]] = []  # the methods of each RequestStream send: one Batch entry, one write
    send = session_sdk.RequestStream._send

    async def recorded(self, held):
        sends.append([json.loads(body)["method"] for body, _ in held])
        await send(self, held)

    monkeypatch.setattr(session_sdk.RequestStream, "_send", recorded)
    server = MCPServer("story")

    @server.tool()
    async def story(ctx: Context) -> str:
        relay, transcript = ProgressRelay(ctx, None, JobLog(ctx, 0)), Transcript("job-7")
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        for event in (
            StartEvent(job_id="job-7", seq=0, attempt=1, ts=0, worker_id="w", model="m"),
            TokenEvent(job_id="job-7", seq=1, attempt=1, ts=0, text="hi"),
            DoneEvent(
                job_id="job-7",
                seq=2,
                attempt=1,
                ts=0,
                usage=usage,
                model="m",
                cost=None,
                finish_reason="stop",
            ),
        ):
            transcript.apply(event)
            transcript.behind = 2 - event.seq if burst else 0  # as collector.follow_events sets it
            await relay(event, transcript)
        return "done"

    app = server.streamable_http_app(retry_interval=RETRY_MS)
    gate = SessionGate(app, server.session_manager, redis, 60, "replica-story")
    url = "http://127.0.0.1:8000/mcp"
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "story", "arguments": {}, "_meta": {"progressToken": "t"}}}  # fmt: skip
    with anyio.fail_after(20):
        async with contextlib.AsyncExitStack() as stack:
            (client,) = await serve(stack, (gate, server.session_manager))
            sid, headers = await open_session(client, url)
            sent = events((await client.post(url, headers=headers, json=call)).text)
    log, progress = "notifications/message", "notifications/progress"
    if burst:
        assert sends == [[log, progress, progress, log, progress]]
    else:
        assert sends == [[log, progress], [progress], [log, progress]]  # started; "hi"; completed (text went)
    assert [json.loads(e["data"]).get("method") for e in sent[1:]] == [
        log,
        progress,
        progress,
        log,
        progress,
        None,
    ]
    assert [e["id"].split("@")[0] for e in sent] == [
        f"2/{i.decode()}" for i, _ in await redis.xrange(f"mcpq:session:{sid}:events:2")
    ]


async def test_a_posts_response_goes_out_with_the_bodys_end(redis, monkeypatch):
    """The response event is sent as the body's last message (more_body false): with uvicorn's
    httptools, the event and the chunked body's end are one socket write, not two."""
    bodies: list[tuple[bytes, bool]] = []
    seen = session_sdk.Wire.__call__

    async def recorded(self, message):
        if message["type"] == "http.response.body":
            bodies.append((message["body"], message.get("more_body", False)))
        await seen(self, message)

    monkeypatch.setattr(session_sdk.Wire, "__call__", recorded)
    _, _, answered = await answer_one_wait(redis)
    last, more = bodies[-1]
    assert not more and [e["data"] for e in events(last.decode())] == [events(answered.text)[-1]["data"]]
    assert json.loads(events(last.decode())[0]["data"])["result"]["structuredContent"] == {"result": "done"}
    assert [m for _, m in bodies].count(False) == 1


async def test_holds_that_nest_or_overlap_send_everything_once_the_last_ends():
    """RequestStream held by two `async with`s at once (nested, or overlapping in two tasks): what
    was sent goes out, in order, when the last one ends; after that, at once."""
    stored: list[list[str]] = []

    class Store:
        async def store_bodies(self, stream_id: str, events: list[tuple[str, str]]) -> list[str]:
            stored.append([body for body, _ in events])
            return [f"{stream_id}/{len(stored)}-{i}" for i in range(len(events))]

    writer, reader = anyio.create_memory_object_stream(10)
    transport = type("T", (), {"_event_store": Store(), "_request_streams": {"1": (writer, reader)}})()
    stream = session_sdk.RequestStream(transport, "1", None)  # type: ignore[arg-type]
    first, second = stream, stream
    await first.__aenter__()
    await stream.send("a")
    await second.__aenter__()
    await stream.send("b")
    await first.__aexit__(None, None, None)  # the first ends while the second still holds
    assert stored == []
    await stream.send("c")
    await second.__aexit__(None, None, None)
    await stream.send("d")
    assert stored == [["a", "b", "c"], ["d"]]
    assert [reader.receive_nowait().event_id for _ in range(4)] == ["1/1-0", "1/1-1", "1/1-2", "1/2-0"]


@pytest.mark.parametrize(
    "event",
    [
        {"id": "7/1733-0", "data": "", "retry": RETRY_MS},  # a priming event
        {"event": "message", "data": '{"jsonrpc":"2.0","id":7,"result":{"é":"ü"}}', "id": "7/1733-1"},
        {"event": "message", "data": "{}"},  # no event store: no id
        {"id": "7\n/1-0", "data": ""},  # a line break in an id is stripped
        {"event": "message", "data": "a\r\nb\rc"},  # data over lines: one data line each
        {"id": "", "data": ""},
        {"data": "x", "retry": True},  # (not an int: sse-starlette's own error)
        {"comment": "hi", "data": "x"},
    ],
)
def test_an_sdk_event_is_written_as_sse_starlette_writes_it(event):
    """The priming event and the response are encoded without sse-starlette's ServerSentEvent, to
    the same bytes (or its own error)."""
    from sse_starlette.event import ensure_bytes

    try:
        expected: bytes | type[Exception] = ensure_bytes(event, "\r\n")
    except Exception as e:
        expected = type(e)
    if isinstance(expected, bytes):
        assert session_sdk.sse_event(event) == expected
    else:
        with pytest.raises(expected):
            session_sdk.sse_event(event)
