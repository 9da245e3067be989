"""2026-07-28: the `io.modelcontextprotocol/tasks` extension (SEP-2663). A client that declares it gets
`{"resultType": "task", "taskId", ...}` for send_message_to_ai; `tasks/update` answers a paused job's
`inputRequests` (messenger/approvals.py): accept runs the tool call, decline or cancel does not."""

from __future__ import annotations

from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS

from messenger.approvals import respond
from messenger.tasks.core import TaskCore, modern
from messenger.tasks.models import TASKS_EXTENSION, UpdateTaskParams, approval_of
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
        """Apply each answer; a bad one is a one-line JSON-RPC error, and nothing of it is applied."""
        responses = params.input_responses or {}
        try:
            answers = {key: approval_of(response) for key, response in responses.items()}
        except ValueError as e:
            raise MCPError(INVALID_PARAMS, str(e)) from None
        if not answers:  # nothing to answer: still the caller's task, or as unknown as a missing one
            await self._read(ctx, lambda reader: self.jobs.get(params.task_id, reader))
        for key, (approve, note) in answers.items():
            await self._read(
                ctx, lambda reader, k=key, a=approve, n=note: respond(
                    self.jobs, params.task_id, approve=a, note=n, key=k, reader=reader
                ),
            )  # fmt: skip
        return {"resultType": "complete"}
