"""The dashboard's live stream (`GET /dashboard/events`), served by sse-starlette: once a second a
`snapshot` (messenger.dashboard.views), and between snapshots a `text` event for each new token of
a job in flight, carrying that job's whole text so far (idempotent: a late or repeated event cannot
garble the page).

sse-starlette tells every stream when the server is told to stop (SIGTERM, Ctrl-C); the stream then
ends at once, cleanly, so an open tab never holds up a shutdown (a hand-written StreamingResponse
did: uvicorn waited for it for ever, and docker compose had to SIGKILL the messenger).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator

import anyio
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse, ServerSentEvent

from messenger.calls import unavailable
from messenger.collector import Transcript, follow_events
from messenger.dashboard.views import TEXT_SHOWN, snapshot
from messenger.runtime import Runtime

SNAPSHOT_SECONDS = 1.0  # how often the whole picture is re-read from Redis
FOLLOWED_MAX = 20  # jobs in flight whose tokens are streamed live, per open page
RECONNECT_MS = 2000  # the browser's wait before it reconnects a dropped stream
SEND_TIMEOUT_SECONDS = 30  # a page that reads nothing for this long is dropped
STOP_GRACE_SECONDS = 2  # on shutdown, for a stream busy reading Redis to end before it is cut
STOP = {"job_id": ""}  # put into the text queue when the server stops


def response(runtime: Runtime) -> EventSourceResponse:
    stopping = anyio.Event()
    return EventSourceResponse(
        event_stream(runtime, stopping), ping=15, send_timeout=SEND_TIMEOUT_SECONDS,
        headers={"cache-control": "no-store"}, shutdown_event=stopping, shutdown_grace_period=STOP_GRACE_SECONDS,
    )  # fmt: skip


async def event_stream(
    runtime: Runtime, stopping: anyio.Event | None = None
) -> AsyncIterator[ServerSentEvent]:
    """`snapshot` once a second; `text` for each token of a job in flight. Ends when the page closes
    or, at once, when the server stops (`stopping`)."""
    texts: asyncio.Queue[dict] = asyncio.Queue()
    followed: dict[str, asyncio.Task] = {}
    if stopping is not None:
        followed[""] = asyncio.create_task(_stop_when(stopping, texts))
    try:
        yield ServerSentEvent(comment="mcp-queue", retry=RECONNECT_MS)
        while True:
            try:
                shot = await snapshot(runtime)
            except (RedisError, OSError) as e:
                yield sse("problem", {"error": unavailable(e, runtime.settings).message})
            else:
                yield sse("snapshot", shot)
                for job in shot["in_flight"]:
                    if job["job_id"] not in followed and len(followed) < FOLLOWED_MAX:
                        followed[job["job_id"]] = asyncio.create_task(follow(runtime, job["job_id"], texts))
            for job_id in [j for j, task in followed.items() if task.done() and j]:
                del followed[job_id]
            async for update in _texts_until(texts, time.monotonic() + SNAPSHOT_SECONDS):
                if update is STOP:
                    return
                yield sse("text", update)
    finally:
        for task in followed.values():
            task.cancel()


async def _texts_until(texts: asyncio.Queue[dict], deadline: float) -> AsyncIterator[dict]:
    """Text updates as they come until `deadline`; only each job's newest is worth sending."""
    while (left := deadline - time.monotonic()) > 0:
        try:
            async with asyncio.timeout(left):
                latest = {(u := await texts.get())["job_id"]: u}
        except TimeoutError:
            return
        while not texts.empty():
            u = texts.get_nowait()
            latest[u["job_id"]] = u
        for update in latest.values():
            yield update


async def _stop_when(stopping: anyio.Event, texts: asyncio.Queue[dict]) -> None:
    await stopping.wait()
    texts.put_nowait(STOP)


async def follow(runtime: Runtime, job_id: str, out: asyncio.Queue) -> None:
    """Put a job's whole text so far into `out` after each of its events, until it ends."""
    transcript = Transcript(job_id)
    with contextlib.suppress(RedisError, OSError, TimeoutError):
        async with runtime.hub.follow(job_id) as live:
            async for event in follow_events(runtime.redis, transcript, live):
                if event is not None:
                    out.put_nowait(
                        {"job_id": job_id, "status": transcript.status, "text": transcript.text[-TEXT_SHOWN:],
                         "tokens": transcript.tokens, "worker_id": transcript.worker_id}
                    )  # fmt: skip


def sse(event: str, data: dict) -> ServerSentEvent:
    return ServerSentEvent(event=event, data=json.dumps(data, separators=(",", ":")))
