"""A deterministic provider for demos and tests: no network, no key.

The answer depends only on the prompt, so any worker gives the same text for the same request.
With MOCK_TOKEN_DELAY_MS it paces its tokens as a model server sends them, every stream of the
process on one shared clock (Pacer), so a bench of 1,000 streams measures the worker, not 50,000
sleeps a second.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import math
import re
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
    return list(_reply(prompt or (str(messages[-1]["content"] or "") if messages else "")))


@functools.lru_cache(maxsize=1024)  # the same prompts come back (a bench's, a test's): ~4 µs a job made
def _reply(prompt: str) -> tuple[str, ...]:
    echo = " ".join(prompt.split()[:40])
    seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big")
    start = seed % len(_WORDS)
    tail = [_WORDS[(start + i) % len(_WORDS)] for i in range(12)]
    words = ["Mock", "answer", "to:", *echo.split(), "—", *tail]
    return (*(w + " " for w in words[:-1]), words[-1] + ".")


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


class Pacer:
    """Wakes every stream due within the same TICK with one timer: 1,000 streams at 50 tokens/s
    cost ≤ 1,000 timers a second, not 50,000 (each a heap entry and a wake-up of its own)."""

    TICK = 0.001  # seconds; a token leaves at most this much after its time

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due: dict[int, list[asyncio.Future[None]]] = {}  # tick number -> who waits for it

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def until(self, when: float) -> None:
        """Return at `when` (the loop's clock), or at once if that time has passed."""
        loop = asyncio.get_running_loop()
        tick = math.ceil(when / self.TICK)
        if tick * self.TICK <= loop.time():
            return
        if loop is not self._loop:  # (tests run one provider on several loops, one after another)
            self._loop, self._due = loop, {}
        waiters = self._due.get(tick)
        if waiters is None:
            waiters = self._due[tick] = []
            loop.call_at(tick * self.TICK, self._wake, tick)
        waiter = loop.create_future()
        waiters.append(waiter)
        await waiter

    def _wake(self, tick: int) -> None:
        for waiter in self._due.pop(tick, ()):
            if not waiter.done():
                waiter.set_result(None)


class MockProvider(Provider):
    name = "mock"

    def __init__(self, token_delay_ms: float = 0):
        self.token_delay = token_delay_ms / 1000
        self.pacer = Pacer()

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
        # on a schedule, as a model server sends: a late wake-up catches up, handing over every token
        # due by then at once (as a client reading a full socket buffer does), not one per loop turn
        paced_from = self.pacer.now() if self.token_delay else 0.0
        for k, token in enumerate(tokens):
            if self.token_delay:
                await self.pacer.until(paced_from + (k + 1) * self.token_delay)
            yield token
        prompt_tokens = sum(len(str(m["content"] or "").split()) for m in call.messages)
        usage = TokenUsage(
            prompt_tokens=prompt_tokens,
            completion_tokens=len(tokens),
            total_tokens=prompt_tokens + len(tokens),
        )
        yield StreamEnd(model=call.model, finish_reason=finish, usage=usage)
