"""Every error mcp-queue raises on purpose, in one tree; adapters (MCP tools, CLI, dashboard) catch
the base and show its message as one line.

    McpQueueError                 a message meant for a person, never a traceback
    ├── InvalidRequest            a request, argument or setting value we cannot take
    │   └── SettingsError         a setting has a value we cannot run with
    ├── JobNotFound               no such job for this caller (or its result expired)
    │   └── JobLost               a followed job vanished from Redis (restart without persistence)
    ├── QueueFull                 MAX_QUEUE_DEPTH reached
    ├── Refused                   admission said no: a budget or a rate limit
    ├── Unauthorized              the caller may not do this (operator-only, another tenant's data)
    ├── QueueUnavailable          Redis cannot be reached, or refuses us (memory, permissions)
    ├── ToolServerError           an MCP server named by a request is unknown, or failed
    ├── ProviderError             the model provider failed (retryable or not)
    │   └── RateLimited           a model's capacity (MODEL_LIMITS, an upstream 429) outlasts the job
    └── JobStopped                a job run stopped before its answer was whole
        ├── ToolRoundsExceeded    the model kept asking for tools past TOOL_MAX_ROUNDS
        └── ReservationSpent      the job's budget reservation cannot pay for another turn

Two live beside their only user: `TooManyCredentials` (an InvalidRequest, messenger/tenants.py) and
`NotATask` (messenger/tasks/client.py: the server answered a task call at once).
"""

from __future__ import annotations

from pydantic import ValidationError

from shared.keys import KEEP_RESULT_SECONDS


class McpQueueError(Exception):
    """The base: `str(e)` is one line a person can act on, with no secret in it."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidRequest(McpQueueError, ValueError):
    pass


class SettingsError(InvalidRequest):
    pass


class JobNotFound(McpQueueError, LookupError):
    def __init__(self, job_id: str, why: str | None = None):
        super().__init__(
            why
            or f"no job with id {shown_id(job_id)}: it never existed, or it finished more than "
            f"{KEEP_RESULT_SECONDS // 60} minutes ago and its result expired"
        )
        self.job_id = job_id


class JobLost(JobNotFound):
    """A job the caller was following vanished from Redis before it ended, and no worker holds it."""


class QueueFull(McpQueueError):
    def __init__(self, depth: int, limit: int):
        super().__init__(
            f"the queue is full: {depth} jobs are waiting or running (MAX_QUEUE_DEPTH={limit}); "
            "try again later, or start more workers"
        )


class Refused(McpQueueError):
    """Admission control said no (a budget or a rate limit)."""


class Unauthorized(McpQueueError, PermissionError):
    pass


class QueueUnavailable(McpQueueError):
    pass


class ToolServerError(McpQueueError):
    pass


class ProviderError(McpQueueError):
    """A provider failure, worded for the person who has to fix it (no secrets in the text)."""

    def __init__(
        self, message: str, *, retryable: bool = False, status: int | None = None,
        retry_after: float | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after  # seconds the provider asked for (Retry-After), when it said


class RateLimited(ProviderError):
    """A model has no capacity for this job before its deadline: its MODEL_LIMITS (`upstream`
    False) or a cool-down after the provider's 429 (`upstream` True). A fallback chain catches it
    to try another model; `wait` is how long this model still needed, when known."""

    def __init__(self, message: str, *, model: str, limit: str, wait: float | None, upstream: bool):
        super().__init__(message, retryable=True, status=429 if upstream else None)
        self.model = model
        self.limit = limit  # rpm, tpm, concurrency or cooldown
        self.wait = wait
        self.upstream = upstream


class JobStopped(McpQueueError):
    pass


class ToolRoundsExceeded(JobStopped):
    def __init__(self, limit: int):
        super().__init__(
            f"the model was still asking for tools after TOOL_MAX_ROUNDS={limit} rounds; "
            "raise TOOL_MAX_ROUNDS or ask for less"
        )


class ReservationSpent(JobStopped):
    """The budget the messenger reserved for this job cannot pay for another model turn."""


def validation_message(e: ValidationError, prefix: str = "invalid ") -> str:
    """pydantic's first complaint as one line: `invalid max_tokens: Input should be ...`."""
    err = e.errors()[0]
    where = ".".join(str(part) for part in err["loc"])
    detail = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return f"{prefix}{where or 'request'}: {detail}"


def shown_id(job_id: str) -> str:
    """A job id as an error may repeat it: quoted, and cut short when a caller sent a huge one."""
    return repr(job_id if len(job_id) <= 100 else job_id[:40] + "…")
