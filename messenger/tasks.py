"""MCP tasks backed by the queue: a task is a job, and its task id is the job id.

The mcp SDK defines the task types but dispatches none of them, so this extension serves them:

- 2025-11-25 (the handshake eras): a `tools/call` carrying `task` gets a CreateTaskResult
  `{"task": {...}}` once the job is in Redis; `tasks/get`, `tasks/result` (blocks until the job
  ends, then returns exactly the tool's result), `tasks/list` and `tasks/cancel` read the queue, and
  `notifications/tasks/status` goes out on the session when the job starts and when it ends.
- 2026-07-28: the `io.modelcontextprotocol/tasks` extension (SEP-2663). A client that declares it
  gets `{"resultType": "task", "taskId", ...}` for send_message_to_ai; `tasks/get` inlines the tool's
  result when the job is done; `tasks/cancel` and `tasks/update` acknowledge. `tasks/result` and
  `tasks/list` are served there too (extras); while `tasks/result` waits it sends `notifications/tasks`
  on its own response stream, the only channel that era has.

Every read goes through the JobClient with the caller as reader, so another API key's task is as
unknown as a missing one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from mcp.server.extension import Extension, MethodBinding
from mcp.server.mcpserver import require_client_extension
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    CallToolRequestParams,
    CallToolResult,
    CancelTaskRequestParams,
    GetTaskPayloadRequestParams,
    GetTaskRequestParams,
    Notification,
    PaginatedRequestParams,
    RequestParams,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS, is_version_at_least
from pydantic import ConfigDict
from redis.exceptions import RedisError

from messenger.calls import caller_from, chat_request, error_result, guarded, reader_from, tool_result
from messenger.runtime import Runtime
from shared.errors import JobNotFound
from shared.keys import KEEP_RESULT_SECONDS
from shared.models import FINAL_STATUSES, ChatRequest, JobResult

log = logging.getLogger("messenger.tasks")

TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
RELATED_TASK = "io.modelcontextprotocol/related-task"
POLL_INTERVAL_MS = 500
TASK_TTL_MS = KEEP_RESULT_SECONDS * 1000  # a finished job's result is kept this long
LEGACY_STATUS = {"queued": "working", "running": "working", "completed": "completed",
                 "failed": "failed", "cancelled": "cancelled"}  # fmt: skip
# SEP-2663 keeps `failed` for JSON-RPC errors: a tool result with isError is a completed task
MODERN_STATUS = LEGACY_STATUS | {"failed": "completed"}
TASKS_CAPABILITY = {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}
LISTED_TASKS = 100

Send = Callable[[JobResult], Awaitable[None]]


class UpdateTaskParams(RequestParams):
    """tasks/update (2026-07-28): answers to a task's input requests. Ours never ask for input."""

    model_config = ConfigDict(extra="allow")
    task_id: str
    input_responses: dict[str, Any] | None = None


class TaskNotification(Notification[dict[str, Any], str]):
    method: str
    params: dict[str, Any]


def modern(ctx) -> bool:
    return ctx.protocol_version in MODERN_PROTOCOL_VERSIONS


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def status_message(job: JobResult) -> str:
    if job.status == "queued":
        return "queued: waiting for a worker"
    if job.status == "running":
        return f"running on {job.worker_id or 'a worker'}: {job.usage.completion_tokens} tokens so far"
    if job.status == "completed":
        return f"completed: {job.usage.total_tokens} tokens"
    return f"{job.status}: {job.error or job.status}"


