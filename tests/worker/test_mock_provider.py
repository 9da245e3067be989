"""The mock provider: deterministic, honours max_tokens and its token delay, refuses other models."""

from __future__ import annotations

import asyncio
import math

import pytest

from worker.providers import ModelCall, ProviderError, StreamEnd
from worker.providers.mock import MockProvider, Pacer, mock_reply

# module-level marker: the conftest adds `anyio` too late for parametrized async tests (see report)
pytestmark = pytest.mark.anyio


def _call(text: str = "What is a queue?", *, model: str = "mock-1", max_tokens: int = 1000, context=None):
    messages = [{"role": "system", "content": context}] if context else []
    messages.append({"role": "user", "content": text})
    return ModelCall(model=model, messages=messages, temperature=0.7, max_tokens=max_tokens)


async def _collect(provider: MockProvider, call: ModelCall) -> tuple[list[str], StreamEnd]:
    pieces = [piece async for piece in provider.stream(call)]
    *tokens, end = pieces
    assert isinstance(end, StreamEnd), "the stream ends with exactly one StreamEnd"
    assert all(isinstance(t, str) for t in tokens)
    return tokens, end


async def test_same_messages_give_the_same_tokens():
    first, _ = await _collect(MockProvider(), _call("hello there"))
    second, _ = await _collect(MockProvider(), _call("hello there"))
    assert first == second
    assert first == mock_reply(_call("hello there").messages)


async def test_reply_echoes_the_prompt():
    tokens, end = await _collect(MockProvider(), _call("tell me about queues"))
    assert "".join(tokens).startswith("Mock answer to: tell me about queues —")
    assert "".join(tokens).endswith(".")
    assert end.finish_reason == "stop"
    assert end.model == "mock-1"


async def test_different_prompts_give_different_replies():
    a, _ = await _collect(MockProvider(), _call("first question"))
    b, _ = await _collect(MockProvider(), _call("second question"))
    assert "".join(a) != "".join(b)


def test_the_tail_depends_on_the_prompt_digest():
    tails = {tuple(mock_reply([{"role": "user", "content": f"q{i}"}])[4:]) for i in range(20)}
    assert len(tails) > 1


async def test_max_tokens_cuts_the_reply_and_says_length():
    full, full_end = await _collect(MockProvider(), _call("cut me short please"))
    assert len(full) > 3
    cut, end = await _collect(MockProvider(), _call("cut me short please", max_tokens=3))
    assert cut == full[:3]
    assert end.finish_reason == "length"
    assert end.usage.completion_tokens == 3
    assert full_end.finish_reason == "stop"


async def test_max_tokens_equal_to_the_reply_length_is_not_a_cut():
    full, _ = await _collect(MockProvider(), _call("exact fit"))
    tokens, end = await _collect(MockProvider(), _call("exact fit", max_tokens=len(full)))
    assert tokens == full
    assert end.finish_reason == "stop"


async def test_usage_counts_match_what_was_sent_and_streamed():
    tokens, end = await _collect(MockProvider(), _call("one two three four", context="be brief"))
    assert end.usage is not None
    assert end.usage.prompt_tokens == 4 + 2  # words of every message, system included
    assert end.usage.completion_tokens == len(tokens)
    assert end.usage.total_tokens == end.usage.prompt_tokens + end.usage.completion_tokens


@pytest.mark.parametrize("model", ["gpt-4o", "Mock-1", "my-mock", ""])
async def test_unknown_model_raises_provider_error_naming_it(model):
    with pytest.raises(ProviderError) as info:
        await _collect(MockProvider(), _call(model=model))
    assert repr(model) in info.value.message
    assert "mock-1" in info.value.message  # says what would work
    assert info.value.retryable is False


@pytest.mark.parametrize("model", ["mock-1", "mock-fast"])
async def test_any_mock_model_is_served(model):
    _, end = await _collect(MockProvider(), _call(model=model))
    assert end.model == model


async def test_tokens_are_paced_on_a_schedule_not_from_each_wake_up():
    """Token k leaves at k × the delay after the first, as a model server sends them: a wake-up that
    comes late (a busy worker) shortens the next wait instead of slowing the whole stream."""

    class LateClock(Pacer):  # time moves only when the mock waits; the first wake-up is 5 ms late
        def __init__(self):
            super().__init__()
            self.t, self.asked = 100.0, []

        def now(self) -> float:
            return self.t

        async def until(self, when: float) -> None:
            self.asked.append(round(when - 100.0, 6))
            self.t = max(self.t, when) + (0.005 if len(self.asked) == 1 else 0)

    provider = MockProvider(token_delay_ms=7)
    provider.pacer = clock = LateClock()
    tokens, _ = await _collect(provider, _call("delay check"))
    assert len(tokens) > 3
    assert clock.asked == [round(0.007 * (k + 1), 6) for k in range(len(tokens))]


async def test_a_token_already_due_is_handed_over_without_a_loop_turn():
    """A late stream catches up at once, as a client reading a full socket buffer does."""
    loop, ran = asyncio.get_running_loop(), []
    loop.call_soon(ran.append, "other work")
    await Pacer().until(loop.time() - 1.0)
    assert ran == []
    due = loop.time() + 0.002
    await Pacer().until(due)
    # a token not due yet waits for its time, and other work runs meanwhile; unless this task lost
    # its core for longer than that before the pacer looked at the clock (a busy box): then it was due
    assert ran == ["other work"] or loop.time() >= math.ceil(due / Pacer.TICK) * Pacer.TICK


async def test_streams_due_in_the_same_tick_share_one_timer(monkeypatch):
    loop, timers = asyncio.get_running_loop(), []
    call_at = loop.call_at

    def counting(when, callback, *args, **kwargs):
        timers.append(when)
        return call_at(when, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", counting)
    pacer, due = Pacer(), loop.time() + 0.003
    woke: list[float] = []

    async def stream(offset: float) -> None:
        await pacer.until(due + offset)
        woke.append(loop.time() - (due + offset))

    await asyncio.gather(*(stream(i * Pacer.TICK / 1000) for i in range(1000)))
    assert len(timers) <= 2, "1,000 streams due within one tick (or across its edge) wake on one timer each"
    assert min(woke) >= -1e-6, "no stream wakes before its time"


async def test_token_delay_lets_other_tasks_run_between_tokens():
    order: list[str] = []

    async def ticker():
        while True:
            order.append("tick")
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    try:
        async for piece in MockProvider(token_delay_ms=0.5).stream(_call("interleave")):
            if not isinstance(piece, StreamEnd):
                order.append("token")
    finally:
        task.cancel()
    first_token = order.index("token")
    assert "tick" in order[first_token:], "the event loop ran other work while the mock streamed"


async def test_without_delay_the_mock_never_sleeps(monkeypatch):
    calls = []

    async def recording_sleep(seconds, *args, **kwargs):
        calls.append(seconds)

    monkeypatch.setattr("worker.providers.mock.asyncio.sleep", recording_sleep)
    tokens, _ = await _collect(MockProvider(token_delay_ms=0), _call("no delay"))
    monkeypatch.undo()
    assert tokens and calls == []
