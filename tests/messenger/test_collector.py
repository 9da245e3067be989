"""The Transcript: how a follower turns a job's tool events into the result's `toolCalls`."""

from __future__ import annotations

import asyncio

import pytest

from messenger import collector
from messenger.collector import Transcript, follow_events, replay
from messenger.hub import Mailbox
from shared import keys
from shared.events import (
    DoneEvent,
    StartEvent,
    TokenEvent,
    TokenUsage,
    ToolCallEvent,
    ToolResultEvent,
    dump_event,
    publish_events,
)
from shared.models import ToolCallRecord

JOB = "job-1"


class Events:
    """Numbers events the way a worker does: seq rises by one within an attempt."""

    def __init__(self, attempt: int = 1):
        self.attempt, self.seq = attempt, -1

    def _next(self) -> dict:
        self.seq += 1
        return {"job_id": JOB, "seq": self.seq, "attempt": self.attempt, "ts": 1000.0 + self.seq}

    def start(self):
        return StartEvent(**self._next(), worker_id="w1", model="mock-1")

    def token(self, text: str):
        return TokenEvent(**self._next(), text=text)

    def call(self, call_id: str, tool: str = "now", arguments=None, round: int = 1):
        return ToolCallEvent(
            **self._next(), call_id=call_id, server="clock", tool=tool, arguments=arguments or {}, round=round
        )

    def result(self, call_id: str, text: str, is_error: bool = False, tool: str = "now"):
        return ToolResultEvent(
            **self._next(), call_id=call_id, server="clock", tool=tool, result=text, is_error=is_error,
            duration_ms=12.5,
        )  # fmt: skip

    def done(self):
        return DoneEvent(
            **self._next(), usage=TokenUsage(prompt_tokens=3, completion_tokens=2, total_tokens=5),
            cost=None, finish_reason="stop", model="mock-1",
        )  # fmt: skip


def feed(transcript: Transcript, *events) -> None:
    for event in events:
        assert transcript.position(event) == "next", event
        transcript.apply(event)


def test_a_tool_call_shows_while_it_runs_and_its_result_fills_it_in():
    transcript, e = Transcript(JOB), Events()
    feed(transcript, e.start(), e.call("c1", arguments={"timezone_offset_hours": 2}))
    (running,) = transcript.result().tool_calls
    assert running == ToolCallRecord(
        call_id="c1", server="clock", tool="now", arguments={"timezone_offset_hours": 2}, round=1
    )
    assert running.result is None and running.duration_ms is None
    assert transcript.result().status == "running"

    feed(transcript, e.result("c1", "CLOCK-7f3a 12:00"))
    (done,) = transcript.result().tool_calls
    assert (done.result, done.is_error, done.duration_ms) == ("CLOCK-7f3a 12:00", False, 12.5)

    feed(transcript, e.token("It is "), e.token("noon."), e.done())
    final = transcript.result()
    assert final.status == "completed" and final.ai_response == "It is noon."
    assert [r.result for r in final.tool_calls] == ["CLOCK-7f3a 12:00"]
    # camelCase on the wire, as the rest of the result
    assert final.model_dump(mode="json")["toolCalls"][0] == {
        "callId": "c1", "server": "clock", "tool": "now", "arguments": {"timezone_offset_hours": 2},
        "round": 1, "result": "CLOCK-7f3a 12:00", "isError": False, "durationMs": 12.5,
    }  # fmt: skip


def test_several_calls_keep_the_order_they_were_made_in_and_match_results_by_id():
    transcript, e = Transcript(JOB), Events()
    feed(
        transcript,
        e.start(),
        e.call("a", "now"),
        e.call("b", "broken"),
        e.result("b", "Error: the clock is broken", is_error=True, tool="broken"),
        e.result("a", "CLOCK-7f3a 12:00"),
        e.call("c", "add", {"a": 1, "b": 2}, round=2),
    )
    calls = transcript.result().tool_calls
    assert [(r.call_id, r.tool, r.round) for r in calls] == [
        ("a", "now", 1),
        ("b", "broken", 1),
        ("c", "add", 2),
    ]
    assert [(r.result, r.is_error) for r in calls] == [
        ("CLOCK-7f3a 12:00", False),
        ("Error: the clock is broken", True),
        (None, False),
    ]