class JobTasks(Extension):
    identifier = TASKS_EXTENSION

    def __init__(self, runtime: Runtime, tool: str):
        self.jobs = runtime.jobs
        self.runtime = runtime  # (not self.settings: Extension.settings() is the capability ad)
        self.tool = tool
        self.watchers: set[asyncio.Task] = set()

    # -- creating tasks -------------------------------------------------------------------------

    async def middleware(self, ctx, call_next):
        """2025-11-25: task-augmented calls, and the tasks capability in initialize and tools/list."""
        params = ctx.params or {}
        if ctx.method == "tools/call" and not modern(ctx) and params.get("task") is not None:
            return await self._create_legacy(ctx, CallToolRequestParams.model_validate(params, by_name=False))
        result = await call_next(ctx)
        if ctx.method == "initialize" and is_version_at_least(
            result.get("protocolVersion", ""), "2025-11-25"
        ):
            result.setdefault("capabilities", {})["tasks"] = TASKS_CAPABILITY
        if ctx.method == "tools/list" and not modern(ctx):
            for tool in result.get("tools", []):
                if tool.get("name") == self.tool:
                    tool["execution"] = {"taskSupport": "optional"}
        return result

    async def intercept_tool_call(self, params, ctx, call_next):
        """2026-07-28: a client that declared the extension gets a task handle instead of waiting."""
        caps = ctx.session.client_capabilities
        declared = modern(ctx) and caps is not None and TASKS_EXTENSION in (caps.extensions or {})
        if not declared or params.name != self.tool:
            return await call_next(ctx)
        try:
            created = await self._enqueue(ctx, params.arguments)
        except ToolError:
            return await call_next(ctx)  # invalid arguments: the tool itself says what is wrong
        if not isinstance(created, JobResult):
            return created
        return {"resultType": "task", **await self._wire(created, modern=True, detailed=False)}

    async def _create_legacy(self, ctx, params: CallToolRequestParams) -> dict:
        if params.name != self.tool:
            raise MCPError(
                METHOD_NOT_FOUND, f"tool {params.name!r} cannot run as a task; only {self.tool} can"
            )
        try:
            created = await self._enqueue(ctx, params.arguments)
        except ToolError as e:
            created = error_result(str(e))
        if not isinstance(created, JobResult):  # the tool's own error, as a plain call would get it
            return created.model_dump(by_alias=True, mode="json", exclude_none=True)
        self._watch(ctx, created.job_id)
        return {"task": await self._wire(created, modern=False, detailed=False)}

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

    # -- the tasks/* methods --------------------------------------------------------------------

    def methods(self):
        return [
            MethodBinding("tasks/get", GetTaskRequestParams, self._get),
            MethodBinding("tasks/result", GetTaskPayloadRequestParams, self._result),
            MethodBinding("tasks/list", PaginatedRequestParams, self._list),
            MethodBinding("tasks/cancel", CancelTaskRequestParams, self._cancel),
            MethodBinding(
                "tasks/update", UpdateTaskParams, self._update, frozenset(MODERN_PROTOCOL_VERSIONS)
            ),
        ]

    async def _get(self, ctx, params: GetTaskRequestParams) -> dict:
        job = await self._read(ctx, lambda reader: self.jobs.get(params.task_id, reader))
        return self._complete(ctx, await self._wire(job, modern=modern(ctx), detailed=True))

    async def _result(self, ctx, params: GetTaskPayloadRequestParams) -> dict:
        """Block until the job ends; then the very CallToolResult send_message_to_ai would return."""
        job = await self._read(ctx, lambda reader: self.jobs.get(params.task_id, reader))
        if job.status not in FINAL_STATUSES:
            send = self._sender(ctx, related=ctx.request_id) if modern(ctx) else None
            job = await self._read(ctx, lambda reader: self._follow(params.task_id, reader, send))
        result = tool_result(job).model_dump(by_alias=True, mode="json", exclude_none=True)
        result["_meta"] = {RELATED_TASK: {"taskId": job.job_id}}
        if not modern(ctx):
            result.pop("resultType", None)
        return result

    async def _list(self, ctx, params: PaginatedRequestParams | None) -> dict:
        found = await self._read(ctx, lambda reader: self.jobs.list(None, LISTED_TASKS, reader))
        wires = [self._wire(job, modern=modern(ctx), detailed=False) for job in found]
        return self._complete(ctx, {"tasks": list(await asyncio.gather(*wires))})

    async def _cancel(self, ctx, params: CancelTaskRequestParams) -> dict:
        job = await self._read(ctx, lambda reader: self.jobs.get(params.task_id, reader))
        if job.status in FINAL_STATUSES and not modern(ctx):
            raise MCPError(
                INVALID_PARAMS, f"task {job.job_id} is already {job.status}; it cannot be cancelled"
            )
        if job.status not in FINAL_STATUSES:
            job = await self._read(ctx, lambda reader: self.jobs.cancel(params.task_id, reader))
        if modern(ctx):
            return {"resultType": "complete"}  # an acknowledgement; tasks/get shows the outcome
        return await self._wire(job, modern=False, detailed=False)

    async def _update(self, ctx, params: UpdateTaskParams) -> dict:
        await self._read(ctx, lambda reader: self.jobs.get(params.task_id, reader))
        return {"resultType": "complete"}  # no job ever waits for input, so there is nothing to apply

    # -- helpers --------------------------------------------------------------------------------

    async def _read(self, ctx, read: Callable[[str | None], Awaitable[Any]]):
        """A queue read for a tasks/* method, as the calling key: errors become JSON-RPC errors."""
        if modern(ctx):
            require_client_extension(ctx, TASKS_EXTENSION)
        try:
            return await read(reader_from(headers_of(ctx), self.runtime.settings))
        except JobNotFound as e:
            raise MCPError(INVALID_PARAMS, str(e)) from None
        except (RedisError, OSError) as e:
            raise MCPError(INTERNAL_ERROR, f"the queue is unreachable: {type(e).__name__}") from None

    def _complete(self, ctx, result: dict) -> dict:
        return {"resultType": "complete", **result} if modern(ctx) else result

    async def _wire(self, job: JobResult, *, modern: bool, detailed: bool) -> dict:
        """The task as the era's schema spells it; `detailed` inlines a finished job's result (2026)."""
        created, updated = await self.jobs.timeline(job.job_id)
        wire: dict[str, Any] = {
            "taskId": job.job_id,
            "status": (MODERN_STATUS if modern else LEGACY_STATUS)[job.status],
            "statusMessage": status_message(job),
            "createdAt": iso(created),
            "lastUpdatedAt": iso(updated),
            ("ttlMs" if modern else "ttl"): TASK_TTL_MS,
            ("pollIntervalMs" if modern else "pollInterval"): POLL_INTERVAL_MS,
        }
        if modern and detailed and job.status in ("completed", "failed"):
            wire["result"] = tool_result(job).model_dump(by_alias=True, mode="json", exclude_none=True)
        return wire

    async def _follow(self, job_id: str, reader: str | None, send: Send | None) -> JobResult:
        """Follow a job to its end; `send` hears when it starts running and when it ends."""
        started = False

        async def on_event(event, transcript) -> None:
            nonlocal started
            if send and event is not None and not started and transcript.status == "running":
                started = True
                await send(transcript.result())

        job = await self.jobs.wait(job_id, None, on_event=on_event, reader=reader)
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

    def _watch(self, ctx, job_id: str) -> None:
        """2025-11-25 sessions hear about the job's progress without polling, for as long as it runs."""
        send = self._sender(ctx)
        timeout = self.runtime.settings.job_timeout_seconds + 60

        async def watch() -> None:
            try:
                await asyncio.wait_for(self._follow(job_id, None, send), timeout)
            except Exception as e:
                log.debug("stopped watching task %s: %r", job_id, e)

        task = asyncio.create_task(watch(), name=f"task-status-{job_id}")
        self.watchers.add(task)
        task.add_done_callback(self.watchers.discard)


def headers_of(ctx) -> Any:
    """The HTTP request's headers (None on stdio), as the tools' Context.headers reads them."""
    return getattr(ctx.request, "headers", None)
