"""2025-11-25 MCP sessions shared through Redis, so any replica serves any request and resumes any stream.

A session (`Mcp-Session-Id`) is a record in Redis, `mcpq:session:<sid>` (JSON: protocol version,
the client's raw initialize params, the tenant that opened it, when), written before the
initialize response leaves, expiring after MCP_SESSION_IDLE_SECONDS without a request (each request
refreshes it). A replica that gets a request for a session it does not hold rebuilds it from the
record (messenger.session_sdk.rehydrate); a session whose record is gone (DELETE on any replica,
expiry) answers 404 everywhere; another tenant's key gets the same 404.

Every SSE event of a session goes to a Redis stream of its own, `mcpq:session:<sid>:events:<stream>`
(`<stream>` is the JSON-RPC request id, or `_GET_stream` for the standalone stream), written by the
replica that serves the request whether or not the client is still connected. An event id is
`<stream>/<redis entry id>`. `GET /mcp` with `Last-Event-ID` on any replica replays what followed
that event and then tails the stream until the request's response (which it sends, then ends). A
GET without Last-Event-ID tails the session's standalone stream from now on, on whichever replica
it lands, so session-wide notifications reach the client wherever they were sent from.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp_types import JSONRPCError, JSONRPCMessage, JSONRPCResponse, jsonrpc_message_adapter
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION
from pydantic import ValidationError
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from messenger import session_post, session_sdk
from messenger.guards import MCP_BODY_MAX_BYTES, owner_name
from messenger.progress import JOB_ID as JOB_META
from messenger.progress import job_label as progress_label
from shared import damaged, keys
from shared.connection import Batch

log = logging.getLogger("messenger")

GET_STREAM = "_GET_stream"  # the SDK's stream key for the standalone GET stream
FROM_NOW = "$"  # a Last-Event-ID cursor of our own: the standalone stream from this moment on
EVENTS_KEPT = 10_000  # per stream (approximate trim): 500 s of progress at the batched 20 events/s
TAIL_BLOCK_MS = 2_000  # one blocking read; a GET quiet this long checks its session and writer
TAIL_QUEUE = 64  # batches a GET may be behind before it is left to read what it missed itself
COMMANDS_AT_ONCE = 4  # the waiting GETs' own Redis commands in flight at once (per process)
TAIL_SECONDS = 300  # a resumed or standalone GET ends after this; the client reconnects with its last id
ANSWERED_SECONDS = 300  # how long a request's events are kept after its response (to resume and read it)
RETRY_MS = 1_000  # the `retry:` hint on each stream's first (priming) event
# Each stored event's `w` field: this process's nonce and a count, rising in the order events go to
# Redis. redis-py sends a pipeline again when its connection drops after Redis ran it (the reply lost
# on the way: a failover, a blip), which stores those events twice; a reader delivers each `w` once.
_WRITER = uuid.uuid4().hex[:12]
_written = itertools.count(1)
MARKS_READ_BACK = 32  # entries up to a resumed cursor whose marks say what the client had (other writers')


def replica_id() -> str:
    """This process among the messenger replicas (host, pid, and a nonce against pid reuse)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


async def beat(redis, replica: str) -> None:
    """Keep `mcpq:replica:<id>` alive while this process serves: a resumed stream whose writer's
    key is gone knows no response will come."""
    while True:
        with contextlib.suppress(RedisError, OSError):
            await redis.set(keys.replica(replica), "1", ex=int(keys.HEARTBEAT_TTL_SECONDS))
        await anyio.sleep(keys.HEARTBEAT_SECONDS)


def wake_key(replica: str) -> str:
    """The stream a GET writes to when the reader of this replica's GETs must re-issue its read."""
    return keys.replica(replica) + ":wake"


@dataclass
class SessionRecord:
    protocol_version: str
    params: dict[str, Any]  # the client's initialize params: clientInfo, capabilities, protocolVersion
    owner: str | None  # the tenant that opened it; None when the server needs no key
    created: float

    def dumps(self) -> str:
        return json.dumps(
            {"protocolVersion": self.protocol_version, "params": self.params, "owner": self.owner,
             "created": self.created}
        )  # fmt: skip

    @classmethod
    def loads(cls, raw: bytes | str) -> SessionRecord | None:
        """The record, or None for anything this server did not write (junk in the key)."""
        try:
            data = json.loads(raw)
            record = cls(data["protocolVersion"], data["params"], data["owner"], float(data["created"]))
        except (ValueError, TypeError, KeyError):
            return None
        valid = (
            record.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS
            and isinstance(record.params, dict)
            and (record.owner is None or isinstance(record.owner, str))
        )
        return record if valid else None