def test_a_result_for_a_call_never_seen_is_ignored():
    transcript, e = Transcript(JOB), Events()
    feed(transcript, e.start(), e.result("ghost", "?"))
    assert transcript.result().tool_calls == []


def test_the_result_is_a_copy_that_later_events_do_not_change():
    transcript, e = Transcript(JOB), Events()
    feed(transcript, e.start(), e.call("c1"))
    snapshot = transcript.result()
    feed(transcript, e.result("c1", "CLOCK-7f3a 12:00"))
    assert snapshot.tool_calls[0].result is None
    assert transcript.result().tool_calls[0].result == "CLOCK-7f3a 12:00"


def test_a_new_attempt_drops_the_old_attempts_tool_calls():
    transcript, first = Transcript(JOB), Events(attempt=1)
    feed(
        transcript,
        first.start(),
        first.call("old"),
        first.result("old", "CLOCK-7f3a 11:59"),
        first.token("x"),
    )
    assert [r.call_id for r in transcript.result().tool_calls] == ["old"]

    second = Events(attempt=2)  # the worker died; another one runs the job again
    feed(transcript, second.start())
    retried = transcript.result()
    assert retried.attempt == 2 and retried.tool_calls == [] and retried.ai_response == ""

    feed(transcript, second.call("new"), second.result("new", "CLOCK-7f3a 12:00"))
    assert [(r.call_id, r.result) for r in transcript.result().tool_calls] == [("new", "CLOCK-7f3a 12:00")]


def test_a_stale_tool_event_from_the_old_attempt_is_not_applied():
    transcript, first = Transcript(JOB), Events(attempt=1)
    feed(transcript, first.start())
    late = first.call("late")
    feed(transcript, Events(attempt=2).start())
    assert transcript.position(late) == "stale"


def test_a_rerun_from_the_journal_keeps_the_old_attempts_journaled_steps_and_drops_its_dead_tail():
    """Two calls of one turn (steps 2 and 3); the second answered first, then the worker died while the
    first ran. The re-run (`resumed`) keeps the turn's text, both calls and the one result, and drops
    what the dead attempt told after its last journaled step."""
    old, new, transcript = Events(1), Events(2), Transcript(JOB)
    feed(transcript, old.start(), old.token("Checking. "))
    feed(transcript, *(e.model_copy(update={"step": 1}) for e in (old.call("c1"), old.call("c2"))))
    feed(transcript, old.result("c2", "two").model_copy(update={"step": 3}), old.result("c1", "unjournaled"))
    feed(transcript, old.token("dead tail"))
    feed(transcript, new.start().model_copy(update={"resumed": 3}))
    assert transcript.text == "Checking. "
    assert [(r.call_id, r.result) for r in transcript.tool_calls.values()] == [("c1", None), ("c2", "two")]
    feed(
        transcript,
        new.result("c1", "one").model_copy(update={"step": 2}),
        new.token("Both done."),
        new.done(),
    )
    assert transcript.text == "Checking. Both done."
    assert [(r.call_id, r.result) for r in transcript.result().tool_calls] == [("c1", "one"), ("c2", "two")]


def test_a_rerun_that_did_not_resume_drops_everything_of_the_old_attempt():
    old, new, transcript = Events(1), Events(2), Transcript(JOB)
    feed(transcript, old.start(), old.token("Checking. "), old.call("c1").model_copy(update={"step": 1}))
    feed(transcript, new.start())
    assert transcript.text == "" and transcript.tool_calls == {}


