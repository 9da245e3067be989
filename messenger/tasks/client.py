"""mcp-queue's MCP tasks from the client side, for an `mcp.Client` in either protocol era.

The mcp SDK has no client API for tasks, so this module is one:

    async with Client(url, extensions=[Tasks()]) as client:      # Tasks(): needed on 2026-07-28
        task = await start_task(client, "send_message_to_ai", {"message": "hi"})
        task = await wait_for_task(client, task.task_id)           # polls tasks/get
        result = await task_result(client, task.task_id)           # the tool's CallToolResult

With `Tasks()` a 2026-07-28 client also gets every send_message_to_ai call back as a task, which
`client.call_tool` then polls to its end behind the scenes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from mcp import Client, ClientSession
from mcp.client.extension import ClaimContext, ClientExtension, NotificationBinding, ResultClaim
from mcp_types import CallToolResult, Result
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from messenger.tasks.models import (
    TASKS_EXTENSION,
    CancelTask,
    DetailedTask,
    GetTask,
    ListTasks,
    TaskHandle,
    TaskList,
    TaskParams,
    TaskPayload,
    TaskState,
    TaskStatusParams,
    UpdateTask,
    UpdateTaskParams,
)
from messenger.tasks.sdk import send_unchecked
from shared.errors import McpQueueError


class NotATask(McpQueueError):
    """The server answered the call at once (e.g. the arguments were invalid): `result` is its answer."""

    def __init__(self, result: CallToolResult):
        super().__init__(" ".join(getattr(c, "text", "") for c in result.content) or "not a task")
        self.result = result


class Tasks(ClientExtension):
    """Declares the tasks extension (2026-07-28) and finishes claimed task results by polling.

    `on_status` hears the status notifications the server sends (either era)."""

    identifier = TASKS_EXTENSION

    def __init__(self, on_status: Callable[[TaskState], Awaitable[None]] | None = None):
        self.on_status = on_status

    def claims(self):
        return [ResultClaim(result_type="task", model=TaskHandle, resolve=self._finish)]

    def notifications(self):
        if self.on_status is None:
            return []
        return [
            NotificationBinding(method=method, params_type=TaskStatusParams, handler=self.on_status)
            for method in ("notifications/tasks", "notifications/tasks/status")
        ]

    async def _finish(self, handle: TaskHandle, ctx: ClaimContext) -> CallToolResult:
        state = await wait_for_task(ctx.session, handle.task_id)
        if state.result is not None:
            return CallToolResult.model_validate(state.result)
        return await task_result(ctx.session, handle.task_id)


def _session(client: Client | ClientSession) -> ClientSession:
    return client.session if isinstance(client, Client) else client


def _modern(session: ClientSession) -> bool:
    return session.protocol_version in MODERN_PROTOCOL_VERSIONS


async def start_task(
    client: Client | ClientSession, tool: str, arguments: dict[str, Any], ttl_ms: int | None = None
) -> TaskState:
    """Call `tool` as a task; returns the task once the server holds it. Raises NotATask if the
    server answered directly instead (its answer is on the exception)."""
    session = _session(client)
    if _modern(session):  # the server decides; it makes a task when the client declared Tasks()
        answer = await session.call_tool(tool, arguments, allow_claimed=True)
        if isinstance(answer, TaskHandle):
            return answer
        if not isinstance(answer, CallToolResult):  # another extension's claimed result
            answer = CallToolResult.model_validate(answer.model_dump(by_alias=True))
        raise NotATask(answer)
    # 2025-11-25: `tools/call` with `task`, whose CreateTaskResult the SDK's own check would refuse
    params = {"name": tool, "arguments": arguments, "task": {} if ttl_ms is None else {"ttl": ttl_ms}}
    raw = await send_unchecked(session, "tools/call", params)
    if "task" in raw:
        return TaskState.model_validate(raw["task"])
    raise NotATask(CallToolResult.model_validate(raw))


async def get_task(client: Client | ClientSession, task_id: str) -> DetailedTask:
    return await _session(client).send_request(GetTask(params=TaskParams(task_id=task_id)), DetailedTask)


async def wait_for_task(
    client: Client | ClientSession, task_id: str, timeout: float | None = None
) -> TaskState:
    """Poll tasks/get, at the interval the server asks for, until the task ends."""
    with anyio.fail_after(timeout):
        while True:
            state = await get_task(client, task_id)
            if state.final:
                return state
            await anyio.sleep((state.poll_interval or 500) / 1000)


async def task_result(client: Client | ClientSession, task_id: str) -> CallToolResult:
    """tasks/result: waits until the task ends, then its tool result."""
    return await _session(client).send_request(
        TaskPayload(params=TaskParams(task_id=task_id)), CallToolResult
    )


async def update_task(client: Client | ClientSession, task_id: str, responses: dict[str, Any]) -> None:
    """tasks/update (2026-07-28): answer the task's `inputRequests`, each key an ElicitResult."""
    params = UpdateTaskParams(task_id=task_id, input_responses=responses)
    await _session(client).send_request(UpdateTask(params=params), Result)


async def list_tasks(client: Client | ClientSession) -> list[TaskState]:
    return (await _session(client).send_request(ListTasks(), TaskList)).tasks


async def cancel_task(client: Client | ClientSession, task_id: str) -> TaskState:
    """Ask the task to stop; returns its state afterwards (usually `cancelled`)."""
    session = _session(client)
    request = CancelTask(params=TaskParams(task_id=task_id))
    if _modern(session):  # an acknowledgement; the state is tasks/get's to tell
        await session.send_request(request, Result)
        return await get_task(session, task_id)
    return await session.send_request(request, TaskState)
