"""One durable tool-loop trial, shared by tests/faults/test_durable_tool_loop.py and bench/durable_kill.py.

The model (tests/openai_server.py) asks for one `ledger__charge` call, then answers slowly with the
tool's result; the tool is tests/mcp_ledger_server.py over stdio, which writes one ledger line per
call it receives, with the call's idempotency key. The worker running the job gets SIGKILL either
just after the tool's result was published (`after_result`: the re-run must not call it again) or
while the tool runs (`during_call`: the re-run may call it again, with the same key). Another worker
runs the job again; its caller must get one whole answer. The first attempt waits where its kill
must find it (`Holds`) until the kill, however late a loaded machine makes it: no kill misses.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from mcp_ledger_server import PREFIX, read_ledger
from observe import terminal_events
from openai_server import eventually
from readers import parse_stream

from shared import keys
from shared.models import ChatRequest, JobResult

LEDGER_SERVER = str(Path(__file__).resolve().parents[1] / "mcp_ledger_server.py")
PREAMBLE = "Let me charge that for you. "
REPLY = "The ledger says"
EXPECTED = f"{PREAMBLE}{REPLY} {PREFIX} charged 5"


def servers(ledger: Path) -> dict:
    """MCP_SERVERS for the workers and the messenger: the ledger server over stdio."""
    return {"ledger": {"command": sys.executable, "args": [LEDGER_SERVER], "env": {"LEDGER": str(ledger)}}}


@dataclass(frozen=True)
class Holds:
    """Where a trial's first attempt waits for its kill: the model's answer to the tool's result until
    `answer` is set (`after_result`), the tool's call until the file `release` exists (`during_call`)."""

    answer: threading.Event
    release: Path

    def hold(self, when: str) -> None:
        if when == "after_result":
            self.answer.clear()
            self.release.touch()
        else:
            self.answer.set()
            self.release.unlink(missing_ok=True)

    def let_go(self) -> None:
        """The kill landed: the re-run goes on at once."""
        self.answer.set()
        self.release.touch()


def script(openai_server, ledger: Path) -> Holds:
    """One tool turn (a preamble, then the call), then a slow answer carrying the tool's result."""
    holds = Holds(threading.Event(), ledger.with_name(ledger.name + ".release"))
    arguments = json.dumps({"amount": 5, "hold": str(holds.release)})
    openai_server.script(
        reply=REPLY, tool_preamble=PREAMBLE, tool_calls=[("ledger__charge", arguments)], token_delay=0.1,
        answer_gate=holds.answer,
    )  # fmt: skip
    return holds


@dataclass
class ToolKillTrial:
    when: str  # "after_result" or "during_call"
    result: JobResult | None = None
    told: str = ""  # the text of the caller's transcript at the end: what its stream showed
    stream: list[dict] = field(default_factory=list)
    calls: list[dict] = field(default_factory=list)  # this job's ledger lines
    killed: subprocess.Popen | None = None
    seconds: float = 0.0  # from submit to the answer

    @property
    def duplicates(self) -> int:
        return max(0, len(self.calls) - 1)

    @property
    def keys_agree(self) -> bool:
        """Every call of the job carried the same idempotency key, the job's step 2."""
        return bool(self.result) and {c["key"] for c in self.calls} == {f"{self.result.job_id}:2"}

    @property
    def told_once(self) -> bool:
        """The stream tells the tool call and its result once each."""
        kinds = [e["type"] for e in self.stream]
        return kinds.count("tool_call") == 1 and kinds.count("tool_result") == 1

    @property
    def complete(self) -> bool:
        """One whole answer: completed, the expected text as stored and as told, one ending."""
        return (
            self.result is not None
            and self.result.status == "completed"
            and self.result.ai_response == EXPECTED == self.told
            and len(terminal_events(self.stream)) == 1
        )

    def describe(self) -> str:
        r = self.result
        return (
            f"{self.when}: status={r and r.status} attempt={r and r.attempt} error={r and r.error} "
            f"calls={self.calls} kinds={[(e['type'], e['attempt']) for e in self.stream if e['type'] != 'token']} "
            f"text={r and r.ai_response!r} told={self.told!r}"
        )


async def kill_in_tool_loop(
    runtime, procs: list[subprocess.Popen], ledger: Path, holds: Holds, when: str, timeout: float = 60.0
) -> ToolKillTrial:
    """Run a job and SIGKILL the worker (one of `procs`) running it, `when` the trial says."""
    trial = ToolKillTrial(when)
    watcher: asyncio.Task | None = None
    holds.hold(when)

    async def kill(worker_id: str) -> None:
        beat = json.loads(await runtime.redis.get(keys.worker(worker_id)))
        (proc,) = [p for p in procs if p.pid == beat["pid"]]  # only a process the caller started
        proc.kill()
        trial.killed = proc
        holds.let_go()

    async def once_charged(job_id: str, worker_id: str) -> None:
        await eventually(lambda: any(c["key"] == f"{job_id}:2" for c in read_ledger(ledger)), timeout)
        await kill(worker_id)

    async def on_event(event, transcript) -> None:
        nonlocal watcher
        trial.told = transcript.text
        if event is None or event.attempt != 1 or trial.killed is not None:
            return
        if when == "during_call" and event.type == "start" and watcher is None:
            watcher = asyncio.create_task(once_charged(transcript.job_id, event.worker_id))
        elif when == "after_result" and event.type == "tool_result":
            await kill(transcript.worker_id)

    started = time.monotonic()
    try:
        trial.result = await runtime.jobs.run(
            ChatRequest(message="charge 5", mcp_servers=["ledger"]), on_event, timeout=timeout
        )
    finally:
        holds.let_go()  # (a trial that failed before its kill leaves nothing waiting)
        if watcher is not None:
            watcher.cancel()
    trial.stream = parse_stream(await runtime.redis.xrange(keys.stream(trial.result.job_id)))
    trial.calls = [c for c in read_ledger(ledger) if str(c["key"]).startswith(f"{trial.result.job_id}:")]
    trial.seconds = time.monotonic() - started
    return trial
