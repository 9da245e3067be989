"""What both protocol eras' task handling shares: creating a task (a queued job), reading the queue as
the calling key, the task's wire form, following a job to its end, and status notifications."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from mcp.server.mcpserver import require_client_extension
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS, CallToolResult
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from redis.exceptions import RedisError

from messenger.calls import (
    caller_from,
    chat_request,
    error_result,
    guarded,
    reader_from,
    tool_result,
    unavailable,
)
from messenger.runtime import Runtime
from messenger.tasks.models import TASKS_EXTENSION, TaskNotification, input_requests, task_of
from shared.errors import InvalidRequest, JobNotFound, McpQueueError
from shared.models import FINAL_STATUSES, ChatRequest, JobResult

log = logging.getLogger("messenger.tasks")

Send = Callable[[JobResult], Awaitable[None]]


def modern(ctx) -> bool:
    return ctx.protocol_version in MODERN_PROTOCOL_VERSIONS


def headers_of(ctx) -> Any:
    """The HTTP request's headers (None on stdio), as the tools' Context.headers reads them."""
    return getattr(ctx.request, "headers", None)


class TaskCore:
    def __init__(self, runtime: Runtime, tool: str):
        self.jobs = runtime.jobs
        self.runtime = runtime  # (not self.settings: Extension.settings() is the capability ad)
        self.tool = tool
        self.watchers: set[asyncio.Task] = set()

    async def _enqueue(self, ctx, arguments: dict[str, Any] | None) -> JobResult | CallToolResult:
        """Queue the job durably and return it, or the error result a refused enqueue gets.

        Raises ToolError for arguments that are not a valid request."""
        request = chat_request(
            **{k: v for k, v in (arguments or {}).items() if k in ChatRequest.model_fields}
        )
        caller = caller_from(headers_of(ctx), self.runtime.settings)
        try:
            job_id = await guarded(self.runtime.queue.submit(request, caller=caller), self.runtime.settings)
        except ToolError as e:
            return error_result(str(e))
        return JobResult(job_id=job_id, status="queued")

    async def _read(self, ctx, read: Callable[[str | None], Awaitable[Any]]):
        """A queue read for a tasks/* method, as the calling key: errors become JSON-RPC errors."""
        if modern(ctx):
            require_client_extension(ctx, TASKS_EXTENSION)
        try:
            return await read(reader_from(headers_of(ctx), self.runtime.settings))
        except (JobNotFound, InvalidRequest) as e:
            raise MCPError(INVALID_PARAMS, str(e)) from None
        except McpQueueError as e:
            raise MCPError(INTERNAL_ERROR, e.message) from None
        except (RedisError, OSError) as e:
            raise MCPError(INTERNAL_ERROR, unavailable(e, self.runtime.settings).message) from None

    def _complete(self, ctx, result: dict) -> dict:
        return {"resultType": "complete", **result} if modern(ctx) else result

    async def _wire(self, job: JobResult, *, modern: bool, detailed: bool) -> dict:
        """The task as the era's schema spells it; `detailed` inlines a finished job's result (2026)."""
        created, updated = await self.jobs.timeline(job.job_id)
        wire = task_of(job, created, updated, modern=modern).wire(modern=modern)
        if modern and detailed and job.status in ("completed", "failed"):
            wire["result"] = tool_result(job).model_dump(by_alias=True, mode="json", exclude_none=True)
        if detailed and job.input_request is not None:  # paused: what tasks/update answers
            wire["inputRequests"] = input_requests(job.input_request)
        return wire

    async def _follow(self, job_id: str, reader: str | None, send: Send | None) -> JobResult:
        """Follow a job to its end; `send` hears when it starts running and when it ends."""
        started = False

        async def on_event(event, transcript) -> None:
            nonlocal started
            if send and event is not None and not started and transcript.status == "running":
                started = True
                await send(transcript.result())
            elif send and event is not None and event.type == "input_required":
                started = False  # its resumed run is told again
                await send(await self.jobs.get(job_id))

        job = await self.jobs.wait(job_id, None, on_event=on_event, reader=reader, until_input=False)
        if send and job.status in FINAL_STATUSES:
            await send(job)
        return job

    def _sender(self, ctx, related=None) -> Send:
        """Status notifications on the session (2025-11-25) or on this request's stream (2026-07-28)."""
        session, is_modern = ctx.session, modern(ctx)
        method = "notifications/tasks" if is_modern else "notifications/tasks/status"

        async def send(job: JobResult) -> None:
            try:
                params = await self._wire(job, modern=is_modern, detailed=True)
                await session.send_notification(TaskNotification(method=method, params=params), related)
            except Exception as e:  # a status notification is a courtesy: never fail the task over it
                log.debug("task status notification for %s not sent: %r", job.job_id, e)

        return send
