"""A messenger Runtime for any suite: on a given Redis, or embedded (fresh in-memory Redis, in-process worker)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

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
