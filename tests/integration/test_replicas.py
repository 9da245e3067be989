"""Three messenger replicas behind a per-request round-robin proxy (tests/proxy.py), one Redis, real
worker processes: a 2025-11-25 session works whichever replica each request reaches, a dropped
stream resumes on another replica with nothing lost or repeated, and a session's id is worth
nothing to another key or after its DELETE, on every replica."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_helpers import HttpMessenger, messenger_env, running_messengers
from mcp_types import jsonrpc_message_adapter
from openai_server import eventually
from processes import WorkerProcesses
from proxy import round_robin_proxy

from messenger.sessions import SessionEvents, SessionRegistry
from shared.connection import connect
from worker.providers.mock import mock_reply

ALICE = {"Authorization": "Bearer tok-alice"}
BOB = {"Authorization": "Bearer tok-bob"}
KEYS = json.dumps({"alice": "tok-alice", "bob": "tok-bob"})
POST = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
LEGACY = "2025-11-25"


def whole_answer(prompt: str) -> str:
    return "".join(mock_reply([{"role": "user", "content": prompt}]))


@dataclass
class Replicas:
    messengers: list[HttpMessenger]
    redis: object  # a sync client on the stack's Redis


@pytest.fixture(scope="module")
def replicas(redis_server, tmp_path_factory):
    """3 `messenger serve --transport http` processes and 2 mock workers on one real Redis."""
    tmp = tmp_path_factory.mktemp("replicas")
    redis_server.client().flushall()
    workers = WorkerProcesses(redis_server, tmp)
    try:
        workers.start(redis_server.url, count=2, MOCK_TOKEN_DELAY_MS="40")
        with running_messengers(tmp) as messengers:
            env = messenger_env(redis_server.url, MCP_API_KEYS=KEYS)
            started = [messengers.http(env, wait=False) for _ in range(3)]
            for m in started:
                m.wait_ready(60)
            yield Replicas(started, redis_server.client())
    finally:
        workers.stop_all()


@contextlib.asynccontextmanager
async def behind_proxy(replicas: Replicas):
    async with round_robin_proxy([m.url for m in replicas.messengers]) as proxy:
        yield proxy


@contextlib.asynccontextmanager
async def legacy_client(url: str, headers: dict):
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60) as http,
        Client(streamable_http_client(url, http_client=http), mode="legacy") as client,
    ):
        yield client


# -- raw HTTP: what a client's transport does, one request at a time ---------------------------------


@dataclass
class SseEvent:
    id: str | None
    data: str
    retry: int | None = None

    @property
    def message(self) -> dict:
        return json.loads(self.data)


@dataclass
class RawSession:
    http: httpx2.AsyncClient
    url: str
    session_id: str = ""
    next_id: int = field(default=1)

    def headers(self, **extra: str) -> dict:
        return {**POST, "Mcp-Session-Id": self.session_id, "Mcp-Protocol-Version": LEGACY, **extra}

    async def open(self) -> RawSession:
        params = {
            "protocolVersion": LEGACY,
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"},
        }
        answer = await self.http.post(self.url, headers=POST, json=self.request("initialize", params))
        assert answer.status_code == 200, answer.text
        self.session_id = answer.headers["mcp-session-id"]
        done = await self.http.post(
            self.url, headers=self.headers(), json={"jsonrpc": "2.0", "method": "notifications/initialized"}
        )
        assert done.status_code == 202, done.text
        return self

    def request(self, method: str, params: dict) -> dict:
        self.next_id += 1
        return {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}

    def call(self, prompt: str) -> dict:
        params = {
            "name": "send_message_to_ai",
            "arguments": {"message": prompt},
            "_meta": {"progressToken": "p"},
        }
        return self.request("tools/call", params)


async def sse_events(response: httpx2.Response):
    """The SSE events of a response as they arrive."""
    event: dict = {"data": []}
    async for line in response.aiter_lines():
        if not line:
            if event.get("id") is not None or event["data"]:
                yield SseEvent(event.get("id"), "\n".join(event["data"]), event.get("retry"))
            event = {"data": []}
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            event["data"].append(value)
        elif name == "id":
            event["id"] = value
        elif name == "retry":
            event["retry"] = int(value)


def progress_text(events: list[SseEvent]) -> str:
    """The answer text of progress notifications (status-only keep-alives and markers left out)."""
    notes = [
        e.message["params"] for e in events if e.data and e.message.get("method") == "notifications/progress"
    ]
    return "".join(n.get("message") or "" for n in notes if not (n.get("message") or "").startswith("["))


# -- the tests --------------------------------------------------------------------------------------


async def test_python_legacy_client_through_round_robin_makes_20_exact_calls(replicas):
    with anyio.fail_after(120):
        async with behind_proxy(replicas) as proxy, legacy_client(proxy.url, ALICE) as client:
            assert client.session.protocol_version == LEGACY  # pyright: ignore
            names = {t.name for t in (await client.list_tools()).tools}
            assert "send_message_to_ai" in names
            answers: dict[int, str] = {}
            limit = anyio.Semaphore(5)

            async def ask(i: int) -> None:
                async with limit:
                    result = await client.call_tool("send_message_to_ai", {"message": f"replica call {i}"})
                assert not result.is_error, result
                answers[i] = result.structured_content["aiResponse"]  # pyright: ignore

            async with anyio.create_task_group() as tg:
                for i in range(20):
                    tg.start_soon(ask, i)
    assert answers == {i: whole_answer(f"replica call {i}") for i in range(20)}
    assert all(s.status < 400 for s in proxy.served), [str(s) for s in proxy.served if s.status >= 400]
    assert proxy.backends_of("initialize") != proxy.backends_of("notifications/initialized")
    assert set(proxy.backends_of("tools/call")) == {0, 1, 2}


async def test_a_dropped_call_resumes_on_another_replica_with_nothing_lost_or_repeated(replicas):
    prompt = "resume me on another replica please"
    with anyio.fail_after(60):
        async with behind_proxy(replicas) as proxy, httpx2.AsyncClient(headers=ALICE, timeout=30) as http:
            session = await RawSession(http, proxy.url).open()
            before: list[SseEvent] = []
            async with http.stream(
                "POST", proxy.url, headers=session.headers(), json=session.call(prompt)
            ) as r:
                async for event in sse_events(r):
                    before.append(event)
                    if progress_text(before):  # the priming event and the first text came: drop
                        break
            posted_on = proxy.served[-1].backend
            after: list[SseEvent] = []
            resume = session.headers(**{"Last-Event-ID": before[-1].id or ""})
            async with http.stream("GET", proxy.url, headers=resume) as r:
                assert r.status_code == 200
                after = [event async for event in sse_events(r)]
            resumed_on = proxy.served[-1].backend
    assert resumed_on != posted_on
    assert before[0].data == "" and before[0].retry == 1000  # the priming event: an id and a retry hint
    every = before + after
    assert all(e.id for e in every), "every event has an id"
    assert len({e.id for e in every}) == len(every), "no event twice"
    final = after[-1].message
    assert final["id"] == session.next_id and "result" in final
    answer = final["result"]["structuredContent"]["aiResponse"]
    assert answer == whole_answer(prompt)
    assert progress_text(every) == answer, "joined progress is the answer: no token lost or repeated"
    # and the ids are the stream's entries in Redis, in order, none skipped
    stream = replicas.redis.xrange(f"mcpq:session:{session.session_id}:events:{session.next_id}")
    assert [e.id.partition("@")[0] for e in every] == [f"{session.next_id}/{i.decode()}" for i, _ in stream]
    # a job's progress names the job and its event seq: `@<job>:<attempt>.<seq>`, seq rising
    job = final["result"]["structuredContent"]["jobId"]
    labels = [
        e.id.partition("@")[2]
        for e in every
        if e.data and e.message.get("method") == "notifications/progress"
    ]
    assert labels and all(label.startswith(f"{job}:") for label in labels), labels
    told = [(int(a), int(q)) for a, _, q in (label.rpartition(":")[2].partition(".") for label in labels)]
    assert told == sorted(told) and told[-1][0] == 1 and told[-1][1] > 0, told


async def test_bad_last_event_ids_and_another_tenants_key_get_4xx_on_every_replica(replicas):
    with anyio.fail_after(60):
        async with (
            behind_proxy(replicas) as proxy,
            httpx2.AsyncClient(headers=ALICE, timeout=30) as alice_http,
            httpx2.AsyncClient(headers=BOB, timeout=30) as bob_http,
        ):
            alice = await RawSession(alice_http, proxy.url).open()
            alice2 = await RawSession(alice_http, proxy.url).open()
            bob = await RawSession(bob_http, proxy.url).open()
            answer = await alice2.http.post(proxy.url, headers=alice2.headers(), json=alice2.call("hi"))
            foreign = next(e.id for e in _parse(answer.text) if e.id)  # an event of alice's other session
            statuses = {}
            for name, last_id in [
                ("junk", "junk"), ("no entry", "3/abc"), ("cursor", "_GET_stream/$"), ("unknown", "3/1-0"),
                ("foreign", foreign), ("huge", "9" * 5000 + "/1-0"),
            ]:  # fmt: skip
                got = await alice_http.get(proxy.url, headers=alice.headers(**{"Last-Event-ID": last_id}))
                statuses[name] = (got.status_code, got.json()["error"]["message"])
            refused = []
            for _ in range(3):  # bob's key with alice's session id, on each replica in turn
                got = await bob_http.post(
                    proxy.url, headers=alice.headers(), json=bob.request("tools/list", {})
                )
                refused.append((proxy.served[-1].backend, got.status_code))
            still = await alice_http.post(
                proxy.url, headers=alice.headers(), json=alice.request("tools/list", {})
            )
    assert {k: s for k, (s, _) in statuses.items()} == {
        "junk": 400, "no entry": 400, "cursor": 400, "unknown": 404, "foreign": 404, "huge": 404,
    }, statuses  # fmt: skip
    assert sorted(refused) == [(0, 404), (1, 404), (2, 404)]
    assert still.status_code == 200


def _parse(text: str) -> list[SseEvent]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        lines = dict(
            line.split(": ", 1) if ": " in line else (line.rstrip(":"), "") for line in block.splitlines()
        )
        if lines:
            events.append(SseEvent(lines.get("id"), lines.get("data", "")))
    return events


async def test_delete_on_one_replica_ends_the_session_on_all(replicas):
    with anyio.fail_after(60):
        async with behind_proxy(replicas) as proxy, httpx2.AsyncClient(headers=ALICE, timeout=30) as http:
            session = await RawSession(http, proxy.url).open()
            for _ in range(3):  # every replica now holds the session
                listed = await http.post(
                    proxy.url, headers=session.headers(), json=session.request("tools/list", {})
                )
                assert listed.status_code == 200
            deleted = await http.delete(proxy.url, headers=session.headers())
            after = []
            for _ in range(3):
                got = await http.post(
                    proxy.url, headers=session.headers(), json=session.request("tools/list", {})
                )
                after.append((proxy.served[-1].backend, got.status_code))
    assert deleted.status_code == 200
    assert sorted(after) == [(0, 404), (1, 404), (2, 404)]
    assert not replicas.redis.exists(f"mcpq:session:{session.session_id}")


async def test_junk_in_a_session_record_is_a_404_and_the_replicas_serve_on(replicas):
    with anyio.fail_after(60):
        async with behind_proxy(replicas) as proxy, httpx2.AsyncClient(headers=ALICE, timeout=30) as http:
            for junk in (b"not json", b'{"protocolVersion": 3}', json.dumps({
                "protocolVersion": LEGACY, "params": {"capabilities": 7}, "owner": "alice", "created": 1,
            }).encode()):  # fmt: skip
                sid = "f" * 32
                replicas.redis.set(f"mcpq:session:{sid}", junk)
                session = RawSession(http, proxy.url, sid)
                got = [await http.post(proxy.url, headers=session.headers(), json=session.request("ping", {}))
                       for _ in range(3)]  # fmt: skip
                assert [g.status_code for g in got] == [404, 404, 404], junk
            fresh = await RawSession(http, proxy.url).open()
            pong = await http.post(proxy.url, headers=fresh.headers(), json=fresh.request("ping", {}))
    assert pong.status_code == 200
    for m in replicas.messengers:
        assert "Traceback" not in m.log()


async def test_a_plain_get_hears_session_notifications_sent_from_another_replica(replicas):
    """The standalone stream on one replica; a task's status notifications from another."""
    with anyio.fail_after(60):
        async with behind_proxy(replicas) as proxy, httpx2.AsyncClient(headers=ALICE, timeout=30) as http:
            session = await RawSession(http, proxy.url).open()
            heard: list[dict] = []
            async with http.stream("GET", proxy.url, headers=session.headers()) as listening:
                assert listening.status_code == 200
                listened_on = proxy.served[-1].backend
                params = {"name": "send_message_to_ai", "arguments": {"message": "a task"}, "task": {}}
                created = await http.post(
                    proxy.url, headers=session.headers(), json=session.request("tools/call", params)
                )
                created_on = proxy.served[-1].backend
                assert created.status_code == 200, created.text
                async for event in sse_events(listening):
                    heard.append(event.message)
                    if event.message["params"].get("status") == "completed":
                        break
    assert listened_on != created_on
    assert {m["method"] for m in heard} == {"notifications/tasks/status"}
    assert heard[-1]["params"]["status"] == "completed"


