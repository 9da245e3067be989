"""ProgressRelay's timing, with a fake context: the first text of an attempt goes out at once, and
text held back by the interval goes out when it ends even if no event follows."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid

import anyio
import anyio.lowlevel
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from messenger import progress
from messenger.collector import Transcript
from messenger.progress import (
    BUSY_CALLS,
    BUSY_INTERVAL,
    PROGRESS_INTERVAL,
    ProgressRelay,
    text_interval,
)
from messenger.session_sdk import RequestStream, Wire
from messenger.sessions import SessionEvents, SessionRegistry, split_event_id
from shared import keys
from shared.events import DoneEvent, InputRequiredEvent, StartEvent, TokenEvent


class Sink:
    """A context without a request (no progressToken): report_progress gets every notification."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, str | None]] = []
        self.arrived = anyio.Event()

    async def report_progress(self, progress: float, total: float | None, message: str | None) -> None:
        self.sent.append((time.monotonic(), message))
        self.arrived.set()


async def feed(relay: ProgressRelay, transcript: Transcript, event) -> None:
    transcript.apply(event)
    await relay(event, transcript)


async def test_a_small_models_tokens_each_go_out_as_they_come():
    """A model that streams a token every 30 ms (Gemma 3 270M on a CPU) is not held back by the
    interval: every token, the last one too, is sent when it arrives (at 50 ms, the last token of an
    answer waited up to 50 ms for the interval to end)."""
    sink, t = Sink(), Transcript("j1")
    relay = ProgressRelay(sink, None)
    await feed(relay, t, StartEvent(job_id="j1", seq=0, attempt=1, ts=0, worker_id="w", model="m"))
    for seq, word in enumerate(["Hello ", "from ", "a small model."], start=1):
        await feed(relay, t, TokenEvent(job_id="j1", seq=seq, attempt=1, ts=0, text=word))
        assert sink.sent[-1][1] == word, f"token {seq} went out when it came"
        await anyio.sleep(0.030)  # the model decodes its next token
    usage = {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}
    end = DoneEvent(
        job_id="j1", seq=4, attempt=1, ts=0, usage=usage, model="m", cost=None, finish_reason="stop"
    )
    await feed(relay, t, end)
    assert [m for _, m in sink.sent if m] == ["Hello ", "from ", "a small model."]


async def test_held_back_text_goes_out_at_the_interval_end_with_no_event_after_it(monkeypatch):
    monkeypatch.setattr("messenger.progress.PROGRESS_INTERVAL", 0.2)  # two events in a row fit in it
    sink, t = Sink(), Transcript("j1")
    relay = ProgressRelay(sink, None)
    await relay(None, t)  # enqueued: status only
    await relay(None, t)  # a keep-alive just now must not hold the first text back
    await feed(relay, t, StartEvent(job_id="j1", seq=0, attempt=1, ts=0, worker_id="w", model="m"))
    started = time.monotonic()
    await feed(relay, t, TokenEvent(job_id="j1", seq=1, attempt=1, ts=0, text="first "))
    assert sink.sent[-1][1] == "first ", "the first text of an attempt goes out at once"
    await feed(relay, t, TokenEvent(job_id="j1", seq=2, attempt=1, ts=0, text="second"))
    assert sink.sent[-1][1] == "first ", "within the interval: held back"
    sink.arrived = anyio.Event()
    with anyio.fail_after(2):  # no further event: the model paused
        await sink.arrived.wait()
    when, text = sink.sent[-1]
    assert text == "second" and when - started >= 0.2 * 0.9
    assert [m for _, m in sink.sent if m] == ["first ", "second"]


