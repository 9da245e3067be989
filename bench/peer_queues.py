"""taskiq and SAQ beside mcp-queue and stock arq: the same no-op job, 2 worker processes, same rounds.

Each peer runs bench/peers/queues.py in an environment of its own (`uv run --isolated`, pinned
versions: they need redis-py >= 6, arq 0.28 pins redis<6), against a redis-server of its own, and
stays up for the whole run; each round asks it for its figures. taskiq runs its RedisStreamBroker,
the faster of its two Redis queues here (9 interleaved rounds on 2026-12-03, 3,000 jobs each: 2,219
against ListQueueBroker's 1,654 jobs/s median, start p50 1.13 against 1.01 ms) and, like mcp-queue,
at-least-once (a job is acknowledged when it ends; ListQueueBroker's BRPOP loses a job whose worker
dies). A peer that cannot be started (no uv, no network for the install) is one printed line; the
bench goes on without it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess

from bench.lab import ROOT, Lab

PINS = ("taskiq==0.13.0", "taskiq-redis==1.2.4", "saq==0.26.4")
PEERS = {"taskiq": "taskiq-stream", "SAQ": "saq"}  # shown name: the peer in bench/peers/queues.py
READY_SECONDS = 180  # a first install downloads a few MB


class PeerGone(Exception):
    """The peer's process ended or answered nonsense: its figures stay empty, the bench goes on."""


class PeerFailed(Exception):
    """A peer's job never started: that figure stays empty this round, the peer goes on."""


class Peer:
    def __init__(self, name: str, lab: Lab, proc: subprocess.Popen):
        self.name, self.lab, self.proc = name, lab, proc

    async def _line(self) -> str:
        line = (await asyncio.to_thread(self.proc.stdout.readline)).decode().strip()
        if not line:
            raise PeerGone(f"{self.name} stopped: {self.lab.log_tail(self.proc, 1) or 'no output'}")
        return line

    async def ask(self, command: str, n: int) -> dict[str, float]:
        """Its figures for `start N` or `tput N` (bench/peers/queues.py's commands)."""
        try:
            self.proc.stdin.write(f"{command} {n}\n".encode())
            self.proc.stdin.flush()
            answer = json.loads(await self._line())
        except (OSError, ValueError) as e:
            raise PeerGone(f"{self.name} stopped answering ({type(e).__name__})") from None
        if "error" in answer:
            raise PeerFailed(answer["error"])
        return answer


async def _start(lab: Lab, name: str, uv: str) -> Peer | str:
    """The peer, ready; or why it could not be run."""
    site = lab.site(f"peer-{PEERS[name]}")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    pins = [arg for pin in PINS for arg in ("--with", pin)]
    script = str(ROOT / "bench" / "peers" / "queues.py")
    proc = lab.spawn(
        f"peer-{PEERS[name]}",
        ["run", "--isolated", "--no-project", "--quiet", *pins, "python", script, PEERS[name], site.url],
        env,
        program=uv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    peer = Peer(name, lab, proc)
    try:
        async with asyncio.timeout(READY_SECONDS):
            if await peer._line() == "ready":
                return peer
        raise PeerGone(f"{name} said something else than ready")
    except (PeerGone, TimeoutError) as e:
        lab.stop([proc])
        why = str(e) or f"not ready in {READY_SECONDS} s"
        return f"{name} could not be run, its figures stay empty: {why}"


async def start_peers(lab: Lab) -> tuple[dict[str, Peer], list[str]]:
    """Every peer that starts, by shown name, and one line for each that cannot."""
    uv = shutil.which("uv")
    if uv is None:
        return {}, [f"{' and '.join(PEERS)} could not be run, their figures stay empty: uv is not on PATH"]
    started = await asyncio.gather(*(_start(lab, name, uv) for name in PEERS))
    return {p.name: p for p in started if isinstance(p, Peer)}, [p for p in started if isinstance(p, str)]
