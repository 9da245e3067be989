"""A messenger Runtime for any suite: on a given Redis, or embedded (fresh in-memory Redis, in-process
worker); and a worker's state alone, for running a job function in-process."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from messenger.runtime import Runtime, open_runtime
from shared.settings import load_settings


@contextlib.asynccontextmanager
async def embedded(
    monkeypatch, token_delay_ms: float = 0, mcp_servers: dict | None = None
) -> AsyncIterator[Runtime]:
    """`mcp_servers`: MCP_SERVERS as a dict (default: the environment's), for jobs that use tools."""
    monkeypatch.setattr("shared.connection._memory_server", None)  # a fresh in-memory Redis
    overrides = {} if mcp_servers is None else {"mcp_servers": mcp_servers}
    settings = load_settings(
        redis_url="memory://", mock_token_delay_ms=token_delay_ms, ai_provider="mock", **overrides
    )
    async with open_runtime(settings) as runtime:
        yield runtime


def runtime_for(redis_url: str, **settings):
    """A messenger Runtime in the test process (what one messenger replica holds), on `redis_url`."""
    return open_runtime(load_settings(redis_url=redis_url, **settings))


CLOCK = str(Path(__file__).resolve().parent / "mcp_clock_server.py")


@contextlib.asynccontextmanager
async def clock_worker(monkeypatch, **settings):
    """(redis, WorkerState): a worker's state on in-memory Redis, with the mock model and the clock MCP
    server (tests/mcp_clock_server.py) as `clock`, for running a job function in-process."""
    from shared.connection import connect
    from shared.tool_client import ToolServers
    from worker.job import WorkerState
    from worker.providers.mock import MockProvider
    from worker.publisher import EventWriter

    monkeypatch.setattr("shared.connection._memory_server", None)
    redis = connect("memory://")
    servers_config = {"clock": {"command": sys.executable, "args": [CLOCK]}}
    config = load_settings(redis_url="memory://", mcp_servers=servers_config, **settings)
    servers = ToolServers(config.mcp_servers, config.tool_call_timeout_seconds)
    state = WorkerState(
        settings=config,
        provider=MockProvider(),
        worker_id="w-test",
        writer=EventWriter(redis),
        tool_servers=servers,
    )
    try:
        yield redis, state
    finally:
        await servers.aclose()
        await redis.aclose()