@pytest.mark.anyio
async def test_a_quiet_follower_is_told_each_idle_tick_and_still_gets_every_event(redis, monkeypatch):
    """None after IDLE_SECONDS without a message (the follower re-checks the job then), however
    many messages came before; the events stay whole and in order around it."""
    monkeypatch.setattr(collector, "IDLE_SECONDS", 0.01)
    live = Mailbox()
    e = Events()
    told = []
    events = follow_events(redis, Transcript(JOB), live)  # (its stream is empty)
    assert await anext(events) is None
    for event in (e.start(), *(e.token(f"t{i} ") for i in range(50))):
        live.put_nowait(dump_event(event))
    told += [await anext(events) for _ in range(51)]
    assert await anext(events) is None
    live.put_nowait(dump_event(e.done()))
    told.append(await anext(events))
    assert [event.seq for event in told] == list(range(52))
    assert [event.type for event in told[-2:]] == ["token", "done"]
    await events.aclose()


@pytest.mark.anyio
async def test_a_followers_mailbox_hands_over_every_message_in_order_and_wakes_its_reader():
    """A reader waiting on an empty Mailbox is woken by the next message; a burst put while it
    runs comes out whole and in order, and a reader cancelled while it waited takes nothing."""
    live = Mailbox()
    waiting = asyncio.ensure_future(live.get())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    reader = asyncio.ensure_future(live.get())
    await asyncio.sleep(0)
    for i in range(100):
        live.put_nowait(i)
    assert await reader == 0
    assert [live.get_nowait() for _ in range(99)] == list(range(1, 100))
    assert live.empty()
    with pytest.raises(asyncio.QueueEmpty):
        live.get_nowait()


@pytest.mark.anyio
async def test_the_replays_of_many_followers_share_one_pipeline_and_each_gets_its_own_events(
    redis, monkeypatch
):
    """Every follower reads its job's stream once it is subscribed: 1,000 jobs submitted together
    were 1,000 commands, each a pool connection and a round trip of its own. Those asked in one
    turn go out in one pipeline; a key that is not a stream still reads as empty for its job alone."""
    e = Events()
    await publish_events(redis, [e.start(), e.token("hi ")])
    await redis.set(keys.stream("junk"), "not a stream")
    pipelines = []
    real = redis.pipeline
    monkeypatch.setattr(redis, "pipeline", lambda **kw: pipelines.append(kw) or real(**kw))
    jobs = [JOB, "junk", *(f"none-{i}" for i in range(100))]
    got = await asyncio.gather(*(replay(redis, Transcript(job)) for job in jobs))
    assert [(event.type, event.seq) for event in got[0][0]] == [("start", 0), ("token", 1)]
    assert all(events == [] for events, _ in got[1:])
    assert len(pipelines) == 1


@pytest.mark.anyio
async def test_a_follower_is_told_how_many_messages_wait_behind_each_event(redis):
    """transcript.behind: the messages already in the mailbox after the event handed over (a relay
    sends a backlog's text together once it has caught up), 0 for the last of a burst."""
    live = Mailbox()
    e = Events()
    transcript = Transcript(JOB)
    events = follow_events(redis, transcript, live)
    for event in (e.start(), e.token("a"), e.token("b")):
        live.put_nowait(dump_event(event))
    behind = []
    for _ in range(3):
        await anext(events)
        behind.append(transcript.behind)
    live.put_nowait(dump_event(e.token("c")))
    await anext(events)
    behind.append(transcript.behind)
    assert behind == [2, 1, 0, 0]
    await events.aclose()


class Holding:
    """A holder (collector.Holder) like a busy ProgressRelay: it takes tokens while `willing`."""

    def __init__(self, fail: bool = False):
        self.willing, self.fail = True, fail
        self.took: list[str] = []

    def takes(self, event: TokenEvent, transcript: Transcript) -> bool:
        return self.willing

    def take(self, event: TokenEvent, transcript: Transcript) -> None:
        if self.fail:
            raise RuntimeError("the holder's own bug")
        self.took.append(event.text)


async def parked(events) -> asyncio.Task:
    """The follower's next step, run until it waits on its empty mailbox."""
    step = asyncio.ensure_future(anext(events))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not step.done()
    return step


