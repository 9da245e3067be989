"""Reading a provider's stream the way the job does, for the provider suites."""

from __future__ import annotations

import asyncio

import pytest

from worker.providers import ModelCall, Provider, ProviderError, StreamEnd


async def collect(provider: Provider, model_call: ModelCall) -> tuple[list[str], StreamEnd]:
    pieces: list[str] = []
    ends: list[StreamEnd] = []
    async with asyncio.timeout(20):
        async for piece in provider.stream(model_call):
            (ends if isinstance(piece, StreamEnd) else pieces).append(piece)
    assert len(ends) == 1, "a stream ends with exactly one StreamEnd"
    return pieces, ends[0]


async def failure(provider: Provider, model_call: ModelCall) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await collect(provider, model_call)
    return info.value
