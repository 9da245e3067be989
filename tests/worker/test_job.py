"""The `chat` job: called as arq calls it, it always ends with one terminal event and a JobResult."""

from __future__ import annotations

import asyncio
import gc
import time

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from readers import job_events

from shared import keys
from shared.events import TERMINAL, TokenUsage
from shared.models import JobResult, ResultUsage, ToolCallRecord
from shared.serializer import serialize_plain
from shared.settings import load_settings
from worker.deadlines import Deadlines
from worker.job import WorkerState, chat
from worker.providers import ModelCall, Provider, ProviderError, StreamEnd
from worker.providers.mock import MockProvider, mock_reply
from worker.publisher import EventWriter
from worker.run import JobRun, result_json

pytestmark = pytest.mark.anyio

JOB = "job-test-1"


def make_ctx(redis, provider: Provider | None = None, *, job_try: int = 1, **settings) -> dict:
    settings.setdefault("mock_token_delay_ms", 0)
    state = WorkerState(
        settings=load_settings(redis_url="memory://", ai_provider="mock", **settings),
        provider=provider or MockProvider(),
        worker_id="worker-test",
        writer=EventWriter(redis),
    )
    return {"mcpq": state, "job_id": JOB, "job_try": job_try, "redis": redis}


def token_text(events) -> str:
    return "".join(e.text for e in events if e.type == "token")


def assert_one_terminal_last(events, kind: str) -> None:
    assert [e.seq for e in events] == list(range(len(events)))
    assert events[0].type == "start"
    assert [e.type for e in events if e.type in TERMINAL] == [kind]
    assert events[-1].type == kind


@pytest.fixture
def clean(clean_env):
    """No developer environment leaks into load_settings()."""
    return clean_env


class ScriptedProvider(Provider):
    """Yields the given pieces, then fails with `error` (if any) or ends normally."""

    name = "scripted"

    def __init__(self, pieces: list[str], error: ProviderError | None = None):
        self.pieces = pieces
        self.error = error

    async def stream(self, call: ModelCall):
        for piece in self.pieces:
            yield piece
        if self.error:
            raise self.error
        yield StreamEnd(model=call.model, finish_reason="stop")


class HangingProvider(Provider):
    """Sends one token, then waits forever (a slow model), until the job is stopped."""

    name = "hanging"

    def __init__(self):
        self.streaming = asyncio.Event()
        self.closed = False

    async def stream(self, call: ModelCall):
        try:
            yield "first "
            self.streaming.set()
            await asyncio.Event().wait()
            yield StreamEnd(model=call.model, finish_reason="stop")
        finally:
            self.closed = True


async def test_completed_job_returns_the_streamed_text(redis, clean):
    out = await chat(make_ctx(redis), {"message": "what is a queue?", "context": "be brief"})
    result = JobResult.model_validate(out)
    events = await job_events(redis, JOB)

    assert out["status"] == "completed"
    assert out["jobId"] == JOB
    assert out["aiResponse"] == token_text(events)
    expected = mock_reply(
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is a queue?"}]
    )
    assert out["aiResponse"] == "".join(expected)
    assert out["model"] == "mock-1"
    assert out["finishReason"] == "stop"
    assert out["usage"] == {
        "promptTokens": 6,
        "completionTokens": len(expected),
        "totalTokens": 6 + len(expected),
        "estimatedCost": 0.0,
        "estimated": False,  # the mock reports its counts
    }
    assert result.processing_time is not None and result.processing_time >= 0
    assert (result.worker_id, result.attempt, result.error) == ("worker-test", 1, None)
    assert_one_terminal_last(events, "done")
    assert events[-1].usage.completion_tokens == len(expected)
    assert events[0].worker_id == "worker-test" and events[0].model == "mock-1"


class HeldWrites:
    """Redis whose event writes (script calls) wait until `released` is set."""

    def __init__(self, redis):
        self.redis = redis
        self.released = asyncio.Event()

    def __getattr__(self, name: str):
        if name == "connection_pool":  # else the EventWriter writes on the pool itself, past the hold
            raise AttributeError(name)
        return getattr(self.redis, name)

    async def evalsha(self, *args):
        await self.released.wait()
        return await self.redis.evalsha(*args)

    async def eval(self, *args):
        await self.released.wait()
        return await self.redis.eval(*args)


