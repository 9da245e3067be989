"""Tool use inside a chat job: offer the named MCP servers' tools, run the calls the model asks for,
and hand the results back as the next turn's messages.

A failing tool never fails the job: its error goes to the model as the tool's answer, so the model
can retry or explain. Every call and result is published on the job's stream as it happens.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from shared.models import ToolCallRecord
from shared.tool_client import ToolOutcome, ToolServers
from shared.tool_config import function_name
from worker.providers import ToolCall, ToolSpec
from worker.publisher import EventPublisher

DESCRIPTION_MAX_CHARS = 1024  # providers cap function descriptions; MCP servers do not
MAX_CALLS_PER_TURN = 32  # more in one turn are answered with an error, not run
ARGUMENTS_SHOWN_CHARS = 2000  # of arguments that are not a JSON object, in events and results


@dataclass(frozen=True)
class Toolbox:
    specs: tuple[ToolSpec, ...]
    routes: dict[str, tuple[str, str]]  # function name -> (server, tool)


async def open_toolbox(servers: ToolServers, names: list[str]) -> Toolbox:
    """The tools of the named servers as functions; raises ToolServerError if one cannot be listed."""
    servers.check_names(names)
    specs: list[ToolSpec] = []
    routes: dict[str, tuple[str, str]] = {}
    for name in names:
        for tool in await servers.tools(name):
            fn = function_name(name, tool.name)
            suffix = 1
            while fn in routes:  # `get.x` and `get_x` sanitise alike: keep both callable
                fn, suffix = function_name(name, f"{tool.name}_{suffix}"), suffix + 1
            routes[fn] = (name, tool.name)
            description = tool.description or f"{tool.name} (from the MCP server {name})"
            specs.append(ToolSpec(fn, description[:DESCRIPTION_MAX_CHARS], tool.input_schema))
    return Toolbox(tuple(specs), routes)


async def run_tool_calls(
    toolbox: Toolbox,
    servers: ToolServers,
    calls: tuple[ToolCall, ...],
    *,
    text: str,
    round_no: int,
    publisher: EventPublisher,
    records: list[ToolCallRecord],
) -> list[dict[str, Any]]:
    """Run one turn's calls (concurrently), publish them, and return the messages for the next turn."""
    planned = []
    for call in calls:
        server, tool = toolbox.routes.get(call.name, ("?", call.name))
        arguments = _arguments(call.arguments)
        record = ToolCallRecord(
            call_id=call.id, server=server, tool=tool, arguments=arguments, round=round_no
        )
        records.append(record)
        planned.append((call, record))
        await publisher.tool_call(
            call_id=call.id, server=server, tool=tool, arguments=arguments, round=round_no
        )

    async def run(index: int, call: ToolCall, record: ToolCallRecord) -> ToolOutcome:
        started = time.monotonic()
        if index >= MAX_CALLS_PER_TURN:
            outcome = ToolOutcome(f"Error: not run: at most {MAX_CALLS_PER_TURN} tool calls a turn", True)
        elif call.name not in toolbox.routes:
            outcome = ToolOutcome(f"Error: there is no tool named {call.name!r}", True)
        elif not isinstance(record.arguments, dict):
            outcome = ToolOutcome(
                f"Error: the arguments must be a JSON object, got {str(record.arguments)[:200]!r}", True
            )
        else:
            outcome = await servers.call(record.server, record.tool, record.arguments)
        record.result, record.is_error = outcome.text, outcome.is_error
        record.duration_ms = round((time.monotonic() - started) * 1000, 2)
        await publisher.tool_result(
            call_id=call.id,
            server=record.server,
            tool=record.tool,
            result=outcome.text,
            is_error=outcome.is_error,
            duration_ms=record.duration_ms,
        )  # fmt: skip  (published as soon as this call ends, not when the slowest does)
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


def _arguments(raw: str) -> dict[str, Any] | str:
    try:
        parsed = json.loads(raw or "{}")
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
        return raw[:ARGUMENTS_SHOWN_CHARS]
    return parsed if isinstance(parsed, dict) else raw
