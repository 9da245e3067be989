"""Fixtures every suite shares: a real redis-server of the test session's own, worker processes,
and an open messenger Runtime.

The Redis server listens on a free port the tests chose, so a test never writes into somebody
else's Redis; its pid is checked against the port before use.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_server import RedisServer, free_port  # noqa: F401  (free_port is used by test modules)

from messenger.runtime import open_runtime
from shared.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A real Redis, emptied for each test."""
    redis_server.client().flushall()
    return redis_server.url


def test_env(redis_url: str, **extra: str) -> dict[str, str]:
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

    def start(self, redis_url: str, count: int = 1, **env: str) -> list[subprocess.Popen]:
        client = self.redis_server.client()
        before = len(list(client.scan_iter("mcpq:worker:*")))
        started = []
        for _ in range(count):
            log = open(self.tmp / f"worker-{len(self.procs)}.log", "wb")
            proc = subprocess.Popen(
                [sys.executable, "-m", "worker.cli"],
                env=test_env(redis_url, **env),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            self.procs.append(proc)
            started.append(proc)
        deadline = time.monotonic() + 20
        while len(list(client.scan_iter("mcpq:worker:*"))) < before + count:
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


@pytest.fixture
def workers(redis_server: RedisServer, tmp_path: Path) -> Iterator[WorkerProcesses]:
    procs = WorkerProcesses(redis_server, tmp_path)
    yield procs
    procs.stop_all()


@pytest.fixture
async def embedded_runtime(monkeypatch):
    """A messenger Runtime in embedded mode (in-memory Redis, in-process worker)."""
    _clean_env(monkeypatch)
    monkeypatch.setattr("shared.connection._memory_server", None)  # a fresh in-memory Redis per test
    settings = load_settings(redis_url="memory://", mock_token_delay_ms=0, ai_provider="mock")
    async with open_runtime(settings) as runtime:
        yield runtime


@pytest.fixture
def clean_env(monkeypatch):
    _clean_env(monkeypatch)
    return monkeypatch


def _clean_env(monkeypatch) -> None:
    for key in list(os.environ):
        if key.startswith(("OPENAI_", "AI_", "MCP_", "MOCK_", "REDIS_", "WORKER_", "JOB_", "RETRY_", "LOG_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(ROOT / "tests")  # no developer .env is read