@pytest.mark.anyio
async def test_a_parked_followers_tokens_are_taken_in_the_putters_turn_and_the_rest_wake_it(redis, caplog):
    """While the follower waits on an empty mailbox, a token that is the next event and that its
    holder only holds is applied and taken inside put_nowait (the hub's turn: the follower is not
    woken, one loop turn less on the token's way); anything else wakes it as before: an event the
    holder does not take (yielded once, parsed once), a gap (filled from the stream), junk (skipped)."""
    e = Events()
    live, transcript, holder = Mailbox(), Transcript(JOB), Holding()
    events = follow_events(redis, transcript, live, holder)
    live.put_nowait(dump_event(e.start()))
    assert (await anext(events)).type == "start"
    step = await parked(events)
    for i in range(3):
        live.put_nowait(dump_event(e.token(f"t{i} ")))
    assert (
        holder.took == ["t0 ", "t1 ", "t2 "] and transcript.text == "t0 t1 t2 " and transcript.last_seq == 3
    )
    assert live.empty() and not step.done()
    live.put_nowait(b"not an event")  # skipped where it came, with the follower's warning
    assert "malformed event" in caplog.text and live.empty() and not step.done()
    holder.willing = False  # (text due: the relay sends it, which needs the follower)
    live.put_nowait(dump_event(e.token("t3 ")))
    assert (await step).text == "t3 " and transcript.last_seq == 4 and holder.took == ["t0 ", "t1 ", "t2 "]
    holder.willing = True
    stored = [e.token("t4 "), e.token("t5 ")]
    await publish_events(redis, stored)  # t4 reached the stream, its message was lost: t5 is a gap
    step = await parked(events)
    live.put_nowait(dump_event(stored[1]))
    assert [(await step).text, (await anext(events)).text] == ["t4 ", "t5 "]  # replayed, in order
    step = await parked(events)
    live.put_nowait(dump_event(e.done()))
    assert (await step).type == "done"
    assert transcript.text == "t0 t1 t2 t3 t4 t5 " and transcript.whole
    await events.aclose()
    assert live.direct is None  # (the follow ended: nothing is taken for it any more)


@pytest.mark.anyio
async def test_a_holder_that_fails_loses_no_token_and_the_hub_goes_on(redis):
    """A holder raising inside put_nowait (the hub's reading task) neither kills that task nor
    loses the token: the message goes to the follower, which sees it as applied (stale) and the
    transcript keeps it."""
    e = Events()
    live, transcript = Mailbox(), Transcript(JOB)
    events = follow_events(redis, transcript, live, Holding(fail=True))
    live.put_nowait(dump_event(e.start()))
    await anext(events)
    step = await parked(events)
    live.put_nowait(dump_event(e.token("kept ")))  # (no exception here)
    live.put_nowait(dump_event(e.done()))
    assert (await step).type == "done" and transcript.text == "kept "
    await events.aclose()


@pytest.mark.anyio
async def test_a_follower_whose_tokens_are_all_taken_is_not_told_it_is_idle(redis, monkeypatch):
    """Tokens taken in the hub's turn count as heard from the job: the idle tick (None: the follower
    re-checks whether the job ended unseen) comes only after IDLE_SECONDS with none at all."""
    monkeypatch.setattr(collector, "IDLE_SECONDS", 0.2)
    e = Events()
    live, transcript = Mailbox(), Transcript(JOB)
    events = follow_events(redis, transcript, live, Holding())
    assert await anext(events) is None  # (nothing yet: its first idle tick)
    live.put_nowait(dump_event(e.start()))
    assert (await anext(events)).type == "start"
    step = asyncio.ensure_future(anext(events))
    for i in range(8):  # 0.4 s of tokens, 0.05 s apart: two idle periods' worth, never idle
        await asyncio.sleep(0.05)
        live.put_nowait(dump_event(e.token(f"{i}")))
    assert not step.done() and transcript.tokens == 8
    assert await step is None  # and once they stop, it is told
    await events.aclose()
