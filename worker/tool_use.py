"""Tool use inside a chat job: offer the named MCP servers' tools, run the calls the model asks for,
and hand the results back as the next turn's messages.

A failing tool never fails the job: its error goes to the model as the tool's answer, so the model
can retry or explain. Every call and result is published on the job's stream as it happens, and
journaled with it (worker/journal.py): a call whose result the journal holds is not run again, and
each call carries the idempotency key of its step, the same on every attempt. A call that needs its
caller's approval (TOOL_APPROVAL) pauses the job until an answer comes (worker/pause.py); a declined
call is not run, and the model is told so.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from shared.approvals import Answer, ask_text
from shared.models import Question, ToolCallRecord
from shared.tool_client import ToolOutcome, ToolServers
from shared.tool_config import function_name
from worker import journal
from worker.pause import InputRequired, needs_approval
from worker.providers import ToolCall, ToolSpec
from worker.publisher import EventPublisher

DESCRIPTION_MAX_CHARS = 1024  # providers cap function descriptions; MCP servers do not
MAX_CALLS_PER_TURN = 32  # more in one turn are answered with an error, not run
ARGUMENTS_SHOWN_CHARS = 2000  # of arguments that are not a JSON object, in events and results


@dataclass(frozen=True)
class Toolbox:
    specs: tuple[ToolSpec, ...]
    routes: dict[str, tuple[str, str]]  # function name -> (server, tool)
    asks: frozenset[str] = frozenset()  # function names whose calls wait for the caller's approval


@dataclass(frozen=True)
class TurnLog:
    """Where one turn's tool calls stand in the job's journal."""

    job_id: str
    step: int  # the turn's step; its calls are step + 1, step + 2, … in the order the model asked
    entry: bytes | None  # the turn's journal entry, written with its tool_call events (None: not journaled)
    replayed: bool = False  # the turn came from the journal: its tool_call events are in the stream already
    results: dict[int, ToolCallRecord] | None = None  # by step: results the journal holds, not run again
    answers: dict[int, Answer] = field(default_factory=dict)  # by step: the caller's answers to its questions
    wait_seconds: float = 0.0  # how long a question waits for its answer (INPUT_WAIT_SECONDS)


async def open_toolbox(servers: ToolServers, names: list[str], approval: str = "none") -> Toolbox:
    """The tools of the named servers as functions; raises ToolServerError if one cannot be listed.
    `approval`: TOOL_APPROVAL, which of them wait for the caller's approval."""
    servers.check_names(names)
    specs: list[ToolSpec] = []
    routes: dict[str, tuple[str, str]] = {}
    asks: set[str] = set()
    for name in names:
        for tool in await servers.tools(name):
            fn = function_name(name, tool.name)
            suffix = 1
            while fn in routes:  # `get.x` and `get_x` sanitise alike: keep both callable
                fn, suffix = function_name(name, f"{tool.name}_{suffix}"), suffix + 1
            routes[fn] = (name, tool.name)
            if needs_approval(approval, tool.read_only, tool.destructive):
                asks.add(fn)
            description = tool.description or f"{tool.name} (from the MCP server {name})"
            specs.append(ToolSpec(fn, description[:DESCRIPTION_MAX_CHARS], tool.input_schema))
    return Toolbox(tuple(specs), routes, frozenset(asks))


