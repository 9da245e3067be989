"""Reading a provider's stream the way the job does, for the provider suites."""

from __future__ import annotations

import asyncio

import pytest

from worker.providers import ModelCall, Provider, ProviderError, StreamEnd


def model_call(model: str, **changes) -> ModelCall:
    """A short call (system + user message) to `model`; `changes` replace any field."""
    fields = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say hello to the queue"},
        ],
        "temperature": 0.3,
        "max_tokens": 64,
    }
    fields.update(changes)
    return ModelCall(**fields)


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
