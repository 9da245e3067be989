"""The token events a worker publishes for a job: the wire format is the type.

Each event goes to the job's pub/sub channel (live readers) and to its Redis Stream (late or
reconnecting readers). `seq` rises by one per event within an `attempt`; an attempt starts with
`start` and every job ends with exactly one terminal event (`done`, `error` or `cancelled`).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic_core import to_json
from redis._parsers import BaseParser

from shared import keys
from shared.scripts import Args, script


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
    # a re-run that goes on from the job's journal (worker/journal.py): its last finished step. What
    # earlier attempts published up to their last event that carries a `step` stands; the rest is void
    resumed: int | None = None


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
    step: int | None = None  # the journal step of the model turn that asked for it (None: not journaled)


class ToolResultEvent(_Event):
    type: Literal["tool_result"] = "tool_result"
    call_id: str
    server: str
    tool: str
    result: str  # what the model is given (an error's text when is_error)
    is_error: bool
    duration_ms: float
    step: int | None = None  # the call's journal step, written with this event (None: not journaled)


class InputRequiredEvent(_Event):
    """The job paused for its caller's answer (worker/pause.py): no worker holds it until one comes.
    Not an ending: an answer (tasks/update, respond_to_job) resumes it as a new attempt."""

    type: Literal["input_required"] = "input_required"
    key: str  # what the answer names: <job_id>:<step>
    server: str
    tool: str
    arguments: dict[str, Any] | str
    question: str
    expires_at: float  # unix seconds: unanswered by then, the job fails


class ErrorEvent(_Event):
    type: Literal["error"] = "error"
    error: str  # a message a person can act on
    usage: TokenUsage | None = None  # what the attempt used before it failed (None: not said)
    cost: float | None = None


class CancelledEvent(_Event):
    """A cancelled job's ending, with what it used until then: a reader that has this event before
    the stored result (written a moment later) answers the same usage."""

    type: Literal["cancelled"] = "cancelled"
    usage: TokenUsage | None = None  # None: not said (an event written by an older worker)
    cost: float | None = None


Event = Annotated[
    StartEvent
    | TokenEvent
    | ToolCallEvent
    | ToolResultEvent
    | InputRequiredEvent
    | DoneEvent
    | ErrorEvent
    | CancelledEvent,
    Field(discriminator="type"),
]
TERMINAL = frozenset({"done", "error", "cancelled"})
_GOING_ON = frozenset({"token", "input_required"})  # events after which a job's stream is not yet ending
_adapter: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(raw: bytes | str) -> Event:
    """Parse one event; raises pydantic.ValidationError (a ValueError) on anything else."""
    return _adapter.validate_json(raw)


def make_event(fields: dict[str, Any]) -> Event:
    """An event of the type `fields["type"]` names; raises pydantic.ValidationError on anything else."""
    return _adapter.validate_python(fields)


def dump_event(event: Event) -> bytes:
    # the usual events stay on the wire as they were before fallbacks and journals
    if isinstance(event, DoneEvent) and event.fallback_from is None:
        return event.model_dump_json(exclude={"fallback_from"}).encode()
    if isinstance(event, StartEvent) and event.resumed is None:
        return event.model_dump_json(exclude={"resumed"}).encode()
    return event.model_dump_json().encode()


def event_head(job_id: str) -> bytes:
    """What every event of the job starts with: its JSON up to the job id's comma. An event write
    sends what follows it (write_wired), so the id crosses the wire once per job, not per event."""
    return b'{"job_id":%b,' % to_json(job_id)


def token_body(seq: int, attempt: int, ts: bytes, text: str) -> bytes:
    """A TokenEvent's JSON after event_head, byte for byte as dump_event writes it, without building
    the model (`ts`: to_json of the time, one for a whole write): the worker numbers tens of
    thousands a second."""
    return b'"seq":%d,"attempt":%d,"ts":%b,"type":"token","text":%b}' % (seq, attempt, ts, to_json(text))


def start_body(seq: int, attempt: int, ts: float, worker_id: str, model: str) -> bytes:
    """A StartEvent's JSON (not resumed) after event_head, byte for byte as dump_event writes it,
    without building the model: every job starts with one."""
    return b'"seq":%d,"attempt":%d,"ts":%b,"type":"start","worker_id":%b,"model":%b}' % (
        seq,
        attempt,
        to_json(ts),
        to_json(worker_id),
        to_json(model),
    )


def done_body(
    seq: int,
    attempt: int,
    ts: bytes,
    usage: TokenUsage,
    cost: float | None,
    finish_reason: str | None,
    model: str,
) -> bytes:
    """A DoneEvent's JSON (no fallback) after event_head, byte for byte as dump_event writes it (`ts`:
    to_json of the time), without building the model: every completed job ends with one."""
    return (
        b'"seq":%d,"attempt":%d,"ts":%b,"type":"done","usage":%b,"cost":%b,"finish_reason":%b,"model":%b}'
        % (
            seq,
            attempt,
            ts,
            usage.model_dump_json().encode(),
            to_json(cost),
            to_json(finish_reason),
            to_json(model),
        )
    )


_COUNTS = tuple(str(n) for n in range(64))  # a job's event count as the script's argument
# its flags' bytes (shared.events._append), by (ended, retried, spliced, journaled, short)
_FLAGS = {
    flags: "".join("1" if flag else "0" for flag in flags)
    for flags in itertools.product((False, True), repeat=5)
}


@functools.lru_cache(maxsize=4096)
def _spliced(job_id: str) -> bool:
    """Whether the script can put the job's head back itself (an id JSON does not escape)."""
    try:
        return event_head(job_id) == b'{"job_id":"%b",' % job_id.encode()
    except UnicodeEncodeError:
        return False