async def test_a_finished_job_is_freed_without_the_cyclic_collector(redis, clean):
    """A job's run (its task, coroutines, events) goes when the job ends, not at the next cyclic
    collection: a closure the run held that held the run made every job a cycle, ~8 µs a job."""
    ctx = make_ctx(redis)
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        out = await chat(ctx, {"message": "hi"})
        gc.collect()
        left = [o for o in gc.garbage if isinstance(o, JobRun)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert out["status"] == "completed"
    assert left == []


async def test_the_start_events_ts_is_when_the_job_function_began(redis, clean, monkeypatch):
    """The start event's `ts` is the job's start, as a peer queue's job stamps its first line
    (bench/start_latency.py sets them side by side): not after the job's own reads (the model
    defaults here, held for 50 ms) and checks."""
    ctx = make_ctx(redis)
    state = ctx["mcpq"]
    read = state.model_defaults

    async def slow(*args, **kwargs):
        await asyncio.sleep(0.05)
        return await read(*args, **kwargs)

    monkeypatch.setattr(state, "model_defaults", slow)
    before = time.time()
    out = await chat(ctx, {"message": "hi"})
    events = await job_events(redis, JOB)
    assert out["status"] == "completed"
    assert before <= events[0].ts < before + 0.04 < events[1].ts


async def test_the_model_is_asked_while_the_start_event_is_written(redis, clean):
    """The start event's write is not a round trip before the model call (the caller's first token
    waits for both): here the write is held until the model has been asked, and the job's events
    still go out whole and in order once it is let through."""
    held = HeldWrites(redis)
    asked = asyncio.Event()

    class Asked(ScriptedProvider):
        async def stream(self, call: ModelCall):
            asked.set()
            async for piece in super().stream(call):
                yield piece

    ctx = make_ctx(redis, Asked(["Hello ", "there."]))
    ctx["mcpq"].writer = EventWriter(held)
    job = asyncio.create_task(chat(ctx, {"message": "hi"}))
    with anyio.fail_after(5):
        await asked.wait()
    assert await job_events(redis, JOB) == [], "asked before the start event was written"
    held.released.set()
    out = await job
    events = await job_events(redis, JOB)
    assert out["status"] == "completed" and out["aiResponse"] == token_text(events) == "Hello there."
    assert_one_terminal_last(events, "done")


async def test_a_job_answered_at_once_writes_its_start_text_and_done_in_one_round_trip(redis, clean):
    """Its ending does not wait for the events before it on their own (a round trip per job more, 1 of
    4 a no-op job made): the done event goes in their write, after them, and the job completes once
    all are in Redis."""
    ctx = make_ctx(redis, ScriptedProvider(["Hello ", "there."]))
    writer, writes = ctx["mcpq"].writer, []
    write = writer._write

    async def counted(ready):
        writes.append([p.job_id for p in ready])
        return await write(ready)

    writer._write = counted
    out = await chat(ctx, {"message": "hi"})
    events = await job_events(redis, JOB)
    assert out["status"] == "completed" and out["aiResponse"] == token_text(events) == "Hello there."
    assert_one_terminal_last(events, "done")
    assert writes == [[JOB]]  # (before: the start and text, then the done event)


async def test_request_options_reach_the_provider(redis, clean):
    out = await chat(
        make_ctx(redis), {"message": "one two three four five", "max_tokens": 3, "model": "mock-x"}
    )
    assert out["status"] == "completed"
    assert out["finishReason"] == "length"
    assert out["usage"]["completionTokens"] == 3
    assert out["model"] == "mock-x"
    assert out["usage"]["estimatedCost"] is None  # mock-x has no price: unpriced, not free
    assert (await job_events(redis, JOB))[-1].cost is None


async def test_retry_attempt_is_recorded_and_numbered_from_zero(redis, clean):
    out = await chat(make_ctx(redis, job_try=3), {"message": "again"})
    events = await job_events(redis, JOB)
    assert out["attempt"] == 3
    assert {e.attempt for e in events} == {3}
    assert_one_terminal_last(events, "done")


@pytest.mark.parametrize(
    ("request_dict", "field"),
    [
        ({"message": ""}, "message"),
        ({"message": "   "}, "message"),
        ({"bogus": 1}, "message"),  # the message is missing
        ({"message": "hi", "bogus": 1}, "bogus"),
        ({"message": "hi", "temperature": 9}, "temperature"),
        ({"message": "hi", "model": "bad model!"}, "model"),
    ],
)
async def test_invalid_request_fails_with_a_readable_error_naming_the_field(
    redis, clean, request_dict, field
):
    out = await chat(make_ctx(redis), request_dict)
    events = await job_events(redis, JOB)
    assert out["status"] == "failed"
    assert out["error"].startswith("invalid request in the queue")
    assert field in out["error"], f"the error should say which field is wrong: {out['error']!r}"
    assert "\n" not in out["error"]
    assert_one_terminal_last(events, "error")
    assert events[-1].error == out["error"]
    assert token_text(events) == ""


@pytest.mark.parametrize("garbage", [None, "hello", 42, ["message", "hi"]])
async def test_a_request_that_is_not_an_object_fails_cleanly(redis, clean, garbage):
    out = await chat(make_ctx(redis), garbage)  # type: ignore[arg-type]
    assert out["status"] == "failed"
    assert out["error"].startswith("invalid request in the queue")
    assert_one_terminal_last(await job_events(redis, JOB), "error")


async def test_unknown_model_fails_with_an_error_naming_it(redis, clean):
    out = await chat(make_ctx(redis), {"message": "hi", "model": "gpt-4o"})
    events = await job_events(redis, JOB)
    assert out["status"] == "failed"
    assert "'gpt-4o'" in out["error"]
    assert_one_terminal_last(events, "error")
    assert events[-1].error == out["error"]


async def test_provider_error_mid_stream_keeps_the_partial_text(redis, clean):
    failure = ProviderError("the provider failed (HTTP 503). try again later", retryable=True, status=503)
    ctx = make_ctx(redis, ScriptedProvider(["partial ", "answer"], error=failure))
    out = await chat(ctx, {"message": "hi"})
    events = await job_events(redis, JOB)

    assert out["status"] == "failed"
    assert out["error"] == failure.message
    assert out["aiResponse"] == "partial answer"
    assert token_text(events) == "partial answer"
    assert_one_terminal_last(events, "error")
    assert events[-1].error == failure.message
    assert ctx["mcpq"].provider_error == failure.message  # health shows the provider is in trouble


async def test_the_workers_deadlines_cancel_each_job_at_its_own_time_with_one_timer():
    """worker/deadlines.py Deadlines, asyncio.timeout's stand-in: the soonest deadline fires first whatever
    order they were set in, a job out of its block in time is never cancelled, and a cancel of another's
    on top of the deadline's is not the deadline's (the job raises CancelledError, not TimeoutError)."""
    deadlines, ended = Deadlines(), {}

    async def job(name: str, seconds: float, work: float, other_cancel: bool = False) -> None:
        task = asyncio.current_task()
        assert task is not None

        async def working() -> None:
            try:
                await asyncio.sleep(work)
            except asyncio.CancelledError:
                if other_cancel:  # (a user's cancel lands as the deadline passes)
                    task.cancel()
                raise

        began = time.monotonic()
        try:
            await deadlines.within(task, seconds, working())
            ended[name] = ("ok", time.monotonic() - began)
        except TimeoutError:
            ended[name] = ("timeout", time.monotonic() - began)
        except asyncio.CancelledError:
            ended[name] = ("cancelled", time.monotonic() - began)

    await asyncio.gather(
        job("late", 0.4, 5),
        job("soon", 0.1, 5),
        job("quick", 0.2, 0.05),
        job("both", 0.1, 5, other_cancel=True),
        return_exceptions=True,  # ("both" ends cancelled: its own cancel is still due as it returns)
    )
    assert {k: v[0] for k, v in ended.items()} == {
        "late": "timeout", "soon": "timeout", "quick": "ok", "both": "cancelled"
    }  # fmt: skip
    assert 0.1 <= ended["soon"][1] < 0.3 and 0.4 <= ended["late"][1] < 0.6, ended
    assert deadlines._due == {} and deadlines._expired == set() and deadlines._timer is None


async def test_a_good_call_clears_the_provider_error(redis, clean):
    ctx = make_ctx(redis)
    ctx["mcpq"].provider_error = "was down"
    await chat(ctx, {"message": "hi"})
    assert ctx["mcpq"].provider_error is None


async def test_job_timeout_fails_with_a_message_naming_the_setting(redis, clean):
    ctx = make_ctx(redis, MockProvider(token_delay_ms=10_000), job_timeout_seconds=0.05)
    out = await chat(ctx, {"message": "slow please"})
    events = await job_events(redis, JOB)
    assert out["status"] == "failed"
    assert "JOB_TIMEOUT_SECONDS" in out["error"]
    assert "0.05" in out["error"]
    assert_one_terminal_last(events, "error")
    assert events[-1].error == out["error"]


async def test_cancel_with_the_cancel_key_ends_the_job_as_cancelled(redis, clean):
    provider = HangingProvider()
    ctx = make_ctx(redis, provider)
    task = asyncio.create_task(chat(ctx, {"message": "hi"}))
    with anyio.fail_after(5):
        await provider.streaming.wait()
    await redis.set(keys.cancel(JOB), "1")
    task.cancel()
    with anyio.fail_after(5):
        out = await task

    events = await job_events(redis, JOB)
    assert out["status"] == "cancelled"
    assert out["aiResponse"] == "first "
    assert token_text(events) == "first "
    assert_one_terminal_last(events, "cancelled")
    assert provider.closed, "the provider stream was closed: no more calls to the model"
    assert JOB not in ctx["mcpq"].running


async def test_cancel_without_the_cancel_key_is_a_shutdown_and_re_raises(redis, clean):
    provider = HangingProvider()
    ctx = make_ctx(redis, provider)
    task = asyncio.create_task(chat(ctx, {"message": "hi"}))
    with anyio.fail_after(5):
        await provider.streaming.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError), anyio.fail_after(5):
        await task

    events = await job_events(redis, JOB)
    assert not [e for e in events if e.type in TERMINAL], "arq runs it again; that attempt sends the ending"
    assert provider.closed
    assert JOB not in ctx["mcpq"].running


