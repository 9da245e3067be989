"""A messenger Runtime in embedded mode (fresh in-memory Redis, in-process worker), for any suite."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from messenger.runtime import Runtime, open_runtime
from shared.settings import load_settings


@contextlib.asynccontextmanager
async def embedded(monkeypatch, token_delay_ms: float = 0) -> AsyncIterator[Runtime]:
    monkeypatch.setattr("shared.connection._memory_server", None)  # a fresh in-memory Redis
    settings = load_settings(redis_url="memory://", mock_token_delay_ms=token_delay_ms, ai_provider="mock")
    async with open_runtime(settings) as runtime:
        yield runtime