def redis_connections_of(pid: int, redis) -> int:
    """How many of Redis's clients (CLIENT LIST) are sockets of process `pid` (by local port)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return sum(int(c["addr"].rsplit(":", 1)[1]) in ports for c in redis.client_list())


async def test_200_standalone_gets_on_one_replica_share_a_few_redis_connections_and_all_hear(
    replicas, redis_server
):
    """200 sessions (a TS SDK client each keeps a standalone GET open) on replica 0; a notification
    to each is stored by another writer (a replica's event store; the real cross-replica path is
    test_a_plain_get_hears_session_notifications_sent_from_another_replica). Replica 0 tails them all with one read: its Redis
    connections stay a small constant (one blocking read each took 200), and every GET hears."""
    listener = replicas.messengers[0]
    limits = httpx2.Limits(max_connections=300, max_keepalive_connections=300)
    heard: dict[str, list[dict]] = {}
    with anyio.fail_after(180):
        async with (
            httpx2.AsyncClient(headers=ALICE, timeout=120, limits=limits) as http,
            contextlib.AsyncExitStack() as listening,
            anyio.create_task_group() as tg,
        ):
            sessions = [await RawSession(http, listener.url).open() for _ in range(200)]
            before = redis_connections_of(listener.proc.pid, replicas.redis)
            for session in sessions:  # one at a time: the requests themselves need no more connections
                stream = await listening.enter_async_context(
                    http.stream("GET", listener.url, headers=session.headers())
                )
                assert stream.status_code == 200
                heard[session.session_id] = []
                tg.start_soon(hear, stream, heard[session.session_id])
            writer = connect(redis_server.url)  # another replica's event store, as its writes go
            note = jsonrpc_message_adapter.validate_python(
                {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": "job://x"}}
            )
            for session in sessions:
                store = SessionEvents(writer, session.session_id, SessionRegistry(writer, 60), "replica-x")
                await store.store_event("_GET_stream", note)
            await writer.aclose()
            await eventually(lambda: all(heard.values()), timeout=60)
            during = redis_connections_of(listener.proc.pid, replicas.redis)
            tg.cancel_scope.cancel()
    assert all(notes == [{"jsonrpc": "2.0", "method": "notifications/resources/updated",
                          "params": {"uri": "job://x"}}] for notes in heard.values())  # fmt: skip
    assert during - before <= 6, (before, during)  # the reader, its wake, COMMANDS_AT_ONCE; not 200
    assert "Traceback" not in listener.log()


async def hear(stream: httpx2.Response, notes: list[dict]) -> None:
    async for event in sse_events(stream):
        if event.data:
            notes.append(event.message)


async def test_the_replica_serving_a_call_dies_and_the_resumed_stream_says_so(replicas):
    """Last in this module: it kills replica 2. The job goes on; the resumed stream (on another
    replica) gets what the dead one stored, then an error for the call, not an endless wait."""
    prompt = " ".join(f"w{i}" for i in range(40))  # 55 tokens at 40 ms: the call is mid-stream at the kill
    victim = replicas.messengers[2]
    with anyio.fail_after(60):
        async with behind_proxy(replicas) as proxy, httpx2.AsyncClient(headers=ALICE, timeout=30) as http:
            session = await RawSession(http, proxy.url).open()
            before: list[SseEvent] = []
            call = session.call(prompt)
            async with http.stream("POST", victim.url, headers=session.headers(), json=call) as r:
                async for event in sse_events(r):
                    before.append(event)
                    if progress_text(before):
                        victim.proc.kill()  # mid-stream, without a goodbye
                        victim.proc.wait(10)
                        break
            resume = session.headers(**{"Last-Event-ID": before[-1].id or ""})
            async with http.stream("GET", proxy.url, headers=resume) as r:
                assert r.status_code == 200
                after = [event async for event in sse_events(r)]
            assert proxy.served[-1].backend != 2  # the dead one was skipped
    final = after[-1].message
    assert final["id"] == session.next_id and final["error"]["code"] == -32603
    assert "replica serving this call stopped" in final["error"]["message"]
    ids = [e.id for e in before + after if e.id]
    assert len(ids) == len(set(ids))
    job_id = replicas.redis.zrange("mcpq:jobs:recent", -1, -1)[0].decode()
    await eventually(lambda: replicas.redis.exists(f"arq:result:{job_id}"), 30)  # the job goes on to its end


async def test_a_python_client_whose_replica_dies_mid_call_resumes_elsewhere_and_is_told(replicas):
    """After the test above (replica 2 is gone): the replica serving a legacy client's call dies;
    the client's own transport resumes with Last-Event-ID through the proxy and the call ends with
    the error that says so, instead of hanging; the session goes on serving on the replica left."""
    prompt = " ".join(f"v{i}" for i in range(40))
    started = anyio.Event()

    async def on_progress(progress, total, message) -> None:
        started.set()

    with anyio.fail_after(60):
        async with behind_proxy(replicas) as proxy, legacy_client(proxy.url, ALICE) as client:
            failure: list[BaseException] = []

            async def ask() -> None:
                try:
                    await client.call_tool(
                        "send_message_to_ai", {"message": prompt}, progress_callback=on_progress
                    )
                except Exception as e:
                    failure.append(e)

            async with anyio.create_task_group() as tg:
                tg.start_soon(ask)
                await started.wait()
                serving = replicas.messengers[proxy.backends_of("tools/call")[-1]]
                serving.proc.kill()
                serving.proc.wait(10)
            resumed = [s for s in proxy.served if s.last_event_id and not s.last_event_id.startswith("_GET")]
            after = await client.call_tool("send_message_to_ai", {"message": "still here?"})
    assert len(failure) == 1 and "replica serving this call stopped" in str(failure[0]), failure
    assert resumed and all(s.status == 200 for s in resumed)
    assert after.structured_content["aiResponse"] == whole_answer("still here?")  # pyright: ignore
