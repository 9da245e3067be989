"""MCP tasks backed by the queue: a task is a job, and its task id is the job id.

The mcp SDK defines the task types but serves none of them, so this package does, in both eras:

    models.py     the wire: the task object, statuses, requests, notifications (server and client)
    core.py       what both eras share on the server: create, read as the caller, follow, notify
    legacy.py     2025-11-25: task-augmented tools/call, capabilities, notifications/tasks/status
    modern.py     2026-07-28: the io.modelcontextprotocol/tasks extension (resultType "task")
    extension.py  JobTasks, the Extension the server installs: tasks/get, result, list, cancel, update
    client.py     the client side for an `mcp.Client` (start_task, wait_for_task, task_result, Tasks())
    sdk.py        the one pinned use of a private SDK path (a raw tools/call on 2025-11-25)
"""

from messenger.tasks.models import TASKS_EXTENSION

__all__ = ["TASKS_EXTENSION"]