class SessionRegistry:
    """The `mcpq:session:<sid>` records: one GETEX per request (read and refresh the idle TTL), in a
    pipeline with the other requests' and the sessions' events (one Batch a process)."""

    def __init__(self, redis, idle_seconds: float):
        self.redis = redis
        self.ttl = max(1, int(idle_seconds))
        self.batch = Batch.of(redis)

    async def create(self, session_id: str, record: SessionRecord) -> None:
        await self.redis.set(keys.session(session_id), record.dumps(), ex=self.ttl)

    async def touch(self, session_id: str) -> SessionRecord | None:
        key = keys.session(session_id)
        # a wrong-type key (damaged, written by hand) is that session unknown (404: the client opens
        # a new one), not Redis being away (503 for ever: the key has no TTL to end it)
        raw = await damaged.read(self.batch.run(("GETEX", key, "EX", self.ttl)), key, None)
        if raw is None:
            return None
        record = SessionRecord.loads(raw)
        if record is None:
            log.warning("session record %s is not one this server wrote: ignored", session_id[:12])
        return record

    async def exists(self, session_id: str) -> bool:
        return bool(await self.redis.exists(keys.session(session_id)))

    async def end(self, session_id: str) -> None:
        await self.redis.delete(keys.session(session_id))


def stream_key(session_id: str, stream_id: str) -> str:
    """The Redis stream of one request's events (a request id too long or odd for a key is hashed)."""
    if len(stream_id) > 100 or not stream_id.isprintable():
        stream_id = "h-" + hashlib.sha256(stream_id.encode()).hexdigest()[:32]
    return keys.session_events(session_id, stream_id)


# `<stream>/<entry>`, then for a job's progress `@<job id>:<attempt>.<seq>` (its last event relayed):
# the label tells a person (and a log) which job and where in it; resuming needs only the entry
EVENT_ID = re.compile(r"(?P<stream>.+)/(?P<entry>\d{1,20}-\d{1,20}|\$)(?:@(?P<label>.*))?", re.DOTALL)


def split_event_id(event_id: str) -> tuple[str, str] | None:
    """`<stream>/<entry id>[@<job label>]` as (stream, entry id); None for anything else."""
    found = EVENT_ID.fullmatch(event_id)
    if found is None:
        return None
    return found["stream"], found["entry"]


def job_label(message: JSONRPCMessage | None) -> str:
    """The job label (messenger.progress.job_label) of a message's `_meta`; '' for a message without."""
    params = getattr(message, "params", None)
    return progress_label(params.get("_meta") if isinstance(params, dict) else None)