class SlowSink(Sink):
    """A client whose text notifications are slow to go out (a busy messenger's store round trip)
    until `go` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.go = anyio.Event()

    async def report_progress(self, progress: float, total: float | None, message: str | None) -> None:
        if message:
            await self.go.wait()
        await super().report_progress(progress, total, message)


async def test_tokens_that_come_while_a_notification_is_on_its_way_go_out_together_after_it(monkeypatch):
    """The follower does not wait for its call's notification in flight: the tokens that come
    meanwhile are held and go out in one notification once it is out (a token each, each waiting
    for the one before, never caught up with a stream at 1,000 callers: bench/callers.py)."""
    monkeypatch.setattr("messenger.progress.PROGRESS_INTERVAL", 0.0)
    sink, t = SlowSink(), Transcript("j1")
    relay = ProgressRelay(sink, None)
    await feed(relay, t, StartEvent(job_id="j1", seq=0, attempt=1, ts=0, worker_id="w", model="m"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(feed, relay, t, TokenEvent(job_id="j1", seq=1, attempt=1, ts=0, text="first "))
        await anyio.sleep(0.01)  # its notification is on its way
        with anyio.fail_after(1):
            for seq in range(2, 6):
                await feed(relay, t, TokenEvent(job_id="j1", seq=seq, attempt=1, ts=0, text=f"t{seq} "))
        sink.go.set()
    with anyio.fail_after(2):
        while len([m for _, m in sink.sent if m]) < 2:
            sink.arrived = anyio.Event()
            await sink.arrived.wait()
    assert [m for _, m in sink.sent if m] == ["first ", "t2 t3 t4 t5 "]


async def test_a_backlog_of_tokens_goes_out_together_once_the_follower_has_caught_up(monkeypatch):
    """Tokens with messages waiting behind them (transcript.behind) are held even when the interval
    has passed; the last of the backlog sends them all, at once."""
    monkeypatch.setattr("messenger.progress.PROGRESS_INTERVAL", 0.0)
    sink, t = Sink(), Transcript("j1")
    relay = ProgressRelay(sink, None)
    await feed(relay, t, StartEvent(job_id="j1", seq=0, attempt=1, ts=0, worker_id="w", model="m"))
    await feed(relay, t, TokenEvent(job_id="j1", seq=1, attempt=1, ts=0, text="first "))
    for seq, behind in zip(range(2, 6), (3, 2, 1, 0), strict=True):
        t.behind = behind
        await feed(relay, t, TokenEvent(job_id="j1", seq=seq, attempt=1, ts=0, text=f"t{seq} "))
    assert [m for _, m in sink.sent if m] == ["first ", "t2 t3 t4 t5 "]


async def test_with_many_calls_streaming_text_goes_out_less_often_until_they_end():
    """More than BUSY_CALLS relays with text under way: each sends text every BUSY_INTERVAL (half
    the notifications at 1,000 callers); as they end, the interval is PROGRESS_INTERVAL again."""
    sinks = [Sink() for _ in range(BUSY_CALLS + 1)]
    relays = [ProgressRelay(sink, None) for sink in sinks]
    transcripts = [Transcript(f"j{i}") for i in range(len(relays))]
    assert text_interval() == PROGRESS_INTERVAL
    for relay, t in zip(relays, transcripts, strict=True):
        await feed(relay, t, StartEvent(job_id=t.job_id, seq=0, attempt=1, ts=0, worker_id="w", model="m"))
        await feed(relay, t, TokenEvent(job_id=t.job_id, seq=1, attempt=1, ts=0, text="a"))
    assert text_interval() == BUSY_INTERVAL > PROGRESS_INTERVAL
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    relay, t = relays[0], transcripts[0]
    await feed(
        relay,
        t,
        DoneEvent(
            job_id=t.job_id, seq=2, attempt=1, ts=0, usage=usage, model="m", cost=None, finish_reason="stop"
        ),
    )
    assert text_interval() == PROGRESS_INTERVAL  # BUSY_CALLS left: not more than that


async def test_with_many_calls_streaming_their_held_text_goes_out_together_an_interval_apart():
    """While more than BUSY_CALLS calls stream, text held back goes out on a tick every call keeps:
    calls whose text went out at different moments send the next at the same loop turn (one Batch
    pipeline, writes one after another; each call's at its own moment: 26-59 turns), each still
    about a BUSY_INTERVAL after its last (a fifth less at most: a tick's lateness is not carried on)."""
    loop, turn = asyncio.get_running_loop(), [0]

    def count_turns() -> None:
        turn[0] += 1
        loop.call_soon(count_turns)

    loop.call_soon(count_turns)
    sinks = [Sink() for _ in range(BUSY_CALLS + 1)]
    relays = [ProgressRelay(sink, None) for sink in sinks]
    transcripts = [Transcript(f"j{i}") for i in range(len(relays))]
    sent_at: dict[int, tuple[float, int]] = {}
    all_sent = anyio.Event()
    for i, (relay, t, sink) in enumerate(zip(relays, transcripts, sinks, strict=True)):
        sink.report_progress = _noting(sink, i, sent_at, turn, all_sent, len(relays))  # type: ignore[method-assign]
        await feed(relay, t, StartEvent(job_id=t.job_id, seq=0, attempt=1, ts=0, worker_id="w", model="m"))
    assert text_interval() == BUSY_INTERVAL
    for i, (relay, t) in enumerate(zip(relays, transcripts, strict=True)):
        await feed(relay, t, TokenEvent(job_id=t.job_id, seq=1, attempt=1, ts=0, text="a"))  # at once
        if i % 10 == 0:
            await anyio.sleep(0.002)  # the calls' first text goes out over ~20-30 ms
    assert text_interval() == BUSY_INTERVAL
    for relay, t in zip(relays, transcripts, strict=True):
        await feed(relay, t, TokenEvent(job_id=t.job_id, seq=2, attempt=1, ts=0, text="b"))  # held
    assert not sent_at, "within the interval: held back"
    with anyio.fail_after(2):
        await all_sent.wait()
    for phase in {relay.phase for relay in relays}:  # each clock's calls together (two turns when one
        turns = {sent_at[i][1] for i, relay in enumerate(relays) if relay.phase == phase}  # of its ticks
        assert len(turns) <= 2, f"{len(turns)} loop turns sent them"  # fell among their first texts)
    phases = sorted(relay.phase for relay in relays)  # the calls split evenly between the clocks
    assert (
        len(set(phases)) == progress.TICK_PHASES
        and phases.count(phases[0]) >= len(relays) // progress.TICK_PHASES
    )
    for i, sink in enumerate(sinks):
        first = next(when for when, text in sink.sent if text == "a")
        assert sent_at[i][0] - first >= BUSY_INTERVAL * 0.8
    for relay, t in zip(relays, transcripts, strict=True):  # (the calls end: not busy for the next test)
        usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
        end = DoneEvent(
            job_id=t.job_id, seq=3, attempt=1, ts=0, usage=usage, model="m", cost=None, finish_reason="stop"
        )
        await feed(relay, t, end)


def _noting(sink: Sink, i: int, sent_at: dict[int, tuple[float, int]], turn: list[int], all_sent, n: int):
    """The sink's report_progress, noting when (and at which loop turn) its held text "b" went out."""
    said = sink.report_progress

    async def report_progress(progress: float, total: float | None, message: str | None) -> None:
        if message == "b":
            sent_at[i] = (time.monotonic(), turn[0])
            if len(sent_at) == n:
                all_sent.set()
        await said(progress, total, message)

    return report_progress


async def test_text_held_back_after_an_answered_pause_still_goes_out_at_the_interval_end(monkeypatch):
    """A follower goes on past an input_required its caller has answered already (wait_for_job on a
    job that paused and resumed: the replay holds the old pause). The pause ended the held flush
    but left it the relay's `held` task, so no later text was ever held for an interval's end: text
    held back in the resumed attempt waited for the job's next event (a model that paused: its last
    words)."""
    monkeypatch.setattr("messenger.progress.PROGRESS_INTERVAL", 0.2)
    sink, t = Sink(), Transcript("j1")
    relay = ProgressRelay(sink, None)
    await feed(relay, t, StartEvent(job_id="j1", seq=0, attempt=1, ts=0, worker_id="w", model="m"))
    await feed(relay, t, TokenEvent(job_id="j1", seq=1, attempt=1, ts=0, text="Shall I? "))
    await feed(relay, t, TokenEvent(job_id="j1", seq=2, attempt=1, ts=0, text="Asking. "))  # held
    pause = InputRequiredEvent(
        job_id="j1", seq=3, attempt=1, ts=0, key="j1:1", server="s", tool="t", arguments={},
        question="May I?", expires_at=time.time() + 60,
    )  # fmt: skip
    await feed(relay, t, pause)
    await feed(relay, t, StartEvent(job_id="j1", seq=0, attempt=2, ts=0, worker_id="w", model="m"))
    await feed(relay, t, TokenEvent(job_id="j1", seq=1, attempt=2, ts=0, text="Yes: "))
    await feed(relay, t, TokenEvent(job_id="j1", seq=2, attempt=2, ts=0, text="done."))  # held
    sink.arrived = anyio.Event()
    with anyio.fail_after(2):  # no further event: the model paused
        while [m for _, m in sink.sent if m][-1] != "done.":
            await sink.arrived.wait()
            sink.arrived = anyio.Event()
    assert [m for _, m in sink.sent if m] == ["Shall I? ", "Asking. ", "Yes: ", "done."]


class Stored:
    """A session's event store, recording each store call (one Batch entry, one socket write)."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def store_bodies(self, stream_id: str, events: list[tuple[str, str]]) -> list[str]:
        self.calls.append([_said(body) for body, _ in events])
        return [f"{stream_id}/{len(self.calls)}-{i}" for i in range(len(events))]


def _said(body: str) -> str:
    """A progress notification in short: its text, else its status."""
    params = json.loads(body)["params"]
    return params.get("message") or params["_meta"]["mcp-queue/status"]


def direct_relay(streams: bool = True) -> tuple[ProgressRelay, Stored, MemoryObjectReceiveStream, Transcript]:
    """A relay writing to a RequestStream (no Wire: the request's own stream), as in a 2025-11-25
    call, its store, the request's stream (what the response's writer reads) and its job's transcript."""
    store = Stored()
    writer, reader = anyio.create_memory_object_stream(50)
    request_streams = {"2": (writer, reader)} if streams else {}
    transport = type("T", (), {"_event_store": store, "_request_streams": request_streams})()
    relay = ProgressRelay(Sink(), None)
    relay.out.token, relay.out.direct = "t", RequestStream(transport, "2", None)  # type: ignore[arg-type]
    return relay, store, reader, Transcript("j1")


START = StartEvent(job_id="j1", seq=0, attempt=1, ts=0, worker_id="w", model="m")
HI = TokenEvent(job_id="j1", seq=1, attempt=1, ts=0, text="hi")
DONE = DoneEvent(
    job_id="j1", seq=2, attempt=1, ts=0, model="m", cost=None, finish_reason="stop",
    usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
)  # fmt: skip


async def feed_behind(relay: ProgressRelay, t: Transcript, event, behind: int) -> None:
    t.apply(event)
    t.behind = behind  # as collector.follow_events sets it: messages waiting after this one
    await relay(event, t)


async def test_a_bursts_notifications_go_out_in_one_write_in_order_with_their_ids():
    """An instant job's start, text and ending come in one hub read (each with the rest behind it):
    their notifications are one store entry and one write, where they were three (bench/callers.py
    --per-call: 7 socket writes a call, the write system call 37 % of the messenger's samples)."""
    relay, store, reader, t = direct_relay()
    for event, behind in ((START, 2), (HI, 1), (DONE, 0)):
        await feed_behind(relay, t, event, behind)
    assert store.calls == [["running", "hi", "completed"]]
    sent = [reader.receive_nowait() for _ in range(3)]
    assert [e.event_id for e in sent] == ["2/1-0", "2/1-1", "2/1-2"]
    assert [_said(e.message.body) for e in sent] == ["running", "hi", "completed"]


async def test_an_ending_or_a_burst_that_ends_goes_out_before_the_relay_returns():
    """The ending is never held, even with messages behind it (the follower stops at it and waits
    for the stored result, 0.5-1 s): it goes out with the burst before it, at once."""
    relay, store, _, t = direct_relay()
    await feed_behind(relay, t, START, 3)
    await feed_behind(relay, t, HI, 2)
    assert store.calls == []  # held: more of the burst is coming
    await feed_behind(relay, t, DONE, 1)
    assert store.calls == [["running", "hi", "completed"]]


async def _wait_for(store: Stored, calls: int) -> None:
    with anyio.fail_after(2):
        while len(store.calls) < calls:
            await anyio.lowlevel.checkpoint()


async def test_a_burst_the_follower_leaves_goes_out_at_the_loops_next_turn():
    """Every way out of the follower with a burst's hold open sends what it holds, in order: the
    next message was no event (it waits), it was cancelled (the caller went away, a timeout), an
    event failed, the client's stream is gone (stored for its resume)."""
    # it waits: no event comes after the burst's first
    relay, store, reader, t = direct_relay()
    await feed_behind(relay, t, START, 1)
    await _wait_for(store, 1)
    with anyio.fail_after(2):
        assert (await reader.receive()).event_id == "2/1-0"
    assert store.calls == [["running"]]
    # cancelled between two events of a burst
    relay, store, _, t = direct_relay()

    async def follower(t: Transcript) -> None:
        await feed_behind(relay, t, START, 2)
        await feed_behind(relay, t, HI, 1)
        await anyio.sleep(10)  # (a follower never sleeps here; it is where the cancel finds it)

    task = asyncio.create_task(follower(t))
    await asyncio.sleep(0)
    task.cancel()
    await _wait_for(store, 1)
    assert store.calls == [["running", "hi"]]
    # an event that fails inside the burst: the earlier events' notifications still go out
    relay, store, _, t = direct_relay()
    await feed_behind(relay, t, START, 2)

    async def failing(event, transcript):
        raise RuntimeError("boom")

    relay.lifecycle = failing
    with pytest.raises(RuntimeError):
        await feed_behind(relay, t, HI, 1)
    await _wait_for(store, 1)
    assert store.calls == [["running"]]
    # the client went away: its stream is gone, the store still gets them (a resume replays them)
    relay, store, _, t = direct_relay(streams=False)
    await feed_behind(relay, t, START, 1)
    await _wait_for(store, 1)
    assert store.calls == [["running"]]


async def test_events_after_a_burst_went_out_follow_it_in_order():
    """A burst cut short by the loop's turn, then the next event: two sends, in the events' order."""
    relay, store, reader, t = direct_relay()
    await feed_behind(relay, t, START, 1)
    await _wait_for(store, 1)  # the loop turned: the hold is being sent, in a task of its own
    await feed_behind(relay, t, HI, 0)
    assert store.calls == [["running"], ["hi"]]
    with anyio.fail_after(2):
        assert [_said((await reader.receive()).message.body) for _ in range(2)] == ["running", "hi"]


async def test_a_burst_whose_event_waits_inside_the_relay_goes_out_at_that_events_end():
    """The loop turns while an event of the burst is being relayed (its relay waits: a lock, the
    SDK's stream): the burst goes out as that event ends, with it, once; and if that event fails, the
    earlier events' notifications still go out."""
    for fails in (False, True):
        relay, store, _, t = direct_relay()
        gate = anyio.Event()

        async def slow(event, transcript, gate=gate, fails=fails):
            if event is HI:
                await gate.wait()
                if fails:
                    raise RuntimeError("boom")

        async def follower(relay=relay, t=t) -> None:
            await feed_behind(relay, t, START, 2)
            await feed_behind(relay, t, HI, 1)  # (in the same turn, as a follower's burst)

        relay.lifecycle = slow
        task = asyncio.create_task(follower())
        for _ in range(3):
            await asyncio.sleep(0)  # the burst's own turn comes and goes: the event is still inside
        assert store.calls == []
        gate.set()
        with anyio.fail_after(2):
            if fails:
                with pytest.raises(RuntimeError):
                    await task
            else:
                await task
        await _wait_for(store, 1)
        assert store.calls == [["running", "hi"]] if not fails else [["running"]]


def test_a_notification_is_the_json_rpc_message_and_text_json_cannot_encode_goes_as_json_dumps_writes_it():
    """notification() writes with pydantic-core's encoder; text with a lone surrogate (which it
    refuses) goes as json.dumps writes it, as before."""
    import json

    from messenger.progress import notification

    params = {
        "progressToken": "t",
        "progress": 3.001,
        "message": 'héllo "q"\n\u2028',
        "_meta": {"k": [1, None]},
    }
    wire = notification("notifications/progress", params)
    assert json.loads(wire) == {"jsonrpc": "2.0", "method": "notifications/progress", "params": params}
    assert "\n" not in wire and "héllo" in wire
    odd = {"message": "a\ud800b"}
    assert notification("n", odd) == json.dumps(
        {"jsonrpc": "2.0", "method": "n", "params": odd}, ensure_ascii=False, separators=(",", ":")
    )


class Client(asyncio.Transport):
    """A caller's connection as uvicorn's response writes to it: each write's bytes."""

    def __init__(self, written: asyncio.Event) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.written = written

    def write(self, data) -> None:
        self.writes.append(bytes(data))
        self.written.set()

    def is_closing(self) -> bool:
        return False

    def said(self) -> list[tuple[str, str]]:
        """(event id, text or status) of each SSE event written, in order."""
        events = re.findall(rb"id: (.*?)\r\nevent: message\r\ndata: (.*?)\r\n\r\n", b"".join(self.writes))
        return [(event_id.decode(), _said(data.decode())) for event_id, data in events]


async def wired_relay(store, request_id: str, written: asyncio.Event) -> tuple[ProgressRelay, Client]:
    """A relay of a 2025-11-25 call whose response uvicorn's httptools writes (its priming event out)."""
    client = Client(written)
    cycle = RequestResponseCycle(
        {"type": "http", "method": "POST"}, client, FlowControl(client), logging.getLogger("t"),  # type: ignore[arg-type]
        logging.getLogger("t"), False, [], asyncio.Event(), False, True, lambda: None,
    )  # fmt: skip
    wire = Wire(cycle.send)
    await wire({"type": "http.response.start", "status": 200, "headers": []})
    await wire({"type": "http.response.body", "body": b"retry: 1\r\n\r\n", "more_body": True})
    transport = type("T", (), {"_event_store": store, "_request_streams": {}})()
    relay = ProgressRelay(Sink(), None)
    relay.out.token, relay.out.direct = "t", RequestStream(transport, request_id, wire)  # type: ignore[arg-type]
    return relay, client


def _ending(t: Transcript) -> DoneEvent:
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    return DoneEvent(
        job_id=t.job_id, seq=t.last_seq + 1, attempt=1, ts=0, usage=usage, model="m", cost=None, finish_reason="stop"
    )  # fmt: skip


async def test_the_held_text_of_calls_due_at_one_tick_is_one_task_and_one_pipeline_each_call_in_order(
    real_redis, monkeypatch, caplog
):
    """While more than BUSY_CALLS calls stream, the held text of every call due at a tick is stored
    in one Batch pipeline and written by one task, where each call's was a task of its own (101 tasks,
    each two loop callbacks); each call's events keep their order and their stored ids; a call that
    ended before its tick is skipped there (its text went with its ending); a call whose store Redis
    refuses is said once and the others are not touched; an ending that comes while the tick's store
    is on its way goes out after the held text; a token that comes once its tick is due, before the
    busy loop ran it, joins the tick's text (it went out alone, a store and a write of its own)."""
    monkeypatch.setattr(progress, "BUSY_INTERVAL", 1.0)  # (the held text waits for a tick 0.8-1.8 s on: a
    session = f"tick-{uuid.uuid4().hex}"  # loaded box's store round trip does not ring it among the feeds)
    store = SessionEvents(real_redis, session, SessionRegistry(real_redis, 60), "r1")
    await real_redis.set(keys.session_events(session, "7"), b"junk")  # its XADDs refused
    written = asyncio.Event()
    calls = [await wired_relay(store, str(i), written) for i in range(BUSY_CALLS + 1)]
    transcripts = [Transcript(f"j{i}") for i in range(len(calls))]

    async def feed_all(event_of) -> None:
        await asyncio.gather(
            *(feed(relay, t, event_of(t)) for (relay, _), t in zip(calls, transcripts, strict=True))
        )

    await feed_all(lambda t: StartEvent(job_id=t.job_id, seq=0, attempt=1, ts=0, worker_id="w", model="m"))
    await feed_all(lambda t: TokenEvent(job_id=t.job_id, seq=1, attempt=1, ts=0, text="a"))  # at once
    assert text_interval() == progress.BUSY_INTERVAL
    tasks: list[str] = []
    pipelines = [0]
    loop = asyncio.get_running_loop()
    loop.set_task_factory(
        lambda loop, coro, **kw: tasks.append(coro.__qualname__) or asyncio.Task(coro, loop=loop, **kw)
    )
    pipeline = real_redis.pipeline
    monkeypatch.setattr(
        real_redis, "pipeline", lambda **kw: pipelines.__setitem__(0, pipelines[0] + 1) or pipeline(**kw)
    )
    ring = progress._ring
    ending_at_tick: list[asyncio.Task[None]] = []
    rung: list[float] = []  # the ticks (two when one fell among the calls' first text)

    def ringing(ticks, at) -> None:  # call 3's ending comes as the (first) tick's store is on its way
        rung.append(at)
        ring(ticks, at)
        if not ending_at_tick:
            ending_at_tick.append(
                loop.create_task(feed(calls[3][0], transcripts[3], _ending(transcripts[3])))
            )

    monkeypatch.setattr(progress, "_ring", ringing)
    try:
        for (relay, _), t in zip(calls, transcripts, strict=True):
            await feed(relay, t, TokenEvent(job_id=t.job_id, seq=2, attempt=1, ts=0, text="b"))  # held
        calls[9][0].text_free_at = 0.0  # its tick's time has passed, the busy loop has not run it yet:
        await feed(calls[9][0], transcripts[9], TokenEvent(job_id="j9", seq=3, attempt=1, ts=0, text="c"))
        assert [s for _, s in calls[9][1].said()] == ["running", "a"]  # its token joins the tick's text
        await feed(calls[5][0], transcripts[5], _ending(transcripts[5]))  # before its tick: "b" goes with it
        with anyio.fail_after(5):
            while not all(
                any(said.startswith("b") for _, said in client.said()) for _, client in calls
            ) or not (ending_at_tick and ending_at_tick[0].done()):
                written.clear()
                await written.wait()
    finally:
        loop.set_task_factory(None)
    mine = [name for name in tasks if name not in ("Batch._flush", "feed")]  # (the store's, the test's)
    assert len(rung) <= 2 * progress.TICK_PHASES and pipelines[0] <= len(rung) + 2, (
        rung,
        pipelines,
    )  # (+2: the endings)
    assert len(mine) <= len(rung), f"{len(mine)} tasks for {len(rung)} ticks: {sorted(set(mine))}"
    for i, (_, client) in enumerate(calls):
        said = client.said()
        want = {
            3: ["running", "a", "b", "completed"],
            5: ["running", "a", "b", "completed"],
            9: ["running", "a", "bc"],
        }
        assert [s for _, s in said] == want.get(i, ["running", "a", "b"]), (i, said)
        entries = [split_event_id(event_id) for event_id, _ in said]
        assert all(e is not None and e[0] == str(i) for e in entries)
        if i == 7:
            assert {e[1] for e in entries if e} == {"0-0"}  # (names no entry: a resume from it gets 404)
        else:
            stored = await real_redis.xrange(keys.session_events(session, str(i)))
            assert [e[1] for e in entries if e] == [entry.decode() for entry, _ in stored]
    refused = [r for r in caplog.records if "not stored" in r.getMessage()]
    assert len(refused) == 1, refused
    for i, ((relay, _), t) in enumerate(zip(calls, transcripts, strict=True)):  # (not busy for the next test)
        if i not in (3, 5):
            await feed(relay, t, _ending(t))
