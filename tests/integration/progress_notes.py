"""What an MCP client author does with mcp-queue's progress: every notifications/progress a client got,
with its `_meta`, per job; the answer is the messages joined from the last `mcp-queue/restart` on."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

JOB_ID, STATUS, RESTART = "mcp-queue/jobId", "mcp-queue/status", "mcp-queue/restart"


@dataclass
class Note:
    progress: float
    message: str | None
    meta: dict[str, Any]


@dataclass
class ProgressNotes:
    """A `message_handler` for `mcp.Client`: keeps each progress notification, by the job it is about."""

    by_job: dict[str, list[Note]] = field(default_factory=lambda: defaultdict(list))
    unlabelled: list[Note] = field(default_factory=list)
    listeners: list = field(default_factory=list)  # sync callables(job_id, note), e.g. a worker killer

    async def __call__(self, message) -> None:
        if getattr(message, "method", None) != "notifications/progress":
            return
        params = message.params
        note = Note(params.progress, params.message, dict(params.meta or {}))
        job_id = note.meta.get(JOB_ID)
        if not isinstance(job_id, str):
            self.unlabelled.append(note)
            return
        self.by_job[job_id].append(note)
        for listener in self.listeners:
            listener(job_id, note)

    def answer(self, job_id: str) -> str:
        """What a client shows: the messages joined, from the last restart on."""
        notes = self.by_job[job_id]
        restarts = [i for i, n in enumerate(notes) if RESTART in n.meta]
        start = restarts[-1] if restarts else 0
        return "".join(n.message for n in notes[start:] if n.message)

    def everything(self, job_id: str) -> str:
        return "".join(n.message for n in self.by_job[job_id] if n.message)

    def keepalives(self, job_id: str) -> list[Note]:
        """Status-only notifications while the job waited (the first one, at enqueue, excepted)."""
        return [n for n in self.by_job[job_id][1:] if n.message is None and n.meta.get(STATUS) == "queued"]


async def want_progress(progress: float, total: float | None, message: str | None) -> None:
    """A progress_callback: passing one makes the client ask for progress (a progressToken)."""