class SessionEvents(EventStore):
    """One session's SSE events in Redis: what `Last-Event-ID` resumes on any replica.

    Each event is an XADD (trimmed to EVENTS_KEPT), plus an EXPIRE on a stream's first event, on its
    response (then ANSWERED_SECONDS), and when the TTL is half spent; every session of the process
    writes through one Batch, so an event costs a share of a pipeline, not a round trip.
    """

    def __init__(self, redis, session_id: str, registry: SessionRegistry, replica: str,
                 tails: Tails | None = None, batch: Batch | None = None):  # fmt: skip
        self.redis = redis
        self.session_id = session_id
        self.registry = registry
        self.replica = replica
        self.tails = tails or Tails(redis, wake_key(replica))  # the process's one, from SessionGate
        self.batch = batch or registry.batch  # the process's one, from SessionGate
        self.expiry_set: dict[str, float] = {}  # stream -> when its TTL was last set (this process writes it)
        self.dumped: tuple[JSONRPCMessage, str] | None = None  # the last message stored, and its JSON
        self.unstored: set[str] = set()  # streams whose last store failed (said once, not once an event)

    async def store_event(self, stream_id: str, message: JSONRPCMessage | None) -> str:
        body = message.model_dump_json(by_alias=True, exclude_unset=True) if message is not None else ""
        if message is not None:  # the SSE writer sends the same message next: it takes this JSON
            self.dumped = (message, body)  # (messenger.session_sdk._event_bytes, by identity)
        ending = isinstance(message, JSONRPCResponse | JSONRPCError)
        return await self.store_body(stream_id, body, job_label(message), ending)

    async def store_body(self, stream_id: str, body: str, label: str = "", ending: bool = False) -> str:
        """Store one event already in its JSON form."""
        return (await self.store_bodies(stream_id, [(body, label)], ending))[0]

    async def store_bodies(
        self, stream_id: str, events: list[tuple[str, str]], ending: bool = False
    ) -> list[str]:
        """Store events already in their JSON form, (body, label) each, in one Batch entry
        (messenger.session_sdk.RequestStream writes so): their event ids, in order."""
        return await self.stored_ids(stream_id, events, self.submit_bodies(stream_id, events, ending), ending)

    def submit_bodies(
        self, stream_id: str, events: list[tuple[str, str]], ending: bool = False
    ) -> asyncio.Future[list[Any]]:
        """store_bodies' first half, for a caller that stores many streams' events in one pipeline
        before it waits (messenger.progress's tick): the events in the Batch's next pipeline, now;
        the future of Redis's replies, which `stored_ids` makes their ids."""
        key = stream_key(self.session_id, stream_id)
        now = time.monotonic()
        expire = None
        if ending:  # answered: kept only as long as a client that lost the answer may come back for it
            expire = min(self.registry.ttl, ANSWERED_SECONDS)
            self.expiry_set.pop(stream_id, None)
        elif now - self.expiry_set.get(stream_id, -1e9) > self.registry.ttl / 2:
            expire = self.registry.ttl
            self.expiry_set[stream_id] = now
        commands = [
            ("XADD", key, "MAXLEN", "~", EVENTS_KEPT, "*", "m", body, "r", self.replica, "w", f"{_WRITER}:{next(_written)}")
            for body, _ in events
        ]  # fmt: skip
        return self.batch.send_each(*commands, *([("EXPIRE", key, expire)] if expire is not None else []))

    async def stored_ids(
        self,
        stream_id: str,
        events: list[tuple[str, str]],
        stored: asyncio.Future[list[Any]],
        ending: bool = False,
    ) -> list[str]:
        """store_bodies' second half: the events' ids from Redis's replies to `submit_bodies` (`stored`;
        a failed pipeline fails each); a refused store is said once a run of them a stream."""
        try:
            replies: list[Any] = await stored
        except Exception as e:
            replies = [e] * len(events)
        entries, failed = [], None
        for reply in replies[: len(events)]:
            if isinstance(reply, BaseException):  # the live stream goes on; only resuming from here is lost
                failed = failed or reply
                reply = "0-0"  # names no entry: a Last-Event-ID of it gets 404
            entries.append(_text(reply))
        if failed is None:
            self.unstored.discard(stream_id)
        elif stream_id not in self.unstored:  # said once a run of failures, not once an event (a token)
            self.unstored.add(stream_id)
            log.warning(
                "session %s: an event not stored (Redis: %s), nor those after it until one is",
                self.session_id[:12], type(failed).__name__,
            )  # fmt: skip
        if ending:
            self.unstored.discard(stream_id)
        return [f"{stream_id}/{entry}{label}" for entry, (_, label) in zip(entries, events, strict=True)]

    async def replay_events_after(self, last_event_id: str, send_callback: EventCallback) -> None:
        """Send what followed `last_event_id`, then what comes, until the response (or a reason to stop).

        Returns None always: the SDK then opens no local live stream for it (nothing on this replica
        would feed one); a client whose GET ends without the response reconnects with its last id."""
        parts = split_event_id(last_event_id)
        if parts is None:  # SessionGate checked it; a caller that did not gets an empty stream
            return None
        stream_id, cursor = parts
        key = stream_key(self.session_id, stream_id)
        with contextlib.suppress(RedisError, OSError):  # Redis away: the stream ends, the client reconnects
            await Tail(self, stream_id, key, send_callback).run(cursor)
        return None