async def run_tool_calls(
    toolbox: Toolbox,
    servers: ToolServers,
    calls: tuple[ToolCall, ...],
    *,
    text: str,
    round_no: int,
    publisher: EventPublisher,
    records: list[ToolCallRecord],
    log: TurnLog,
) -> list[dict[str, Any]]:
    """Run one turn's calls (concurrently), publish and journal them, and return the messages for the
    next turn."""
    planned, announced = [], []
    done = log.results or {}
    for index, call in enumerate(calls):
        server, tool = toolbox.routes.get(call.name, ("?", call.name))
        arguments = _arguments(call.arguments)
        record = done.get(log.step + 1 + index) or ToolCallRecord(
            call_id=call.id, server=server, tool=tool, arguments=arguments, round=round_no
        )
        records.append(record)
        planned.append((call, record))
        announced.append(("tool_call", {"call_id": call.id, "server": server, "tool": tool,
                                        "arguments": arguments, "round": round_no, "step": log.step if log.entry else None}))  # fmt: skip
    if not log.replayed:  # the turn and every call it asked for: one write
        await publisher.journaled([(log.step, log.entry)] if log.entry else [], announced)
    answers = log.answers
    for index, (call, record) in enumerate(planned):  # before any call runs: the first unanswered question
        step = log.step + 1 + index
        runnable = index < MAX_CALLS_PER_TURN and isinstance(record.arguments, dict)
        if runnable and call.name in toolbox.asks and step not in done and step not in answers:
            raise InputRequired(_question(log, step, record))

    async def run(index: int, call: ToolCall, record: ToolCallRecord) -> ToolOutcome:
        step = log.step + 1 + index
        if step in done:
            return ToolOutcome(record.result or "", record.is_error)  # journaled: not run again
        started = time.monotonic()
        if index >= MAX_CALLS_PER_TURN:
            outcome = ToolOutcome(f"Error: not run: at most {MAX_CALLS_PER_TURN} tool calls a turn", True)
        elif call.name not in toolbox.routes:
            outcome = ToolOutcome(f"Error: there is no tool named {call.name!r}", True)
        elif not isinstance(record.arguments, dict):
            outcome = ToolOutcome(
                f"Error: the arguments must be a JSON object, got {str(record.arguments)[:200]!r}", True
            )
        elif call.name in toolbox.asks and not (answer := answers[step]).approved:
            outcome = ToolOutcome(f"Error: not run: the user declined this call{_said(answer)}", True)
        else:
            key = journal.idempotency_key(log.job_id, step)
            outcome = await servers.call(record.server, record.tool, record.arguments, idempotency_key=key)
        record.result, record.is_error = outcome.text, outcome.is_error
        record.duration_ms = round((time.monotonic() - started) * 1000, 2)
        told = {"call_id": call.id, "server": record.server, "tool": record.tool, "result": outcome.text,
                "is_error": outcome.is_error, "duration_ms": record.duration_ms, "step": step}  # fmt: skip
        # published (and journaled) as soon as this call ends, not when the slowest does
        await publisher.journaled([(step, journal.result_entry(record))], [("tool_result", told)])
        return outcome

    outcomes = await asyncio.gather(*(run(i, call, record) for i, (call, record) in enumerate(planned)))
    messages: list[dict[str, Any]] = [
        {
            "role": "assistant",
            "content": text or None,
            "tool_calls": [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in calls
            ],
        }
    ]
    for (call, _), outcome in zip(planned, outcomes, strict=True):
        content = outcome.text
        if outcome.is_error and not content.startswith("Error:"):
            content = f"Error: {content}"  # a tool's own error result: say so to the model
        messages.append({"role": "tool", "tool_call_id": call.id, "content": content})
    return messages


def _question(log: TurnLog, step: int, record: ToolCallRecord) -> Question:
    now = time.time()
    return Question(
        key=journal.idempotency_key(log.job_id, step), step=step, server=record.server, tool=record.tool,
        arguments=record.arguments, question=ask_text(record.server, record.tool, record.arguments),
        asked_at=now, expires_at=now + log.wait_seconds,
    )  # fmt: skip


def _said(answer: Answer) -> str:
    return f"; they said: {answer.note}" if answer.note else ""


def _arguments(raw: str) -> dict[str, Any] | str:
    try:
        parsed = json.loads(raw or "{}")
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
        return raw[:ARGUMENTS_SHOWN_CHARS]
    return parsed if isinstance(parsed, dict) else raw