# The job id is spliced back into each event here, so it crosses the wire once per job, not per
# event; the prefixes and limits are constants of the script, not arguments sent with every call.
@script(
    f"""
local failures, answered, size = {{}}, 0, #batch
local i = 1
while i <= size do
  local job, count = batch[i], tonumber(batch[i + 1])
  -- the flags' bytes (49: '1'), read in one call: ended? retried? job id left out? journal entries?
  -- short stream (fewer events than the trim's length even with these: no trim to ask for)?
  local ended, retried, spliced, journaled, short = string.byte(batch[i + 2], 1, 5)
  local stream, channel = '{keys.STREAM_PREFIX}' .. job, '{keys.EVENTS_PREFIX}' .. job
  local head, failed, skip, journal, entries = '', '', 0, nil, 0
  if journaled == 49 then entries = tonumber(batch[i + 3 + count]) end
  if entries > 0 then  -- the journal entries and the events announcing them: all written, or none
    journal = '{keys.JOURNAL_PREFIX}' .. job
    local t = redis.call('TYPE', journal)['ok']
    if t ~= 'none' and t ~= 'hash' then failed = 'WRONGTYPE ' .. journal .. ' is not a hash' end
  end
  if spliced == 49 then head = '{{"job_id":"' .. job .. '",' end
  if retried == 49 then  -- a failed write may have landed: never store an event twice
    local last = redis.pcall('XREVRANGE', stream, '+', '-', 'COUNT', 1)
    if type(last) == 'table' and last[1] then
      local ok, seen = pcall(cjson.decode, last[1][2][2])
      local first = cjson.decode(head .. batch[i + 3])
      if ok and type(seen) == 'table' and seen.attempt == first.attempt and type(seen.seq) == 'number' then
        skip = math.max(0, math.min(count, seen.seq - first.seq + 1))
      end
    end
  end
  if failed ~= '' then skip = count end
  for k = skip + 1, count do
    local data = head .. batch[i + 2 + k]
    local added
    if short == 49 then
      added = redis.pcall('XADD', stream, '*', 'event', data)
    else
      added = redis.pcall('XADD', stream, 'MAXLEN', '~', {keys.STREAM_MAXLEN}, '*', 'event', data)
    end
    if type(added) == 'table' and added.err then failed = added.err break end
    redis.call('PUBLISH', channel, data)
  end
  if failed == '' and ended == 49 then
    redis.call('EXPIRE', stream, {keys.ENDED_STREAM_SECONDS})
  end
  if failed == '' and entries > 0 then  -- HSET by step: a retried write stores an entry once
    for k = 1, entries do
      redis.call('HSET', journal, batch[i + 2 + count + 2 * k], batch[i + 3 + count + 2 * k])
    end
    redis.call('EXPIRE', journal, {keys.JOURNAL_TTL_SECONDS})
  end
  answered = answered + 1
  failures[answered] = failed
  i = i + 3 + count + (entries > 0 and 1 + 2 * entries or 0)
end
return failures
"""
)
async def _append(redis, *, batch: Args) -> list[bytes]:
    """Per job of `batch` (job id, event count, flags: ended? retried? job id left out? journal entries?
    short stream?,
    events…, then with journal entries their count and (step, entry) pairs): append each event to the
    job's stream, then publish it, and store the entries in its journal; '' or the error that stopped
    that job alone (its stream or journal key holds junk)."""
    ...


