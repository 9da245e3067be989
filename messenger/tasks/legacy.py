"""2025-11-25 (the handshake eras): a `tools/call` carrying `task` gets a CreateTaskResult
`{"task": {...}}` once the job is in Redis; the tasks capability goes into `initialize` and
`execution.taskSupport` into `tools/list`; `notifications/tasks/status` goes out on the session when
the job starts and when it ends."""

from __future__ import annotations

import asyncio

from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp_types import METHOD_NOT_FOUND, CallToolRequestParams
from mcp_types.version import is_version_at_least

from messenger.calls import error_result
from messenger.tasks.core import TaskCore, log, modern
from shared.models import JobResult

TASKS_CAPABILITY = {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}


class LegacyEra(TaskCore):
    async def middleware(self, ctx, call_next):
        """Task-augmented calls, and the tasks capability in initialize and tools/list."""
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

    def _watch(self, ctx, job_id: str) -> None:
        """Sessions hear about the job's progress without polling, for as long as it runs."""
        send = self._sender(ctx)
        settings = self.runtime.settings  # (a job may pause for an answer up to INPUT_WAIT_SECONDS)
        timeout = settings.job_timeout_seconds + settings.input_wait_seconds + 60

        async def watch() -> None:
            try:
                await asyncio.wait_for(self._follow(job_id, None, send), timeout)
            except Exception as e:
                log.debug("stopped watching task %s: %r", job_id, e)

        task = asyncio.create_task(watch(), name=f"task-status-{job_id}")
        self.watchers.add(task)
        task.add_done_callback(self.watchers.discard)
