"""Kill a worker mid-stream, N times over: does every caller still get one whole answer?

Each trial runs a fresh job through the messenger's JobClient with two workers up, SIGKILLs the worker
streaming it once its first tokens reached the caller (tests/faults/worker_kill.py, the same trial the
fault suite runs), and checks what the caller got. The killed worker is replaced before the next trial.

    uv run python bench/kill_loop.py --trials 50

Exits 1 if any answer was lost, or had text of the dead attempt mixed in (or a second ending).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "tests", ROOT / "tests" / "faults"):
    sys.path.insert(0, str(path))

from redis_server import RedisServer  # noqa: E402
from runtimes import runtime_for  # noqa: E402
from worker_kill import KillTrial, kill_mid_stream  # noqa: E402

from shared import keys  # noqa: E402

_SETTINGS_PREFIXES = ("OPENAI_", "AI_", "MCP_", "MOCK_", "REDIS_", "WORKER_", "LOG_", "JOB_", "RETRY_")


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Workers:
    """Worker processes on one Redis; `replace` starts a new one for a killed one."""

    def __init__(self, redis: RedisServer, logs: Path, **settings: object):
        self.redis = redis
        self.logs = logs
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(_SETTINGS_PREFIXES)}
        self.env.update(REDIS_URL=redis.url, AI_PROVIDER="mock", LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1")
        self.env.update({k: str(v) for k, v in settings.items()})
        self.procs: list[subprocess.Popen] = []
        self.started = 0

    def start(self) -> subprocess.Popen:
        log = open(self.logs / f"worker-{self.started}.log", "wb")  # the child process holds it open
        self.started += 1
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli"],
            env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def replace(self, dead: subprocess.Popen) -> subprocess.Popen:
        dead.wait(10)
        self.procs.remove(dead)
        return self.start()

    async def all_ready(self, timeout: float = 30) -> None:
        """Until every live process has a heartbeat in Redis."""
        client = self.redis.client()
        async with asyncio.timeout(timeout):
            while True:
                pids = {
                    json.loads(client.get(k) or b"{}").get("pid")
                    for k in client.scan_iter(keys.WORKER_PREFIX + "*")
                }
                if all(p.pid in pids for p in self.procs):
                    return
                if any(p.poll() is not None for p in self.procs):
                    raise RuntimeError(f"a worker exited at start; see {self.logs}")
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


@contextlib.contextmanager
def tool_lab(tmp: Path, servers, **settings: object):
    """A redis-server, the OpenAI-compatible test server and a Workers whose MCP_SERVERS are
    `servers(ledger)` (the ledger file in `tmp`); yields (workers, model, ledger), stops them all."""
    from openai_server import OpenAIServer

    redis, model, ledger = RedisServer(tmp), OpenAIServer(), tmp / "ledger.jsonl"
    redis.start()
    model.start()
    workers = Workers(
        redis, tmp, AI_PROVIDER="openai", OPENAI_BASE_URL=model.base_url, OPENAI_API_KEY="sk-test",
        MCP_SERVERS=json.dumps(servers(ledger)), **settings,
    )  # fmt: skip
    try:
        yield workers, model, ledger
    finally:
        workers.stop()
        model.stop()
        redis.stop()


async def run(trials: int, lease: float, token_delay_ms: float, verbose: bool) -> int:
    with tempfile.TemporaryDirectory(prefix="kill-loop-") as tmp:
        redis = RedisServer(Path(tmp))
        redis.start()
        workers = Workers(redis, Path(tmp), WORKER_LEASE_SECONDS=lease, MOCK_TOKEN_DELAY_MS=token_delay_ms)
        results: list[KillTrial] = []
        started = time.monotonic()
        try:
            workers.start()
            workers.start()
            async with runtime_for(redis.url) as runtime:
                for n in range(1, trials + 1):
                    await workers.all_ready()
                    trial = await kill_mid_stream(runtime, workers.procs, timeout=lease + 30)
                    results.append(trial)
                    if trial.killed is not None:
                        workers.replace(trial.killed)
                    if verbose or not trial.complete:
                        took = trial.recovery_seconds
                        print(f"trial {n}: {'complete' if trial.complete else 'FAILED'} "
                              f"recovery={took and round(took, 3)}s {'' if trial.complete else trial.describe()}")  # fmt: skip
        finally:
            workers.stop()
            redis.stop()

    complete = sum(t.complete for t in results)
    lost = sum(t.lost for t in results)
    mixed = sum(t.mixed for t in results)
    missed = sum(t.killed is None or (t.result is not None and t.result.attempt < 2) for t in results)
    recoveries = [t.recovery_seconds for t in results if t.recovery_seconds is not None]
    print(f"trials                    {len(results)}")
    print(f"answers complete          {complete}")
    print(f"answers lost              {lost}")
    print(f"duplicated/mixed text     {mixed}")
    print(f"kills that missed         {missed}  (the job ended before the kill; not a failure)")
    if recoveries:
        print(f"median recovery time      {statistics.median(recoveries):.2f} s  "
              f"(max {max(recoveries):.2f} s; kill -> attempt 2 starts, WORKER_LEASE_SECONDS={lease:g})")  # fmt: skip
    print(f"wall time                 {time.monotonic() - started:.0f} s")
    return 1 if lost or mixed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--lease", type=float, default=1.0, help="WORKER_LEASE_SECONDS (default 1)")
    parser.add_argument("--token-delay-ms", type=float, default=10, help="MOCK_TOKEN_DELAY_MS (default 10)")
    parser.add_argument("-v", "--verbose", action="store_true", help="a line per trial")
    args = parser.parse_args()
    return asyncio.run(run(args.trials, args.lease, args.token_delay_ms, args.verbose))


if __name__ == "__main__":
    sys.exit(main())
