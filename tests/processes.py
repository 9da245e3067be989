"""Processes the tests start: the environment they run with, and `worker` processes that are
waited for until their heartbeat is in Redis. Importable by any suite (and by bench/)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
OPENAI_TEST_KEY = "sk-test"  # the key tests/openai_server.py expects unless told otherwise


def process_env(redis_url: str, **extra: str) -> dict[str, str]:
    """The environment for a messenger or worker subprocess; nothing leaks in from a developer's .env."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AI_", "MCP_", "MOCK_", "REDIS_"))
    }
    env.update(
        REDIS_URL=redis_url,
        AI_PROVIDER="mock",
        MOCK_TOKEN_DELAY_MS="0",
        LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class WorkerProcesses:
    """Starts `worker` processes and waits until each has a heartbeat in Redis."""

    def __init__(self, redis_server: RedisServer, tmp: Path):
        self.redis_server = redis_server
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []

    def start(
        self, redis_url: str, count: int = 1, *, arq_cli: bool = False, **env: str
    ) -> list[subprocess.Popen]:
        """`arq_cli`: run them as `arq worker.WorkerSettings` (arq's own CLI), not `worker`."""
        client = self.redis_server.client()
        command = ["-m", "arq", "worker.WorkerSettings"] if arq_cli else ["-m", "worker.cli"]
        started = []
        for _ in range(count):
            log = open(self.tmp / f"worker-{len(self.procs)}.log", "wb")
            proc = subprocess.Popen(
                [sys.executable, *command],
                env=process_env(redis_url, **env),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            self.procs.append(proc)
            started.append(proc)
        deadline = time.monotonic() + 20
        while not {p.pid for p in started} <= beating_pids(
            client
        ):  # a dead worker's beat may lapse meanwhile
            if time.monotonic() > deadline or any(p.poll() is not None for p in started):
                raise RuntimeError(f"workers did not start; see {self.tmp}/worker-*.log")
            time.sleep(0.05)
        return started

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.tmp.glob("worker-*.log")))

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)
            if p.poll() is None:
                p.kill()


def start_openai_workers(workers: WorkerProcesses, redis_url: str, server, count: int = 1, **env: str):
    """`count` workers whose provider is the test OpenAI server (tests/openai_server.py)."""
    return workers.start(
        redis_url,
        count=count,
        AI_PROVIDER="openai",
        OPENAI_BASE_URL=server.base_url,
        OPENAI_API_KEY=OPENAI_TEST_KEY,
        **env,
    )


def beating_pids(client) -> set[int]:
    """The pids in the worker heartbeats in Redis (sync client); junk in a heartbeat key is skipped."""
    pids = set()
    for key in client.scan_iter("mcpq:worker:*"):
        with contextlib.suppress(ValueError, TypeError, KeyError):
            pids.add(int(json.loads(client.get(key))["pid"]))
    return pids


def worker_ids(client) -> set[str]:
    """The ids of the workers with a heartbeat in Redis (sync client)."""
    return {json.loads(client.get(key))["worker_id"] for key in client.scan_iter("mcpq:worker:*")}