class Tails:
    """One blocking XREAD per messenger process for every resumed or standalone GET it serves.

    Why: a blocking XREAD holds its Redis connection for the whole block, so one read per GET took a
    connection per waiting client (a TS SDK client keeps a standalone GET open per session: 1,000
    clients were 1,000 connections, and a pool that could run dry). Here one task reads every stream
    a local GET waits on with ONE `XREAD BLOCK` over all their keys and hands each batch to the GETs
    waiting on it. A GET that waits on a key the read in flight lacks makes the reader re-issue it by
    an XADD to this process's wake stream, which every read includes (plain stream commands: fakeredis
    has no CLIENT UNBLOCK, and cancelling a read in flight costs a reconnect); the block is capped at
    TAIL_BLOCK_MS anyway. Each GET's queue is bounded: a GET that falls behind (a slow client) is
    marked lagging, its batches are dropped, and it reads what it missed from Redis itself, so it
    never stalls the reader or the others. The GETs' own short commands (catch-up reads, the checks
    after a quiet spell) pass a semaphore of COMMANDS_AT_ONCE, so a thousand GETs whose checks fall
    due together do not open a thousand connections either.
    """

    def __init__(self, redis, wake_key: str):
        self.redis = redis
        self.wake_key = wake_key
        self.wake_cursor = "0-0"
        self.cursors: dict[str, str] = {}  # stream key -> the entry id the reader has read up to
        self.waiting: dict[str, set[Waiting]] = {}
        self.reading: frozenset[str] = frozenset()  # the keys of the read in flight
        self.woken = False  # a wake is on its way for the read in flight
        self.reader: asyncio.Task[None] | None = None
        self.commands = asyncio.Semaphore(COMMANDS_AT_ONCE)

    async def command(self, awaitable):
        """A GET's own Redis command, at most COMMANDS_AT_ONCE of them at a time in this process."""
        async with self.commands:
            return await awaitable

    @contextlib.asynccontextmanager
    async def watch(self, key: str, cursor: str) -> AsyncIterator[Waiting]:
        """Batches of `key`'s entries from about `cursor` on (the caller drops what it has)."""
        waiting = Waiting()
        self.waiting.setdefault(key, set()).add(waiting)
        self.cursors.setdefault(key, cursor)
        try:
            if self.reader is None or self.reader.done():
                self.reader = asyncio.create_task(self._read(), name="session-tails")
            if key not in self.reading:
                await self._wake()
            yield waiting
        finally:
            others = self.waiting.get(key, set())
            others.discard(waiting)
            if not others:
                self.waiting.pop(key, None)
                self.cursors.pop(key, None)

    async def _wake(self) -> None:
        if self.woken:
            return
        self.woken = True
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(self.wake_key, {"w": ""}, maxlen=10, approximate=False)
        pipe.expire(self.wake_key, 60)
        with contextlib.suppress(RedisError, OSError):  # the capped block re-issues the read anyway
            await self.command(pipe.execute())

    async def _read(self) -> None:
        backoff = 0.05
        while self.waiting:
            self.reading, self.woken = frozenset(self.cursors), False
            try:
                streams = {self.wake_key: self.wake_cursor, **self.cursors}
                read = await self.redis.xread(streams, count=500, block=TAIL_BLOCK_MS)
                backoff = 0.05
            except (RedisError, OSError) as e:  # the GETs' own checks end them if Redis stays away
                log.warning("session streams: a read failed (%s); retrying", type(e).__name__)
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            for raw_key, entries in read or []:
                key = _text(raw_key)
                if not entries:
                    continue
                last = _text(entries[-1][0])
                if key == self.wake_key:
                    self.wake_cursor = last
                elif key in self.cursors:
                    self.cursors[key] = last
                    for waiting in list(self.waiting.get(key, ())):
                        waiting.offer(entries)
        self.reading = frozenset()


class Waiting:
    """One GET's batches from the reader; bounded, and `lagging` once one had to be dropped."""

    def __init__(self):
        self.batches: asyncio.Queue[list] = asyncio.Queue(TAIL_QUEUE)
        self.lagging = False

    def offer(self, entries: list) -> None:
        try:
            self.batches.put_nowait(entries)
        except asyncio.QueueFull:  # the GET reads what it missed from Redis when it catches up
            self.lagging = True


