"""Fixtures every suite shares: a real redis-server of the test session's own, worker processes,
and an open messenger Runtime.

The Redis server listens on a free port the tests chose, so a test never writes into somebody
else's Redis; its pid is checked against the port before use.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from processes import WorkerProcesses
from redis_server import RedisServer, free_port  # noqa: F401  (free_port is used by test modules)
from runtimes import embedded

from shared.connection import connect

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


@pytest.fixture
async def redis(monkeypatch):
    """A fresh in-memory Redis (fakeredis) per test, for fast unit tests; `redis_url` is a real one."""
    monkeypatch.setattr("shared.connection._memory_server", None)
    client = connect("memory://")
    yield client
    await client.aclose()


@pytest.fixture
async def real_redis(redis_url):
    """A client of the real Redis of `redis_url`, for the tests that compare against what Redis does."""
    client = connect(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def workers(redis_server: RedisServer, tmp_path: Path) -> Iterator[WorkerProcesses]:
    procs = WorkerProcesses(redis_server, tmp_path)
    yield procs
    procs.stop_all()


@pytest.fixture
async def embedded_runtime(monkeypatch):
    """A messenger Runtime in embedded mode (in-memory Redis, in-process worker)."""
    _clean_env(monkeypatch)
    async with embedded(monkeypatch) as runtime:
        yield runtime


@pytest.fixture
async def streaming_runtime(clean_env):
    """Embedded, with 5 ms between mock tokens: an answer spans several progress notifications."""
    async with embedded(clean_env, 5) as runtime:
        yield runtime


@pytest.fixture
async def slow_runtime(clean_env):
    """Embedded, with 100 ms between mock tokens: a long answer runs for seconds."""
    async with embedded(clean_env, 100) as runtime:
        yield runtime


@pytest.fixture
def clean_env(monkeypatch):
    _clean_env(monkeypatch)
    return monkeypatch


def _clean_env(monkeypatch) -> None:
    for key in list(os.environ):
        if key.startswith(
            (
                "OPENAI_",
                "AI_",
                "MCP_",
                "MOCK_",
                "REDIS_",
                "WORKER_",
                "JOB_",
                "RETRY_",
                "LOG_",
                "TOOL_",
                "BUDGET_",
                "TENANT_",
                "RATE_LIMIT",
            )
        ):
            monkeypatch.delenv(key)
    monkeypatch.chdir(ROOT / "tests")  # no developer .env is read
