"""Watching jobs from the test process while faults are injected: what the caller saw, what the job's
stream holds, which process a worker id is, and how a job ended."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

from shared import keys
from shared.errors import JobNotFound
from shared.events import TERMINAL, Event
from shared.models import FINAL_STATUSES, JobResult
from worker.providers.mock import mock_reply

ROOT = Path(__file__).resolve().parents[2]
LONG_MESSAGE = " ".join(f"word{i}" for i in range(40))  # the mock echoes all 40: a 55-token answer


def expected_text(message: str) -> str:
    """The whole answer the mock provider gives to `message`, on any worker, on any attempt."""
    return "".join(mock_reply([{"role": "user", "content": message}]))


class Recorder:
    """An `on_event` for JobClient.run / wait: every event the caller was given, with its arrival time."""

    def __init__(self) -> None:
        self.events: list[tuple[float, Event]] = []

    async def __call__(self, event: Event | None, transcript) -> None:
        if event is not None:
            self.events.append((time.monotonic(), event))

    def text(self, attempt: int) -> str:
        return "".join(e.text for _, e in self.events if e.type == "token" and e.attempt == attempt)

    def words(self, attempt: int) -> int:
        return len(self.text(attempt).split())

    def arrival(self, kind: str, attempt: int) -> float | None:
        return next((t for t, e in self.events if e.type == kind and e.attempt == attempt), None)


def terminal_events(events: list[dict]) -> list[dict]:
    return [e for e in events if e["type"] in TERMINAL]


def starts(events: list[dict]) -> list[int]:
    return [e["attempt"] for e in events if e["type"] == "start"]


async def ended(jobs, job_id: str, timeout: float = 20.0) -> JobResult:
    """Poll the job until it is completed, failed or cancelled (a job nobody knows yet counts as not ended)."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                job = await jobs.get(job_id)
            except JobNotFound:
                job = None
            if job is not None and job.status in FINAL_STATUSES:
                return job
            await asyncio.sleep(0.05)


def heartbeat(client, worker_id: str) -> dict | None:
    raw = client.get(keys.worker(worker_id))
    return json.loads(raw) if raw else None


async def exit_code(proc: subprocess.Popen, timeout: float = 20.0) -> int:
    return await asyncio.to_thread(proc.wait, timeout)
