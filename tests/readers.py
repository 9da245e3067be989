"""How tests read what the system wrote: a job's event stream as Redis holds it, and the text of an
MCP tool result. One copy for every suite."""

from __future__ import annotations

import asyncio
import json

import anyio
from mcp_types import ResourceUpdatedNotification

from shared import keys
from shared.events import Event, parse_event


def parse_stream(entries) -> list[dict]:
    """A job's stream entries as dicts; entries that are not events (garbage pushed by hand) are skipped."""
    events = []
    for _, fields in entries:
        try:
            event = json.loads(fields.get(b"event", b""))
        except ValueError:
            continue
        if isinstance(event, dict) and "type" in event:
            events.append(event)
    return events


def stream_events(client, job_id: str) -> list[dict]:
    """The job's event history as Redis holds it (sync client), as dicts."""
    return parse_stream(client.xrange(keys.stream(job_id)))


async def job_events(redis, job_id: str) -> list[Event]:
    """The job's event history (asyncio client), parsed into events."""
    return [parse_event(fields[b"event"]) for _, fields in await redis.xrange(keys.stream(job_id))]


async def follow(jobs, job_id: str, timeout: float = 30) -> tuple[asyncio.Task, list[str]]:
    """A follow of `job_id` (JobClient.wait) under way, and the types of the events it hears."""
    heard: list[str] = []

    async def on_event(event, _) -> None:
        if event is not None:
            heard.append(event.type)

    following = asyncio.create_task(jobs.wait(job_id, timeout=timeout, on_event=on_event))
    await asyncio.sleep(0.2)  # (following)
    return following, heard


def text_of(result) -> str:
    """An MCP CallToolResult's text blocks, joined."""
    return " ".join(getattr(c, "text", "") for c in result.content)


def progress_recorder() -> tuple[list[str], object]:
    """A progress_callback that keeps each notification's message; returns (messages, callback)."""
    messages: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        if message is not None:
            messages.append(message)

    return messages, on_progress


class UpdatesRecorder:
    """A `message_handler` that keeps the URI of every notifications/resources/updated; `heard(n)`
    is set once n of them came."""

    def __init__(self, *counts: int):
        self.uris: list[str] = []
        self._heard = {n: anyio.Event() for n in counts}

    def heard(self, count: int) -> anyio.Event:
        return self._heard[count]

    async def __call__(self, message) -> None:
        if isinstance(message, ResourceUpdatedNotification):
            self.uris.append(str(message.params.uri))
            if len(self.uris) in self._heard:
                self._heard[len(self.uris)].set()
