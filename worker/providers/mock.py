"""A deterministic provider for demos and tests: no network, no key.

The answer depends only on the prompt, so any worker gives the same text for the same request.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

from shared.events import TokenUsage
from worker.providers.base import ModelCall, Provider, ProviderError, StreamEnd

_WORDS = (
    "queues decouple callers from workers so that slow model calls never block the server and every "
    "token still reaches the caller in order through Redis while any number of workers share the load"
).split()


def mock_reply(messages: list[dict[str, str]]) -> list[str]:
    """The tokens the mock answers with: an echo of the last message, then a digest-chosen sentence."""
    prompt = messages[-1]["content"] if messages else ""
    echo = " ".join(prompt.split()[:40])
    seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big")
    start = seed % len(_WORDS)
    tail = [_WORDS[(start + i) % len(_WORDS)] for i in range(12)]
    words = ["Mock", "answer", "to:", *echo.split(), "—", *tail]
    return [w + " " for w in words[:-1]] + [words[-1] + "."]


class MockProvider(Provider):
    name = "mock"

    def __init__(self, token_delay_ms: float = 0):
        self.token_delay = token_delay_ms / 1000

    async def stream(self, call: ModelCall) -> AsyncIterator[str | StreamEnd]:
        if not call.model.startswith("mock"):
            raise ProviderError(f"unknown model {call.model!r} for the mock provider; use mock-1")
        tokens = mock_reply(call.messages)
        finish = "stop"
        if len(tokens) > call.max_tokens:
            tokens, finish = tokens[: call.max_tokens], "length"
        for token in tokens:
            if self.token_delay:
                await asyncio.sleep(self.token_delay)
            yield token
        prompt_tokens = sum(len(m["content"].split()) for m in call.messages)
        usage = TokenUsage(
            prompt_tokens=prompt_tokens,
            completion_tokens=len(tokens),
            total_tokens=prompt_tokens + len(tokens),
        )
        yield StreamEnd(model=call.model, finish_reason=finish, usage=usage)