async def write_wired(
    redis, jobs: Mapping[str, Sequence[tuple[str, bytes]]], retried: frozenset[str] = frozenset(),
    journal: dict[str, list[tuple[int, bytes]]] | None = None, short: frozenset[str] = frozenset(),
) -> dict[str, Exception]:  # fmt: skip
    """Store and publish each job's events, (type, its JSON after event_head) in order, in one
    command; answers the jobs whose events Redis refused, with the error. Raises when the whole write
    failed (Redis away, out of memory).

    One script, not a pipeline of XADD + PUBLISH per event: each event crosses the wire once, and
    one reply comes back, not two per event. Stream first: any event a live reader sees is already
    there for a reader that replays. A finished job's stream expires ENDED_STREAM_SECONDS after its
    ending (its result stays); a running one's is renewed by the worker's heartbeat. For the jobs in `retried` (an earlier write of these
    events failed, maybe after Redis ran it) the events already at the stream's end are skipped.
    `journal`: per job, (step, entry) pairs for its journal (worker/journal.py), stored in the same
    script as the job's events, so a step is journaled exactly when the event announcing it is.
    `short`: jobs whose stream holds fewer than STREAM_MAXLEN events with these (the writer's count):
    their XADDs ask for no trim, whose three arguments were ~15 % of Redis's CPU for a token write.
    """
    batch: list[str | bytes] = []
    journal = journal or {}
    add, more = batch.append, batch.extend  # (per job and event: 1,000 streams make 1,000 jobs a write)
    for job_id, owned in jobs.items():
        spliced = _spliced(job_id)  # the script puts the head back; a job id JSON escapes goes whole
        # (a paused job's stream lives as long as its question: worker/pause.py set its expiry)
        ended = False
        for kind, _ in owned:  # (a loop, not any(): a generator per job is a cost at 1,000 jobs)
            if kind not in _GOING_ON:
                ended = True
                break
        entries = journal.get(job_id) if journal else None
        add(job_id)
        add(_COUNTS[len(owned)] if len(owned) < len(_COUNTS) else str(len(owned)))
        add(_FLAGS[ended, job_id in retried, spliced, bool(entries), job_id in short])
        if len(owned) == 1:  # (the usual: one token event a job)
            add(owned[0][1] if spliced else event_head(job_id) + owned[0][1])
        else:
            more([d for _, d in owned] if spliced else [event_head(job_id) + d for _, d in owned])
        if entries:
            batch += [str(len(entries)), *(x for step, entry in entries for x in (str(step), entry))]
    answers = await _append(redis, batch=batch)
    return {
        job_id: BaseParser.parse_error(answer.decode(errors="replace"))
        for job_id, answer in zip(jobs, answers, strict=True)
        if answer
    }


async def publish_events(redis, events: Sequence[Event]) -> None:
    """Append events to their job's stream, then publish them, in one round trip; raises on a refusal.
    Each write looks first for its events at the stream's end (`retried`): redis-py sends the write
    again when its connection drops with the reply on the way, and that second run stores nothing
    twice (a queued job's `cancelled`, the one caller: one XREVRANGE more in the script)."""
    jobs: dict[str, list[tuple[str, bytes]]] = {}
    for event in events:
        body = dump_event(event)[len(event_head(event.job_id)) :]
        jobs.setdefault(event.job_id, []).append((event.type, body))
    for error in (await write_wired(redis, jobs, retried=frozenset(jobs))).values():
        raise error
