"""One worker-kill trial, shared by tests/faults/test_worker_killed.py and bench/kill_loop.py.

A caller runs a job through the messenger's JobClient; once the job's first tokens have reached the
caller, the worker running it gets SIGKILL. Another worker must run it again (attempt 2) as soon as
the dead worker's lease lapses, and the caller must get exactly one whole answer.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field

from observe import LONG_MESSAGE, Recorder, expected_text, starts, terminal_events
from readers import parse_stream

from shared import keys
from shared.models import ChatRequest, JobResult


@dataclass
class KillTrial:
    message: str
    result: JobResult | None = None
    seen: Recorder = field(default_factory=Recorder)
    stream: list[dict] = field(default_factory=list)
    killed: subprocess.Popen | None = None
    killed_at: float | None = None

    @property
    def expected(self) -> str:
        return expected_text(self.message)

    @property
    def recovery_seconds(self) -> float | None:
        """From the SIGKILL to the moment the caller saw attempt 2 start."""
        restarted = self.seen.arrival("start", 2)
        if self.killed_at is None or restarted is None:
            return None
        return restarted - self.killed_at

    @property
    def complete(self) -> bool:
        """One whole answer: completed, exactly the expected text, one terminal event in the stream."""
        return (
            self.result is not None
            and self.result.status == "completed"
            and self.result.ai_response == self.expected
            and len(terminal_events(self.stream)) == 1
        )

    @property
    def lost(self) -> bool:
        return self.result is None or self.result.status != "completed"

    @property
    def mixed(self) -> bool:
        """Completed, but with text that is not the one whole answer, or with more than one ending."""
        return not self.lost and not self.complete

    def describe(self) -> str:
        r = self.result
        return (
            f"status={r and r.status} attempt={r and r.attempt} error={r and r.error} "
            f"starts={starts(self.stream)} terminal={[e['type'] for e in terminal_events(self.stream)]} "
            f"text={r and r.ai_response!r}"
        )


async def kill_mid_stream(
    runtime, procs: list[subprocess.Popen], *, message: str = LONG_MESSAGE, kill_after_words: int = 5,
    timeout: float = 60.0,
) -> KillTrial:  # fmt: skip
    """Run a job and SIGKILL the worker (one of `procs`) that streams it once `kill_after_words` arrived."""
    trial = KillTrial(message)

    async def on_event(event, transcript) -> None:
        await trial.seen(event, transcript)
        if (
            trial.killed is None
            and event is not None
            and event.type == "token"
            and event.attempt == 1
            and trial.seen.words(1) >= kill_after_words
        ):
            beat = json.loads(await runtime.redis.get(keys.worker(transcript.worker_id)))
            (proc,) = [p for p in procs if p.pid == beat["pid"]]  # only a process the caller started
            proc.kill()
            trial.killed, trial.killed_at = proc, time.monotonic()

    trial.result = await runtime.jobs.run(ChatRequest(message=message), on_event, timeout=timeout)
    trial.stream = parse_stream(await runtime.redis.xrange(keys.stream(trial.result.job_id)))
    return trial
