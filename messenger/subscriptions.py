"""`resources/subscribe` on `job://<id>` (2025-11-25): `notifications/resources/updated` when the job
starts, restarts on another worker, and ends.

Each subscription is one task on this replica following the job through the event hub (one shared
Redis subscription), and the notification goes out on the MCP session's standalone stream (streamable
HTTP's GET, stdio's pipe). A caller may subscribe only to its own jobs; another tenant's job is
answered exactly as one that does not exist. The 2026-07-28 era has no `resources/subscribe`.

`MCPServer` has no public way to serve these two methods, so `serve_subscriptions` reaches below it
once (`_lowlevel_server.add_request_handler`), pinned by tests/messenger/test_subscriptions.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.session import ServerSession
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    EmptyResult,
    SubscribeRequestParams,
    UnsubscribeRequestParams,
)
from redis.exceptions import RedisError

from messenger.calls import current_tenant, unavailable
from messenger.runtime import Runtime
from shared import damaged, keys
from shared.errors import McpQueueError
from shared.events import Event
from shared.models import FINAL_STATUSES, JobResult
from shared.scripts import Arg, Key, script

log = logging.getLogger("messenger.subscriptions")

JOB_SCHEME = "job://"
PER_SESSION = 100  # a session's subscriptions at once: each follows a job
SESSION_HEADER = "mcp-session-id"
LOCAL = "local"  # stdio or in-memory: one session per process, kept here only
SSE_SESSION = "sse-"  # + SSE's session_id (no session record in Redis: an SSE session is one replica's)


@script("""
if redis.call('EXISTS', mine) == 1 then  -- sent again, its reply lost: the first run added it
  return {1, redis.call('SCARD', subscriptions)}
