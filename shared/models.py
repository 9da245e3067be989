"""The request a caller sends and the result it gets back.

The result keeps the field names users of the earlier two-server HTTP design know
(`aiResponse`, `processingTime`, `usage.promptTokens`, ...), so it is camelCase on the wire.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from shared.tool_config import SERVER_NAME
from shared.turns import Priority

if TYPE_CHECKING:
    from shared.settings import Settings

_T = TypeVar("_T")
MAX_MESSAGE_CHARS = 100_000  # message and context each; a larger prompt belongs in a file, not a tool call
MAX_TOKENS_LIMIT = 200_000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$")

JobStatus = Literal["queued", "running", "input_required", "completed", "failed", "cancelled"]
FINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


# The request's fields, described once for both the pydantic model and the MCP tool schemas.
MessageText = Annotated[
    str, Field(min_length=1, max_length=MAX_MESSAGE_CHARS, description="What to ask the model.")
]
ContextText = Annotated[
    str | None,
    Field(max_length=MAX_MESSAGE_CHARS, description="Background for the model, sent as a system message."),
]
MAX_MODEL_CHARS = 256  # a model name becomes Redis keys and set members: bounded (Bedrock ARNs fit)
ModelName = Annotated[
    str | None,
    Field(max_length=MAX_MODEL_CHARS, description="Model name; default: the configured default model."),
]
Temperature = Annotated[float | None, Field(ge=0, le=2, description="Sampling temperature, 0 to 2.")]
MaxTokens = Annotated[
    int | None, Field(ge=1, le=MAX_TOKENS_LIMIT, description="Upper bound on the reply's length in tokens.")
]
ConversationId = Annotated[str | None, Field(description="Keep turns together under this id.")]
QueuePriority = Annotated[
    Priority | None,
    Field(
        description="high, normal (the default) or low: higher runs first; within one, API keys take turns."
    ),
]
McpServers = Annotated[
    list[str] | None,
    Field(
        max_length=20,
        description="Names of configured MCP servers (MCP_SERVERS) whose tools the model may call.",
    ),
]


class ChatRequest(BaseModel):
    """One model call. Unset options take the runtime defaults of the worker that runs it."""

    model_config = ConfigDict(extra="forbid")

    message: MessageText
    context: ContextText = None
    model: ModelName = None
    temperature: Temperature = None
    max_tokens: MaxTokens = None
    conversation_id: ConversationId = None
    mcp_servers: McpServers = None
    priority: QueuePriority = None  # the queue's order, never sent to the model (see shared/turns.py)

    @field_validator("message")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("message is empty")
        return v

    @field_validator("model", "conversation_id")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not _NAME.fullmatch(v):
            raise ValueError(
                "must be 1-200 characters: letters, digits and . _ : / @ + -, starting alphanumeric"
            )
        return v

    @field_validator("mcp_servers")
    @classmethod
    def _servers(cls, v: list[str] | None) -> list[str] | None:
        if not v:
            return None
        for name in v:
            if not SERVER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not an MCP server name (letters, digits, - and _)")
        return list(dict.fromkeys(v))


class ToolCallRequest(BaseModel):
    """One call of a downstream MCP server's tool, run by a worker (the messenger's `server/tool` tools)."""

    model_config = ConfigDict(extra="forbid")

    server: str
    tool: str = Field(min_length=1, max_length=128)
    arguments: dict[str, Any] = {}

    @field_validator("arguments")
    @classmethod
    def _not_huge(cls, v: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(v, default=str)) > MAX_MESSAGE_CHARS:
            raise ValueError(f"the arguments take more than {MAX_MESSAGE_CHARS} characters as JSON")
        return v

    @field_validator("server")
    @classmethod
    def _server(cls, v: str) -> str:
        if not SERVER_NAME.fullmatch(v):
            raise ValueError(f"{v!r} is not an MCP server name (letters, digits, - and _)")
        return v


class ModelDefaults(BaseModel):
    """Runtime defaults every worker applies to requests that leave the field unset (configure_ai_model)."""

    model_config = ConfigDict(extra="forbid")

    default_model: ModelName = None
    temperature: Temperature = None
    max_tokens: MaxTokens = None

    @field_validator("default_model")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return ChatRequest._name(v)

    def over(self, base: ModelDefaults) -> ModelDefaults:
        """These defaults where set, `base`'s elsewhere (a tenant's over the global ones)."""
        return base.model_copy(update=self.model_dump(exclude_none=True))


@dataclass(frozen=True)
class Effective:
    """The model, temperature and max_tokens one call runs with."""

    model: str
    temperature: float
    max_tokens: int


def effective(request: ChatRequest | None, defaults: ModelDefaults, settings: Settings) -> Effective:
    """The one rule for unset options: the request's own value, else the runtime default
    (configure_ai_model), else the setting (OPENAI_DEFAULT_MODEL or the provider's, OPENAI_TEMPERATURE,
    OPENAI_MAX_TOKENS). The admission reservation, the worker's call and the defaults a caller reads
    all use it, so they never disagree. `request=None`: what a request that sets nothing gets."""
    model, temperature, max_tokens = (
        (request.model, request.temperature, request.max_tokens) if request else (None, None, None)
    )
    return Effective(
        model=_first(model, defaults.default_model, settings.default_model),
        temperature=_first(temperature, defaults.temperature, settings.openai_temperature),
        max_tokens=_first(max_tokens, defaults.max_tokens, settings.openai_max_tokens),
    )


def _first(value: _T | None, default: _T | None, setting: _T) -> _T:
    """The first value that is set (0 and 0.0 are set: a temperature of 0 is a choice). (Not a
    generator over *values: three of those were ~1 µs of every job.)"""
    if value is not None:
        return value
    return default if default is not None else setting


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True)


class ResultUsage(_Camel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    estimated_cost: float | None = None  # USD; None when the model has no known price
    estimated: bool = (
        False  # True: the provider reported no usage; the token counts are the worker's estimate
    )


class ToolCallRecord(_Camel):
    """One tool call a job's model made, and what came back."""

    call_id: str
    server: str
    tool: str
    arguments: dict[str, Any] | str
    round: int
    result: str | None = None  # None while the tool runs
    is_error: bool = False
    duration_ms: float | None = None


UNIX_SECONDS_MAX = 253_402_300_799  # 9999-12-31: a time past it (or NaN) in a record is junk


class CapacityWait(_Camel):
    """What a running job waits for before its next model call (MODEL_LIMITS or a 429 cool-down)."""

    model: str = Field(max_length=500)
    limit: Literal["rpm", "tpm", "concurrency", "cooldown", "turn"]  # turn: behind this worker's own waiters
    since: float = Field(ge=0, le=UNIX_SECONDS_MAX)  # unix seconds
    until: float | None = Field(None, ge=0, le=UNIX_SECONDS_MAX)  # None: when a slot frees / its turn comes


class Question(_Camel):
    """A tool call waiting for the caller's approval."""

    key: str  # <job_id>:<step>: what tasks/update and respond_to_job answer
    step: int = Field(ge=1)
    server: str
    tool: str
    arguments: dict[str, Any] | str
    question: str  # one line a person can answer yes or no
    asked_at: float  # unix seconds
    expires_at: float  # unix seconds: unanswered by then, the job fails (INPUT_WAIT_SECONDS)


class JobResult(_Camel):
    """A job as a caller sees it: while it runs `ai_response` is the text so far."""

    job_id: str
    status: JobStatus
    ai_response: str = ""
    model: str | None = None
    fallback_from: str | None = None  # MODEL_FALLBACKS: the model first asked, when `model` answered instead
    usage: ResultUsage = Field(default_factory=ResultUsage)
    processing_time: float | None = None  # seconds from job start to its last event
    finish_reason: str | None = None
    error: str | None = None
    worker_id: str | None = None
    attempt: int = 0
    tool_calls: list[ToolCallRecord] = []
    queue_position: int | None = None  # while queued: 1 is the next job a free worker takes
    waiting_for: CapacityWait | None = None  # while running: the model capacity it waits for
    input_request: Question | None = (
        None  # while input_required: the question it waits on (shared/approvals.py)
    )