async def test_running_jobs_are_tracked_while_they_run(redis, clean):
    provider = HangingProvider()
    ctx = make_ctx(redis, provider, job_try=2)
    task = asyncio.create_task(chat(ctx, {"message": "hi"}))
    with anyio.fail_after(5):
        await provider.streaming.wait()
    assert ctx["mcpq"].running == {JOB: 2}
    await redis.set(keys.cancel(JOB), "1")
    task.cancel()
    with anyio.fail_after(5):
        await task
    assert ctx["mcpq"].running == {}
    assert ctx["mcpq"].jobs_done == 1


@pytest.mark.parametrize("job_try", [1, 2])
async def test_a_first_attempts_count_is_made_without_a_task_of_its_own(redis, clean, monkeypatch, job_try):
    """A first attempt's usage count reads nothing from Redis, so it is made in the job's task (no
    cancel can reach it there) instead of behind asyncio.shield: a task and two loop turns a job less.
    A later attempt reads what dead attempts streamed: that read stays shielded."""
    import worker.run

    shielded: list[str] = []
    shield = asyncio.shield

    def watched(awaitable):
        shielded.append(getattr(awaitable, "__name__", type(awaitable).__name__))
        return shield(awaitable)

    monkeypatch.setattr(worker.run.asyncio, "shield", watched)
    ctx = make_ctx(redis, job_try=job_try)
    ctx["ending"] = {}  # as the worker runs it: the count goes with the job's ending
    out = await chat(ctx, {"message": "hi"})
    assert out["status"] == "completed" and out["attempt"] == job_try
    assert ctx["ending"]["count"]["job_id"] == JOB
    assert ("prepare" in shielded) == (job_try > 1), shielded


