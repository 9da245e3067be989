"""A tool loop's journal: a job re-run after its worker died goes on from its last finished step,
and no tool that had answered is called again.

Each finished model turn that asks for tools (its text, its calls, its usage) and each finished
tool result is one entry of `mcpq:journal:<job_id>` (a hash: step -> JSON), written in the same
script as the event that announces it (`EventPublisher.journaled`), so the journal and the job's
stream never disagree. Steps are numbered in the order the loop takes them: a turn, then each of
its calls (`turn + 1`, `turn + 2`, …); the same on every attempt, which makes `<job_id>:<step>` the
idempotency key of a tool call. The turn that answers (no tool calls) is not journaled: its `done`
event ends the job. The journal grows by one entry per step (the messages are not copied into each).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from shared import approvals, damaged, keys
from shared.events import TokenUsage
from shared.models import ToolCallRecord
from worker.providers import StreamEnd, ToolCall

log = logging.getLogger("worker.journal")


def idempotency_key(job_id: str, step: int) -> str:
    """What a tools/call carries in `_meta["mcp-queue/idempotency-key"]` (shared.tool_client)."""
    return f"{job_id}:{step}"


@dataclass(frozen=True)
class Turn:
    """A journaled model turn, as the loop goes on from it."""

    text: str
    end: StreamEnd
    model: str  # the model the call was made to (after MODEL_FALLBACKS), for the turns after it
    fallback_from: str | None


@dataclass
class Replay:
    """What the journal holds: turns and tool results, by step."""

    turns: dict[int, Turn] = field(default_factory=dict)
    results: dict[int, ToolCallRecord] = field(default_factory=dict)  # by step
    last_step: int = 0  # 0: nothing journaled, the job starts afresh


def turn_entry(text: str, end: StreamEnd, model: str, fallback_from: str | None) -> bytes:
    return json.dumps({
        "kind": "turn", "text": text, "model": model, "fallback_from": fallback_from,
        "end": {"model": end.model, "finish_reason": end.finish_reason,
                "usage": end.usage.model_dump() if end.usage else None,
                "tool_calls": [[c.id, c.name, c.arguments] for c in end.tool_calls]},
    }, ensure_ascii=False).encode()  # fmt: skip


def result_entry(record: ToolCallRecord) -> bytes:
    return json.dumps({"kind": "tool", **record.model_dump(mode="json")}, ensure_ascii=False).encode()


def _turn(entry: dict) -> tuple[Turn, int]:
    end = entry["end"]
    calls = tuple(ToolCall(str(i), str(n), str(a)) for i, n, a in end["tool_calls"])
    usage = TokenUsage.model_validate(end["usage"]) if end["usage"] is not None else None
    stream_end = StreamEnd(end["model"], end["finish_reason"], usage, calls)
    return Turn(str(entry["text"]), stream_end, str(entry["model"]), entry["fallback_from"]), len(calls)


async def read(redis, job_id: str) -> Replay:
    """The journal's finished steps, in order, up to the first one missing: a turn, then its calls'
    results (some may be missing: those calls are run again). Junk ends the replay there, and the
    entries after it are removed: the re-run writes those steps afresh, and a later re-run must not
    mistake an old one for its own."""
    key = keys.journal(job_id)
    raw = await damaged.read(redis.hgetall(key), key, {})
    replay = _replay(job_id, raw)
    if stale := [step for step in raw if not _kept(step, replay.last_step)]:
        log.warning("job %s: removing %d journal entries after the damaged one", job_id, len(stale))
        await redis.hdel(key, *stale)
    return replay


def _kept(step, last: int) -> bool:
    """Whether a journal field names a step up to `last` (one the replay took, or skipped as missing)."""
    try:
        return int(step) <= last
    except (ValueError, TypeError):
        return False


def _replay(job_id: str, raw: dict) -> Replay:
    entries: dict[int, dict] = {}
    for step, value in raw.items():
        try:
            entries[int(step)] = json.loads(value)
        except (ValueError, TypeError):
            log.warning("job %s: skipping a journal entry that is not JSON (step %.20r)", job_id, step)
    replay, step = Replay(), 1
    first = entries.get(1)
    if isinstance(first, dict) and first.get("kind") == "tool":  # a call_tool job: one call, no model
        try:
            replay.results[1], replay.last_step = ToolCallRecord.model_validate(first), 1
        except ValueError:
            log.warning("job %s: journal entry 1 is damaged; running the call again", job_id)
        return replay
    while isinstance(entry := entries.get(step), dict) and entry.get("kind") == "turn":
        try:
            turn, calls = _turn(entry)
            results = {s: ToolCallRecord.model_validate(entries[s]) for s in range(step + 1, step + 1 + calls)
                       if isinstance(entries.get(s), dict) and entries[s].get("kind") == "tool"}  # fmt: skip
        except (KeyError, TypeError, ValueError):
            log.warning("job %s: journal entry %d is damaged; going on from the step before it", job_id, step)
            break
        replay.turns[step] = turn
        replay.results.update(results)
        replay.last_step = max([step, *results])
        if len(results) < calls:
            break  # the calls that had not answered are run again: later steps cannot have happened
        step += 1 + calls
    return replay


async def ended(redis, job_id: str) -> None:
    """The job has its ending: its journal goes with its stream (ENDED_STREAM_SECONDS), and its
    questions and answers (worker/pause.py) with it."""
    try:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.expire(keys.journal(job_id), keys.ENDED_STREAM_SECONDS)
            approvals.forget(pipe, job_id)
            await pipe.execute()
    except (RedisError, OSError) as e:  # it expires a day after its last step anyway
        log.warning("job %s: could not set its journal to expire: %s", job_id, type(e).__name__)