end
local added = redis.call('SADD', subscriptions, uri)
if added == 1 then redis.call('SET', mine, '1', 'EX', mine_ttl) end
local count = redis.call('SCARD', subscriptions)
redis.call('EXPIRE', subscriptions, ttl)
return {added, count}
""")
async def add_subscription(
    redis: Any, *, subscriptions: Key, mine: Key, uri: Arg[str], ttl: Arg[int], mine_ttl: Arg[int]
) -> list[int]:
    """[1 when the session's set gains `uri` with this call, the set's size]. redis-py sends a command
    again when its connection drops with the reply on the way; `mine` (this call's own key) tells that
    second run the URI is this call's, where the SADD alone would answer 0 ("another replica follows
    it") and the subscription would follow nothing."""
    ...


class JobSubscriptions:
    """The job subscriptions of this replica's sessions: (session, uri) -> the task that follows it."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self._following: dict[tuple[str, str], asyncio.Task[None]] = {}

    async def subscribe(self, ctx: ServerRequestContext[Any], params: SubscribeRequestParams) -> EmptyResult:
        uri = str(params.uri)
        job_id = _job_id(uri)
        reader = current_tenant(self.runtime.settings).reader
        try:
            snapshot = await self.runtime.jobs.get(job_id, reader)
        except McpQueueError as e:  # unknown, someone else's, not a job id: all read the same
            raise MCPError(code=INVALID_PARAMS, message=e.message, data={"uri": uri}) from None
        except (RedisError, OSError) as e:
            raise MCPError(
                code=INTERNAL_ERROR, message=unavailable(e, self.runtime.settings).message
            ) from None
        session = _session_key(ctx)
        key = (session, uri)
        if snapshot.status in FINAL_STATUSES:
            return EmptyResult()  # it will not change any more
        if key in self._following:
            return EmptyResult()  # twice is once
        if session == LOCAL:
            full = sum(1 for s, _ in self._following if s == session) >= PER_SESSION
        else:  # the set in Redis is the session's on every replica: its cap, and who follows
            added, count = await self._add(session, uri)
            if not added:
                return EmptyResult()  # another replica follows it: twice is once
            full = count > PER_SESSION
            if full:
                await self._shared(session, "srem", uri)
        if full:
            raise MCPError(
                code=INVALID_PARAMS,
                message=f"this session already follows {PER_SESSION} jobs; unsubscribe from one first",
            )
        task = asyncio.create_task(
            self._follow(ctx.session, key, snapshot, reader), name=f"subscription {uri}"
        )
        self._following[key] = task
        task.add_done_callback(lambda _: self._following.pop(key, None))
        return EmptyResult()

    async def unsubscribe(
        self, ctx: ServerRequestContext[Any], params: UnsubscribeRequestParams
    ) -> EmptyResult:
        key = (_session_key(ctx), str(params.uri))
        if key[0] != LOCAL:
            await self._shared(key[0], "srem", key[1])  # the replica following it stops too
        task = self._following.pop(key, None)
        if task is not None:
            task.cancel()
        return EmptyResult()

    @property
    def following(self) -> list[asyncio.Task[None]]:
        """The tasks following a subscribed job on this replica."""
        return list(self._following.values())

    async def _shared(self, session: str, command: str, uri: str) -> int:
        """The session's subscriptions in Redis, so an unsubscribe on any replica counts."""
        name = keys.subscriptions(session)
        try:
            async with self.runtime.redis.pipeline(transaction=True) as pipe:
                getattr(pipe, command)(name, uri)
                pipe.expire(name, keys.SUBSCRIPTIONS_TTL_SECONDS)
                return (await pipe.execute())[0]
        except (RedisError, OSError) as e:
            raise MCPError(
                code=INTERNAL_ERROR, message=unavailable(e, self.runtime.settings).message
            ) from None

    async def _add(self, session: str, uri: str) -> tuple[bool, int]:
        """SADD the URI to the session's set: whether it is new there, and the set's size."""
        try:
            added, count = await add_subscription(
                self.runtime.redis, subscriptions=keys.subscriptions(session),
                mine=keys.subscribed(uuid.uuid4().hex), uri=uri, ttl=keys.SUBSCRIPTIONS_TTL_SECONDS,
                mine_ttl=keys.SUBSCRIBED_TTL_SECONDS,
            )  # fmt: skip
        except (RedisError, OSError) as e:
            raise MCPError(
                code=INTERNAL_ERROR, message=unavailable(e, self.runtime.settings).message
            ) from None
        return bool(added), int(count)

    async def _still_subscribed(self, session: str, uri: str) -> bool:
        """Not unsubscribed here (a cancel Python 3.11's asyncio.wait_for may have swallowed, when it
        lands as the hub's subscribe confirmation does) nor on another replica, and, on streamable
        HTTP, the session not ended (DELETE on any replica, or expired: its record is gone)."""
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            return False
        if session == LOCAL:
            return True
        name = keys.subscriptions(session)
        subscribed = await damaged.read(self.runtime.redis.sismember(name, uri), name, True)  # pyright: ignore[reportArgumentType]
        if session.startswith(SSE_SESSION):
            return bool(subscribed)
        return bool(subscribed) and bool(await self.runtime.redis.exists(keys.session(session)))

    async def _follow(
        self, session: ServerSession, key: tuple[str, str], snapshot: JobResult, reader: str | None
    ) -> None:
        """Notify on every new attempt's start and once at the end, while still subscribed."""
        started = snapshot.attempt if snapshot.status == "running" else 0

        async def notify() -> None:
            if not await self._still_subscribed(*key):
                raise asyncio.CancelledError
            await session.send_resource_updated(key[1])

        async def on_event(event: Event | None, _: Any) -> None:
            nonlocal started
            if event is not None and event.type == "start" and event.attempt > started:
                started = event.attempt
                await notify()

        try:
            await self.runtime.jobs.wait(snapshot.job_id, timeout=None, on_event=on_event, reader=reader)
            await notify()
        except McpQueueError:  # lost or gone: a read now says so
            with contextlib.suppress(Exception):
                await notify()
        except (RedisError, OSError) as e:
            log.warning("subscription to %s ended: Redis failed (%s)", key[1], type(e).__name__)
        except Exception as e:  # the session's stream is gone: nobody to tell
            log.info("subscription to %s ended: %s", key[1], type(e).__name__)
        finally:  # nobody follows it any more: it leaves the session's set (and cap)
            if key[0] != LOCAL:
                with contextlib.suppress(RedisError, OSError):
                    await self.runtime.redis.srem(keys.subscriptions(key[0]), key[1])  # pyright: ignore[reportGeneralTypeIssues]


def _job_id(uri: str) -> str:
    if not uri.startswith(JOB_SCHEME) or len(uri) > 200:
        raise MCPError(
            code=INVALID_PARAMS,
            message=f"only job://<id> resources can be subscribed to, not {uri[:80]!r}",
            data={"uri": uri[:200]},
        )
    return uri.removeprefix(JOB_SCHEME)


def _session_key(ctx: ServerRequestContext[Any]) -> str:
    """Whose subscription: the MCP session id over HTTP; stdio and in-memory have one session."""
    request = ctx.request
    headers = getattr(request, "headers", None)
    session = headers.get(SESSION_HEADER) if headers is not None else None
    if session is None and request is not None:
        sse = getattr(request, "query_params", {}).get("session_id")  # SSE's /messages/
        session = SSE_SESSION + sse if sse else None
    return session or LOCAL


def serve_subscriptions(mcp: MCPServer, runtime: Runtime) -> JobSubscriptions:
    """Serve resources/subscribe and resources/unsubscribe (2025-11-25 only: the 2026-07-28 wire has
    neither method), which also makes that era advertise `resources.subscribe: true`."""
    subscriptions = JobSubscriptions(runtime)
    server = mcp._lowlevel_server  # pyright: ignore[reportPrivateUsage]
    server.add_request_handler("resources/subscribe", SubscribeRequestParams, subscriptions.subscribe)
    server.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, subscriptions.unsubscribe)
    return subscriptions
