"""2026-07-28: the `io.modelcontextprotocol/tasks` extension (SEP-2663). A client that declares it gets
`{"resultType": "task", "taskId", ...}` for send_message_to_ai; `tasks/update` acknowledges (no job
ever waits for input)."""

from __future__ import annotations

from mcp.server.mcpserver.exceptions import ToolError

from messenger.tasks.core import TaskCore, modern
from messenger.tasks.models import TASKS_EXTENSION, UpdateTaskParams
from shared.models import JobResult


class ModernEra(TaskCore):
    async def intercept_tool_call(self, params, ctx, call_next):
        """A client that declared the extension gets a task handle instead of waiting."""
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

    async def _update(self, ctx, params: UpdateTaskParams) -> dict:
        await self._read(ctx, lambda reader: self.jobs.get(params.task_id, reader))
        return {"resultType": "complete"}  # no job ever waits for input, so there is nothing to apply
