"""The tasks wire, shared by the server side (extension.py) and the client (client.py): the task
object in both protocol eras, the status names, the requests and notifications."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, Literal, TypeVar

from mcp_types import Notification, NotificationParams, PaginatedRequestParams, Request, RequestParams, Result
from pydantic import AliasChoices, ConfigDict, Field
from pydantic.alias_generators import to_camel

from shared.keys import KEEP_RESULT_SECONDS
from shared.models import CapacityWait, JobResult, JobStatus, Question

TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
RELATED_TASK = "io.modelcontextprotocol/related-task"
POLL_INTERVAL_MS = 500
TASK_TTL_MS = KEEP_RESULT_SECONDS * 1000  # a finished job's result is kept this long
FINAL = frozenset({"completed", "failed", "cancelled"})
LEGACY_STATUS: dict[JobStatus, str] = {
    "queued": "working", "running": "working", "input_required": "input_required",
    "completed": "completed", "failed": "failed", "cancelled": "cancelled",
}  # fmt: skip
# SEP-2663 keeps `failed` for JSON-RPC errors: a tool result with isError is a completed task
MODERN_STATUS: dict[JobStatus, str] = {**LEGACY_STATUS, "failed": "completed"}


class TaskState(Result):
    """A task as either era describes it (2025-11-25 `ttl`/`pollInterval`, 2026-07-28 `ttlMs`/`pollIntervalMs`).

    On 2026-07-28 a finished task carries its tool result in `result`."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    task_id: str
    status: str
    status_message: str | None = None
    created_at: str | None = None
    last_updated_at: str | None = None
    ttl: int | None = Field(None, validation_alias=AliasChoices("ttlMs", "ttl"))
    poll_interval: int | None = Field(None, validation_alias=AliasChoices("pollIntervalMs", "pollInterval"))
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL

    def wire(self, *, modern: bool) -> dict[str, Any]:
        """The task as the era spells it on the wire."""
        wire = self.model_dump(by_alias=True, mode="json", exclude_none=True)
        if modern:
            wire["ttlMs"], wire["pollIntervalMs"] = wire.pop("ttl", None), wire.pop("pollInterval", None)
        return wire


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


LATEST_CHARS = 80  # how much of the newest text a running task's statusMessage shows


def status_message(job: JobResult) -> str:
    """A task's live state in one line: where it waits in the queue, or who runs it, how far it got
    and its latest words (the 2026 tasks extension has no progress notifications: this is it)."""
    if job.status == "queued":
        if job.queue_position is None:
            return "queued: waiting for a worker"
        ahead = job.queue_position - 1
        return "queued: next in line" if ahead == 0 else f"queued: {ahead} job{'s' * (ahead != 1)} ahead"
    if job.status == "running" and job.waiting_for is not None:
        return waiting_message(job.waiting_for)
    if job.status == "running":
        where = f"running on {job.worker_id or 'a worker'}"
        if job.attempt > 1:
            where += f" (attempt {job.attempt})"
        said = f"{where}: {job.usage.completion_tokens} tokens so far"
        latest = " ".join(job.ai_response.split())[-LATEST_CHARS:]
        return f"{said}; latest: …{latest}" if latest else said
    if job.status == "input_required" and job.input_request is not None:
        return f"input_required: {job.input_request.question} (answer key {job.input_request.key})"
    if job.status == "completed":
        return f"completed: {job.usage.total_tokens} tokens"
    return f"{job.status}: {job.error or job.status}"


def waiting_message(wait: CapacityWait) -> str:
    """`waiting for capacity: gpt-4o rpm until 18:20:31 UTC`. A concurrency slot frees when another
    call ends, and a turn when the jobs ahead have theirs: no clock time to promise for those."""
    said = f"waiting for capacity: {wait.model} {wait.limit}"
    if wait.limit == "concurrency":
        return f"{said} until a slot frees"
    if wait.until is None:
        return f"{said} until the jobs ahead have their turn"
    return f"{said} until {datetime.fromtimestamp(wait.until, UTC):%H:%M:%S} UTC"


def task_of(job: JobResult, created_ms: int, updated_ms: int, *, modern: bool) -> TaskState:
    """The task that stands for a job (the task id is the job id)."""
    return TaskState(
        task_id=job.job_id,
        status=(MODERN_STATUS if modern else LEGACY_STATUS)[job.status],
        status_message=status_message(job),
        created_at=iso(created_ms),
        last_updated_at=iso(updated_ms),
        ttl=TASK_TTL_MS,
        poll_interval=POLL_INTERVAL_MS,
    )


APPROVAL_SCHEMA = {
    "type": "object",
    "properties": {"note": {"type": "string", "description": "Said to the model with your answer."}},
}  # accept: run the call; decline (or cancel): do not, and the model is told


def input_requests(question: Question) -> dict[str, Any]:
    """A paused job's question as the tasks extension's `inputRequests`: one form elicitation."""
    params = {"mode": "form", "message": question.question, "requestedSchema": APPROVAL_SCHEMA}
    return {question.key: {"method": "elicitation/create", "params": params}}


def approval_of(response: Any) -> tuple[bool, str | None]:
    """(approved, note) from one `inputResponses` entry (an ElicitResult); raises ValueError on junk."""
    if not isinstance(response, dict) or response.get("action") not in ("accept", "decline", "cancel"):
        raise ValueError(
            "each input response must be an elicitation result with action accept, decline or cancel"
        )
    content = response.get("content") or {}
    note = content.get("note") if isinstance(content, dict) else None
    if note is not None and not isinstance(note, str):
        raise ValueError("the note of an input response must be text")
    return response["action"] == "accept", note


class DetailedTask(TaskState):
    """tasks/get's answer: while the task is input_required, also the `inputRequests` tasks/update answers."""

    input_requests: dict[str, Any] | None = None


class TaskHandle(TaskState):
    """The 2026-07-28 CreateTaskResult: `resultType: "task"` in place of the tool's result."""

    result_type: Literal["task"] = "task"


class TaskList(Result):
    tasks: list[TaskState]


class TaskParams(RequestParams):
    task_id: str


class UpdateTaskParams(RequestParams):
    """tasks/update (2026-07-28): answers to a task's input requests (a paused job's question)."""

    model_config = ConfigDict(extra="allow")
    task_id: str
    input_responses: dict[str, Any] | None = None


MethodT = TypeVar("MethodT", bound=str)


class _TaskRequest(Request[TaskParams, MethodT], Generic[MethodT]):
    name_param: ClassVar[str | None] = "taskId"  # SEP-2663: Mcp-Name carries the task id over HTTP


class GetTask(_TaskRequest[Literal["tasks/get"]]):
    method: Literal["tasks/get"] = "tasks/get"


class TaskPayload(_TaskRequest[Literal["tasks/result"]]):
    method: Literal["tasks/result"] = "tasks/result"


class CancelTask(_TaskRequest[Literal["tasks/cancel"]]):
    method: Literal["tasks/cancel"] = "tasks/cancel"


class UpdateTask(Request[UpdateTaskParams, Literal["tasks/update"]]):
    method: Literal["tasks/update"] = "tasks/update"
    name_param: ClassVar[str | None] = "taskId"


class ListTasks(Request[PaginatedRequestParams | None, Literal["tasks/list"]]):
    method: Literal["tasks/list"] = "tasks/list"
    params: PaginatedRequestParams | None = None


class TaskStatusParams(NotificationParams, TaskState):
    pass


class TaskNotification(Notification[dict[str, Any], str]):
    """notifications/tasks/status (2025-11-25) or notifications/tasks (2026-07-28), as the server sends it."""

    method: str
    params: dict[str, Any]