finite = st.floats(allow_nan=False, allow_infinity=False)
counts = st.integers(min_value=0, max_value=2**53)
records = st.builds(
    ToolCallRecord, call_id=st.text(), server=st.text(), tool=st.text(),
    arguments=st.text() | st.dictionaries(st.text(), st.integers() | st.text()), round=st.integers(),
    result=st.none() | st.text(), is_error=st.booleans(), duration_ms=st.none() | finite,
)  # fmt: skip


@given(
    status=st.sampled_from(["completed", "failed", "cancelled"]), text=st.text(), model=st.text(),
    fallback_from=st.none() | st.text(), usage=st.builds(TokenUsage, prompt_tokens=counts,
    completion_tokens=counts, total_tokens=counts, estimated=st.booleans()), cost=st.none() | finite,
    took=finite, finish_reason=st.none() | st.text(), error=st.none() | st.text(), worker_id=st.text(),
    attempt=st.integers(min_value=1, max_value=2**31), tool_calls=st.lists(records, max_size=3),
)  # fmt: skip
@settings(max_examples=300, deadline=None)
def test_a_jobs_result_json_is_the_job_results_dump(
    status,
    text,
    model,
    fallback_from,
    usage,
    cost,
    took,
    finish_reason,
    error,
    worker_id,
    attempt,
    tool_calls,
):
    """A job's ending makes its result as a dict (worker/run.py result_json); the model's dump of the
    same fields is the same JSON, key for key and in the same order (arq stores it as it is made)."""
    made = result_json(
        job_id=JOB, status=status, ai_response=text, model=model, fallback_from=fallback_from, usage=usage,
        estimated_cost=cost, processing_time=took, finish_reason=finish_reason, error=error,
        worker_id=worker_id, attempt=attempt, tool_calls=tool_calls,
    )  # fmt: skip
    dumped = JobResult(
        job_id=JOB, status=status, ai_response=text, model=model, fallback_from=fallback_from,
        usage=ResultUsage(**usage.model_dump(), estimated_cost=cost), processing_time=took,
        finish_reason=finish_reason, error=error, worker_id=worker_id, attempt=attempt, tool_calls=tool_calls,
    ).model_dump(mode="json")  # fmt: skip
    assert made == dumped
    assert serialize_plain(made) == serialize_plain(dumped)  # (the order too)