class Tail:
    """One resumed (or standalone) GET: the stream's entries after a cursor, then new ones as they come."""

    def __init__(self, store: SessionEvents, stream_id: str, key: str, send: EventCallback):
        self.store = store
        self.tails = store.tails
        self.redis = store.redis
        self.stream_id = stream_id
        self.key = key
        self.send = send
        self.cursor = "0-0"  # the latest entry handled
        self.writer: str | None = None  # the replica that wrote the latest entry
        self.job_id: str | None = None  # the job the stream's progress is about, once seen
        self.written: dict[str, int] = {}  # writer nonce -> the highest count delivered (see _WRITER)

    async def run(self, cursor: str) -> None:
        if cursor == FROM_NOW:
            latest = await self.tails.command(self.redis.xrevrange(self.key, "+", "-", count=1))
            cursor = _text(latest[0][0]) if latest else "0-0"
        elif await self._had(cursor) and self.stream_id != GET_STREAM:
            return  # the client had the response already: nothing follows
        self.cursor = cursor
        deadline = time.monotonic() + TAIL_SECONDS
        async with self.tails.watch(self.key, cursor) as waiting:
            if await self._catch_up():  # what came before the reader had this GET's key
                return
            while time.monotonic() < deadline:
                entries = None
                with anyio.move_on_after(TAIL_BLOCK_MS / 1000):
                    entries = await waiting.batches.get()
                if entries is None:
                    if await self._abandoned():
                        return
                    continue
                if await self._take(entries):
                    return
                if waiting.lagging and waiting.batches.empty():
                    waiting.lagging = False
                    if await self._catch_up():
                        return

    async def _catch_up(self) -> bool:
        """Read (without blocking) what followed the cursor; True once the response was among it."""
        while True:
            read = await self.tails.command(self.redis.xread({self.key: self.cursor}, count=500))
            entries = read[0][1] if read else []
            if not entries:
                return False
            if await self._take(entries):
                return True

    async def _take(self, entries: list) -> bool:
        """Deliver the entries after the cursor (a batch may repeat ones a catch-up sent)."""
        for entry_id, fields in entries:
            entry = _text(entry_id)
            if _order(entry) <= _order(self.cursor):
                continue
            self.cursor = entry
            if await self._deliver(entry, fields):
                return True
        return False

    async def _deliver(self, entry_id: str, fields: dict) -> bool:
        """Send one entry; True once it was the stream's response (the end)."""
        if self._again(fields.get(b"w")):
            return False
        self.writer = _text(fields.get(b"r", b"")) or self.writer
        body = fields.get(b"m", b"")
        if not body:  # a priming event: an id for the client, nothing to send again
            return False
        try:
            message = jsonrpc_message_adapter.validate_json(body)
        except ValidationError:  # junk written into the stream by something else: skipped
            log.warning(
                "session %s: an event that is no JSON-RPC message skipped", self.store.session_id[:12]
            )
            return False
        self.job_id = _job_of(message) or self.job_id
        await self.send(EventMessage(message, f"{self.stream_id}/{entry_id}{job_label(message)}"))
        return isinstance(message, JSONRPCResponse | JSONRPCError)

    def _again(self, mark: bytes | None) -> bool:
        """The entry is a second copy of one delivered already (a pipeline redis-py sent again)."""
        writer, _, count = (mark or b"").decode(errors="replace").partition(":")
        if not count.isdigit():  # no mark (written by an older version, or by hand): delivered
            return False
        if int(count) <= self.written.get(writer, 0):
            return True
        self.written[writer] = int(count)
        return False

    async def _had(self, cursor: str) -> bool:
        """What the client had, up to its last entry: each writer's mark there (a second copy of an
        event it had follows that event, after the cursor too, and is not sent again); True when that
        entry was the response."""
        entries = await self.tails.command(self.redis.xrevrange(self.key, cursor, "-", count=MARKS_READ_BACK))
        for _, fields in reversed(entries):
            self._again(fields.get(b"w"))
        body = entries[0][1].get(b"m", b"") if entries and _text(entries[0][0]) == cursor else b""
        return bool(body) and _is_end(body)

    async def _abandoned(self) -> bool:
        """After a quiet read: end if the session ended; if the replica writing a request's events
        stopped, answer the request with an error that names its job (the job itself goes on)."""
        if not await self.tails.command(self.store.registry.exists(self.store.session_id)):
            return True
        if self.stream_id == GET_STREAM:
            return False
        if self.writer is None:  # nothing came since the client's last event: who wrote that one
            latest = await self.tails.command(self.redis.xrevrange(self.key, "+", "-", count=1))
            self.writer = _text(latest[0][1].get(b"r", b"")) if latest else None
        if not self.writer:
            return False
        if await self.tails.command(self.redis.exists(keys.replica(self.writer))):
            return False
        self.job_id = self.job_id or await self._job_in_stream()
        job = f"; its job {self.job_id} goes on: get_job or wait_for_job answers it" if self.job_id else ""
        error = {"code": -32603, "message": f"the messenger replica serving this call stopped{job}"}
        if self.job_id:
            error["data"] = {"jobId": self.job_id}
        request_id: int | str = int(self.stream_id) if self.stream_id.isdigit() else self.stream_id
        message = JSONRPCError.model_validate({"jsonrpc": "2.0", "id": request_id, "error": error})
        await self.send(EventMessage(message, None))
        return True

    async def _job_in_stream(self) -> str | None:
        """The job named by a progress notification the client saw before this GET, if any."""
        for _, fields in await self.tails.command(self.redis.xrevrange(self.key, "+", "-", count=200)):
            with contextlib.suppress(ValidationError):
                body = fields.get(b"m", b"")
                job = _job_of(jsonrpc_message_adapter.validate_json(body)) if body else None
                if job:
                    return job
        return None


