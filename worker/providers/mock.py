"""A deterministic provider for demos and tests: no network, no key.

The answer depends only on the prompt, so any worker gives the same text for the same request.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import re
import time
from collections.abc import AsyncGenerator
from typing import Any

from shared.events import TokenUsage
from worker.providers.base import ModelCall, Provider, ProviderError, StreamEnd, ToolCall, ToolSpec

_WORDS = (
    "queues decouple callers from workers so that slow model calls never block the server and every "
    "token still reaches the caller in order through Redis while any number of workers share the load"
).split()


def mock_reply(messages: list[dict[str, Any]]) -> list[str]:
    """The tokens the mock answers with: an echo of the last message (after a tool turn: of every
    tool result), then a digest-chosen sentence."""
    results = list(itertools.takewhile(lambda m: m.get("role") == "tool", reversed(messages)))
    prompt = " ".join(str(m["content"]) for m in reversed(results)) if results else ""
    prompt = prompt or (str(messages[-1]["content"] or "") if messages else "")
    echo = " ".join(prompt.split()[:40])
    seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big")
    start = seed % len(_WORDS)
    tail = [_WORDS[(start + i) % len(_WORDS)] for i in range(12)]
    words = ["Mock", "answer", "to:", *echo.split(), "—", *tail]
    return [w + " " for w in words[:-1]] + [words[-1] + "."]


def _tools_asked_for(call: ModelCall) -> list[ToolSpec]:
    """The mock "calls" every offered tool that needs no arguments and whose name the user's last
    message mentions (so `ask --mcp-server clock "now?"` shows tool use with no model at all)."""
    if not call.tools or not call.messages or call.messages[-1]["role"] != "user":
        return []
    said = set(re.findall(r"[a-z0-9_-]+", str(call.messages[-1]["content"]).lower()))
    return [
        t
        for t in call.tools
        if t.name.rsplit("__", 1)[-1].lower() in said and not t.parameters.get("required")
    ]


class MockProvider(Provider):
    name = "mock"

    def __init__(self, token_delay_ms: float = 0):
        self.token_delay = token_delay_ms / 1000

    async def stream(self, call: ModelCall) -> AsyncGenerator[str | StreamEnd, None]:
        if not call.model.startswith("mock"):
            raise ProviderError(f"unknown model {call.model!r} for the mock provider; use mock-1")
        if wanted := _tools_asked_for(call):
            prompt_tokens = sum(len(str(m["content"] or "").split()) for m in call.messages)
            usage = TokenUsage(
                prompt_tokens=prompt_tokens, completion_tokens=1, total_tokens=prompt_tokens + 1
            )
            calls = tuple(
                ToolCall(id=f"mock-call-{i}", name=t.name, arguments="{}") for i, t in enumerate(wanted)
            )
            yield StreamEnd(model=call.model, finish_reason="tool_calls", usage=usage, tool_calls=calls)
            return
        tokens = mock_reply(call.messages)
        finish = "stop"
        if len(tokens) > call.max_tokens:
            tokens, finish = tokens[: call.max_tokens], "length"
        paced_from = time.monotonic()  # on a schedule, as a model server sends: a late wake-up catches up
        for k, token in enumerate(tokens):
            if self.token_delay:
                await asyncio.sleep(max(0.0, paced_from + (k + 1) * self.token_delay - time.monotonic()))
            yield token
        prompt_tokens = sum(len(str(m["content"] or "").split()) for m in call.messages)
        usage = TokenUsage(
            prompt_tokens=prompt_tokens,
            completion_tokens=len(tokens),
            total_tokens=prompt_tokens + len(tokens),
        )
        yield StreamEnd(model=call.model, finish_reason=finish, usage=usage)
