"""The tasks extension the MCP server installs: the tasks/* methods, served in both eras (tasks/result
and tasks/list are extras on 2026-07-28; while tasks/result waits there it sends `notifications/tasks`
on its own response stream, the only channel that era has).

Every read goes through the JobClient with the caller as reader, so another API key's task is as
unknown as a missing one."""

from __future__ import annotations

import asyncio

from mcp.server.extension import Extension, MethodBinding
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    CancelTaskRequestParams,
    GetTaskPayloadRequestParams,
    GetTaskRequestParams,
    PaginatedRequestParams,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from messenger.calls import tool_result
from messenger.tasks.core import modern
from messenger.tasks.legacy import LegacyEra
from messenger.tasks.models import RELATED_TASK, TASKS_EXTENSION, UpdateTaskParams
from messenger.tasks.modern import ModernEra
from shared.models import FINAL_STATUSES

LISTED_TASKS = 100


class JobTasks(LegacyEra, ModernEra, Extension):
    identifier = TASKS_EXTENSION

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