def _is_end(body: bytes) -> bool:
    with contextlib.suppress(ValidationError):
        return isinstance(jsonrpc_message_adapter.validate_json(body), JSONRPCResponse | JSONRPCError)
    return False


def _job_of(message: JSONRPCMessage) -> str | None:
    params = getattr(message, "params", None)
    meta = params.get("_meta") if isinstance(params, dict) else None
    job = meta.get(JOB_META) if isinstance(meta, dict) else None
    return job if isinstance(job, str) else None


def _order(entry_id: str) -> tuple[int, int]:
    milliseconds, _, seq = entry_id.partition("-")
    return int(milliseconds), int(seq or 0)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _header(scope: Scope, name: bytes) -> str | None:
    return next((v.decode("latin-1") for k, v in scope["headers"] if k.lower() == name), None)


def _negotiated(params: dict[str, Any]) -> str:
    """The protocol version the SDK answers an initialize with (its own rule)."""
    asked = params.get("protocolVersion")
    return asked if asked in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE_VERSION


async def refuse(send: Send, status: int, message: str) -> None:
    """A JSON-RPC error without an id, as the SDK answers a session it does not know."""
    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class SessionGate:
    """The ASGI layer in front of the SDK's /mcp that makes a 2025-11-25 session any replica's.

    Per request with an `Mcp-Session-Id`: read (and refresh) the record, 404 unless it exists and
    belongs to the caller's tenant, rebuild the session here if this replica does not hold it;
    check a `Last-Event-ID` (400 malformed, 404 not an event of this session); hand a POST to the
    session's dispatcher directly where messenger.session_post can, as the SDK would; after a DELETE the
    SDK accepted, delete the record so every replica stops serving it. An initialize (a POST with
    no session) has its record written before the response, and so the session id, leaves.
    2026-07-28 requests (no sessions) pass straight through.
    """

    def __init__(self, app: ASGIApp, manager: StreamableHTTPSessionManager, redis, idle_seconds: float,
                 replica: str, path: str = "/mcp"):  # fmt: skip
        self.app = app
        self.manager = manager
        self.redis = redis
        self.registry = SessionRegistry(redis, idle_seconds)
        self.replica = replica
        self.path = path
        self.rehydrating = anyio.Lock()
        self.tails = Tails(redis, wake_key(replica))
        session_sdk.give_each_session_a_store(manager, self.store_for)
        session_sdk.answer_posts_lightly()
        session_post.watch_dispatchers()

    def store_for(self, session_id: str) -> SessionEvents:
        return SessionEvents(self.redis, session_id, self.registry, self.replica, self.tails)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or _modern(scope):
            await self.app(scope, receive, send)
            return
        session_id = _header(scope, b"mcp-session-id")
        if session_id is None:
            await (self._opening if scope["method"] == "POST" else self.app)(scope, receive, send)
            return
        try:
            refusal = await self._admit(scope, session_id)
            if refusal is None and scope["method"] == "GET":
                scope, refusal = await self._resume(scope, session_id)
        except (RedisError, OSError) as e:
            log.warning("sessions: Redis refused or is unreachable (%s)", type(e).__name__)
            refusal = 503, "the session store (Redis) is unavailable: retry shortly"
        if refusal is not None:
            await refuse(send, *refusal)
            return
        scope[session_sdk.MANAGER_SCOPE_KEY] = self.manager  # RequestStream writes this session's events
        send = self._after(scope, session_id, send)
        if isinstance(send, session_sdk.Wire):  # a POST: to the session's dispatcher from here if it can
            passed = await session_post.post(
                self.manager, scope, receive, send, session_id, MCP_BODY_MAX_BYTES
            )
            if passed is None:
                return
            receive = passed
        await self.app(scope, receive, send)

    async def _admit(self, scope: Scope, session_id: str) -> tuple[int, str] | None:
        record = await self.registry.touch(session_id)
        if record is None or record.owner != owner_name(scope):
            if record is None:  # ended on another replica, or expired: this one forgets it too
                await session_sdk.discard(self.manager, session_id)
            return 404, "Session not found"
        if session_sdk.is_local(self.manager, session_id):
            return None
        async with self.rehydrating:
            if session_sdk.is_local(self.manager, session_id):
                return None
            try:
                await session_sdk.rehydrate(
                    self.manager, session_id, record.protocol_version, record.params, scope.get("user"),
                    self.store_for(session_id),
                )  # fmt: skip
            except ValidationError:
                log.warning("session record %s holds no valid initialize params: ignored", session_id[:12])
                return 404, "Session not found"
        log.info("serving session %s opened on another replica", session_id[:12])
        return None

    async def _resume(self, scope: Scope, session_id: str) -> tuple[Scope, tuple[int, str] | None]:
        """A GET: check its Last-Event-ID, or give it one that tails the standalone stream from now."""
        last = _header(scope, b"last-event-id")
        if last is None:  # from now: fixed before the response starts, so nothing sent after it is missed
            latest = await self.redis.xrevrange(stream_key(session_id, GET_STREAM), "+", "-", count=1)
            cursor = f"{GET_STREAM}/{_text(latest[0][0]) if latest else '0-0'}".encode()
            return {**scope, "headers": [*scope["headers"], (b"last-event-id", cursor)]}, None
        parts = split_event_id(last)
        if parts is None or parts[1] == FROM_NOW:
            return scope, (400, "Last-Event-ID is not an event id of this server (<stream>/<entry id>)")
        stream_id, entry = parts
        if not await self.redis.xrange(stream_key(session_id, stream_id), entry, entry, count=1):
            return scope, (404, "Last-Event-ID names no event of this session (unknown, or expired)")
        return scope, None

    def _after(self, scope: Scope, session_id: str, send: Send) -> Send:
        if scope["method"] == "POST":  # its notifications may go to the socket directly
            wire = scope[session_sdk.WIRE_SCOPE_KEY] = session_sdk.Wire(send)
            return wire
        if scope["method"] != "DELETE":
            return send

        async def ended(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 200:
                try:
                    await self.registry.end(session_id)  # every replica answers 404 from now on
                except (RedisError, OSError) as e:
                    log.warning("session %s ended here only (Redis: %s)", session_id[:12], type(e).__name__)
            await send(message)

        return ended

    async def _opening(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A POST without a session: if it is an initialize the SDK accepts, record the session
        before its id reaches the client (whose next request may go to another replica)."""
        body = bytearray()

        async def tee() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                body.extend(message.get("body", b""))
            return message

        async def record_first(message: Message) -> None:
            if message["type"] == "http.response.start":
                session_id = next(
                    (v.decode("latin-1") for k, v in message["headers"] if k.lower() == b"mcp-session-id"),
                    None,
                )
                if session_id is not None and message["status"] < 400:
                    await self._record(session_id, bytes(body), scope)
            await send(message)

        await self.app(scope, tee, record_first)

    async def _record(self, session_id: str, body: bytes, scope: Scope) -> None:
        try:
            request = json.loads(body)
        except ValueError:
            return
        params = request.get("params") if isinstance(request, dict) else None
        if not isinstance(params, dict) or request.get("method") != "initialize":
            return
        record = SessionRecord(_negotiated(params), params, owner_name(scope), time.time())
        try:
            await self.registry.create(session_id, record)
        except RedisError as e:  # the session still works on this replica
            log.warning("session %s not shared (Redis: %s)", session_id[:12], type(e).__name__)


def _modern(scope: Scope) -> bool:
    version = _header(scope, b"mcp-protocol-version")
    return version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS
