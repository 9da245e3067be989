"""The token events a worker publishes for a job: the wire format is the type.

Each event goes to the job's pub/sub channel (live readers) and to its Redis Stream (late or
reconnecting readers). `seq` rises by one per event within an `attempt`; an attempt starts with
`start` and every job ends with exactly one terminal event (`done`, `error` or `cancelled`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class TokenUsage(BaseModel):
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    total_tokens: int = Field(default=0, ge=0)
    estimated: bool = False  # True: the provider did not report usage, so the worker estimated it


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    job_id: str
    seq: int = Field(ge=0)
    attempt: int = Field(ge=1)
    ts: float  # unix seconds, when the worker emitted it


class StartEvent(_Event):
    type: Literal["start"] = "start"
    worker_id: str
    model: str


class TokenEvent(_Event):
    type: Literal["token"] = "token"
    text: str


class DoneEvent(_Event):
    type: Literal["done"] = "done"
    usage: TokenUsage
    cost: float | None  # None: the model has no known price (never reported as $0)
    finish_reason: str | None
    model: str
    fallback_from: str | None = None  # MODEL_FALLBACKS: the model first asked, when `model` answered instead


class ToolCallEvent(_Event):
    """The model asked for a tool; the worker is running it."""

    type: Literal["tool_call"] = "tool_call"
    call_id: str
    server: str
    tool: str
    arguments: dict[str, Any] | str  # str: the model wrote arguments that are not a JSON object
    round: int = Field(ge=1)


class ToolResultEvent(_Event):
    type: Literal["tool_result"] = "tool_result"
    call_id: str
    server: str
    tool: str
    result: str  # what the model is given (an error's text when is_error)
    is_error: bool
    duration_ms: float


class ErrorEvent(_Event):
    type: Literal["error"] = "error"
    error: str  # a message a person can act on


class CancelledEvent(_Event):
    type: Literal["cancelled"] = "cancelled"


Event = Annotated[
    StartEvent | TokenEvent | ToolCallEvent | ToolResultEvent | DoneEvent | ErrorEvent | CancelledEvent,
    Field(discriminator="type"),
]
TERMINAL = frozenset({"done", "error", "cancelled"})
_adapter: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(raw: bytes | str) -> Event:
    """Parse one event; raises pydantic.ValidationError (a ValueError) on anything else."""
    return _adapter.validate_json(raw)


def dump_event(event: Event) -> bytes:
    if isinstance(event, DoneEvent) and event.fallback_from is None:  # the wire format as before fallbacks
        return event.model_dump_json(exclude={"fallback_from"}).encode()
    return event.model_dump_json().encode()


def queue_events(pipe, events: list[Event]) -> list[str]:
    """Queue each event's stream append and publish on a pipeline; answers the job id of each command.

    Stream first: any event a live reader sees is already there for a reader that replays.
    """
    from shared import keys

    owners: list[str] = []
    for event in events:
        data = dump_event(event)
        pipe.xadd(keys.stream(event.job_id), {"event": data}, maxlen=keys.STREAM_MAXLEN, approximate=True)
        pipe.publish(keys.events(event.job_id), data)
        owners += [event.job_id, event.job_id]
    ended = dict.fromkeys(e.job_id for e in events if e.type != "token")  # running ones: the heartbeat renews
    for job_id in ended:
        pipe.expire(keys.stream(job_id), keys.STREAM_TTL_SECONDS)
        owners.append(job_id)
    return owners


async def publish_events(redis, events: list[Event]) -> None:
    """Append events to their job's stream, then publish them, in one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        queue_events(pipe, events)
        await pipe.execute()
