"""The event publisher: every event reaches both the stream and the channel, numbered, in order, once."""

from __future__ import annotations

import asyncio

import anyio
import pytest
from readers import job_events
from redis.exceptions import ConnectionError as RedisConnectionError

from shared import keys
from shared.errors import JobStopped
from shared.events import TERMINAL, TokenUsage, parse_event, write_wired
from worker.publisher import EventPublisher, EventWriter

pytestmark = pytest.mark.anyio

JOB = "job-pub-1"
USAGE = TokenUsage(prompt_tokens=3, completion_tokens=2, total_tokens=5)


@pytest.fixture
async def channel(redis):
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.events(JOB))
    yield pubsub
    await pubsub.aclose()


async def channel_events(pubsub) -> list:
    """Read the channel up to and including the terminal event (fails the test if it never comes)."""
    events = []
    with anyio.fail_after(5):
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message is None:
                continue
            events.append(parse_event(message["data"]))
            if events[-1].type in TERMINAL:
                return events


async def done(publisher: EventPublisher) -> None:
    await publisher.done(usage=USAGE, cost=None, finish_reason="stop", model="mock-1")


def assert_well_formed(events, attempt: int = 1) -> None:
    assert [e.seq for e in events] == list(range(len(events))), "seq rises by one with no gaps"
    assert {e.job_id for e in events} == {JOB}
    assert {e.attempt for e in events} == {attempt}
    assert events[0].type == "start"
    assert [e.type in TERMINAL for e in events].count(True) == 1, "exactly one terminal event"
    assert events[-1].type in TERMINAL, "the terminal event is last"


async def test_events_land_in_the_stream_and_on_the_channel(redis, channel):
    publisher = EventWriter(redis).publisher(JOB, attempt=1)
    await publisher.start("worker-a", "mock-1")
    for token in ["Hello", ", ", "world"]:
        publisher.token(token)
    await done(publisher)

    streamed = await job_events(redis, JOB)
    live = await channel_events(channel)
    assert streamed == live
    assert_well_formed(streamed)
    assert "".join(e.text for e in streamed if e.type == "token") == "Hello, world"
    start, end = streamed[0], streamed[-1]
    assert (start.worker_id, start.model) == ("worker-a", "mock-1")
    assert (end.type, end.usage, end.cost, end.finish_reason, end.model) == (
        "done",
        USAGE,
        None,
        "stop",
        "mock-1",
    )


async def test_a_job_id_json_escapes_is_written_whole_beside_plain_ones(redis):
    """The write leaves each event's job id out for the script to put back; an id JSON escapes
    (a quote, a backslash: arq takes any id) cannot be put back by plain concatenation, so its
    events go whole. Both jobs' events, written in one script, read back exactly."""
    odd = 'job"q\\1'
    writer = EventWriter(redis)
    plain, quoted = writer.publisher(JOB, attempt=1), writer.publisher(odd, attempt=2)
    for publisher in (plain, quoted):
        publisher.start_soon("worker-a", "mock-1")
        publisher.token('ü "x"\n')
    await asyncio.gather(done(plain), done(quoted))
    for job_id, attempt in ((JOB, 1), (odd, 2)):
        events = await job_events(redis, job_id)
        assert [(e.type, e.job_id, e.attempt) for e in events] == [
            ("start", job_id, attempt), ("token", job_id, attempt), ("done", job_id, attempt)
        ]  # fmt: skip
        assert events[1].text == 'ü "x"\n'


async def test_many_unawaited_tokens_are_coalesced_without_losing_text(redis, channel):
    publisher = EventWriter(redis).publisher(JOB, attempt=1)
    await publisher.start("worker-a", "mock-1")
    emitted = [f"t{i} " for i in range(500)]
    for token in emitted:
        publisher.token(token)  # a fast model: no await between tokens
    await done(publisher)

    streamed = await job_events(redis, JOB)
    assert streamed == await channel_events(channel)
    assert_well_formed(streamed)
    token_events = [e for e in streamed if e.type == "token"]
    assert "".join(e.text for e in token_events) == "".join(emitted)
    assert 1 <= len(token_events) < len(emitted)


async def test_a_burst_of_tokens_asks_the_writer_once(redis, channel, monkeypatch):
    """Tokens with no write between them merge into the job's pending token event, which is in the
    writer's queue already: a burst asks the writer once, not once a token (a no-op job's 17 did),
    and every token still goes out, in order, with the ending."""
    writer = EventWriter(redis)
    asked = []
    schedule = writer._schedule
    monkeypatch.setattr(
        writer, "_schedule", lambda publisher: (asked.append(publisher.job_id), schedule(publisher))
    )
    publisher = writer.publisher(JOB, attempt=1)
    publisher.start_soon("worker-a", "mock-1")
    emitted = [f"t{i} " for i in range(17)]
    for token in emitted:
        publisher.token(token)
    await done(publisher)
    assert asked == [JOB, JOB, JOB]  # the start, the first token, the ending
    streamed = await job_events(redis, JOB)
    assert streamed == await channel_events(channel)
    assert_well_formed(streamed)
    assert [e.type for e in streamed] == ["start", "token", "done"]
    assert streamed[1].text == "".join(emitted)


async def test_tokens_emitted_across_awaits_keep_their_order(redis, channel):
    publisher = EventWriter(redis).publisher(JOB, attempt=1)
    await publisher.start("worker-a", "mock-1")
    emitted = []
    for burst in range(30):
        for i in range(burst % 5 + 1):
            emitted.append(f"<{burst}.{i}>")
            publisher.token(emitted[-1])
        await asyncio.sleep(0)  # let the background writer run between bursts
    await done(publisher)

    streamed = await job_events(redis, JOB)
    assert streamed == await channel_events(channel)
    assert_well_formed(streamed)
    token_events = [e for e in streamed if e.type == "token"]
    assert "".join(e.text for e in token_events) == "".join(emitted)
    assert all(e.text for e in token_events), "no empty token events"


@pytest.mark.parametrize("ending", ["done", "error", "cancelled"])
async def test_each_ending_is_the_single_last_event(redis, channel, ending):
    publisher = EventWriter(redis).publisher(JOB, attempt=1)
    await publisher.start("worker-a", "mock-1")
    publisher.token("partial")
    if ending == "done":
        await done(publisher)
    elif ending == "error":
        await publisher.error("the provider failed (HTTP 503)")
    else:
        await publisher.cancelled()

    streamed = await job_events(redis, JOB)
    assert streamed == await channel_events(channel)
    assert_well_formed(streamed)
    assert [e.type for e in streamed] == ["start", "token", ending]
    if ending == "error":
        assert streamed[-1].error == "the provider failed (HTTP 503)"


async def test_terminal_event_is_in_redis_when_its_call_returns(redis):
    publisher = EventWriter(redis).publisher(JOB, attempt=1)
    await publisher.start("worker-a", "mock-1")
    assert [e.type for e in await job_events(redis, JOB)] == ["start"]
    publisher.token("a")
    publisher.token("b")
    await publisher.error("stop")
    assert [e.type for e in await job_events(redis, JOB)] == ["start", "token", "error"]


async def test_a_new_attempt_numbers_from_zero_again(redis):
    first = EventWriter(redis).publisher(JOB, attempt=1)
    await first.start("worker-a", "mock-1")
    first.token("lost when the worker died")
    await asyncio.sleep(0)
    second = EventWriter(redis).publisher(JOB, attempt=2)
    await second.start("worker-b", "mock-1")
    second.token("whole answer")
    await done(second)

    events = [e for e in await job_events(redis, JOB) if e.attempt == 2]
    assert_well_formed(events, attempt=2)
    assert "".join(e.text for e in events if e.type == "token") == "whole answer"


async def test_the_stream_expires(redis):
    publisher = EventWriter(redis).publisher(JOB, attempt=1)
    await publisher.start("worker-a", "mock-1")
    await done(publisher)
    ttl = await redis.ttl(keys.stream(JOB))
    assert 0 < ttl <= keys.STREAM_TTL_SECONDS


async def test_events_of_different_jobs_stay_apart(redis):
    writer = EventWriter(redis)
    a, b = writer.publisher("job-a", 1), writer.publisher("job-b", 1)
    await a.start("w", "mock-1")
    await b.start("w", "mock-1")
    a.token("for a")
    b.token("for b")
    await a.cancelled()
    await done(b)
    events_a, events_b = await job_events(redis, "job-a"), await job_events(redis, "job-b")
    assert [e.type for e in events_a] == ["start", "token", "cancelled"]
    assert [e.type for e in events_b] == ["start", "token", "done"]
    assert events_a[1].text == "for a" and events_b[1].text == "for b"


class _FlakyRedis:
    """A Redis whose writes fail while `down` (as when the server has gone away), then work again."""

    def __init__(self, redis, down: bool = True):
        self.redis, self.down, self.failed = redis, down, 0

    async def evalsha(self, *args):
        if self.down:
            self.failed += 1
            raise RedisConnectionError("Redis went away (job-other's secret tokens)")
        return await self.redis.evalsha(*args)

    async def eval(self, *args):
        return await self.evalsha(*args) if self.down else await self.redis.eval(*args)


async def test_events_that_failed_to_write_are_retried_in_order_and_the_ending_waits_for_them(redis, channel):
    flaky = _FlakyRedis(redis, down=False)
    publisher = EventWriter(flaky).publisher(JOB, attempt=1)
    await publisher.start("worker-a", "mock-1")
    flaky.down = True
    for i in range(20):
        publisher.token(f"t{i} ")
        await asyncio.sleep(0.01)
    ending = asyncio.create_task(done(publisher))
    await asyncio.sleep(0.3)
    assert flaky.failed >= 2 and not ending.done(), "the ending waits while earlier events are unwritten"
    flaky.down = False
    await asyncio.wait_for(ending, 5)

    streamed = await job_events(redis, JOB)
    assert_well_formed(streamed)
    assert "".join(e.text for e in streamed if e.type == "token") == "".join(f"t{i} " for i in range(20))
    assert streamed == await channel_events(channel), "published only what was stored, once each"


async def test_a_job_whose_events_cannot_be_written_by_its_deadline_is_stopped_with_a_clear_error(redis):
    publisher = EventWriter(_FlakyRedis(redis)).publisher(JOB, attempt=1, patience=0.3)
    publisher.token("lost")
    with pytest.raises(JobStopped, match="could not be written to Redis for 0 s: Redis is unreachable") as e:
        await publisher.error("could not finish")
    assert "job-other" not in e.value.message
    with pytest.raises(JobStopped):
        publisher.token("after the deadline")
    with pytest.raises(JobStopped):
        await publisher.settle()


async def test_one_jobs_broken_stream_fails_that_job_alone_and_its_error_names_no_other_job(redis):
    await redis.set(keys.stream("job-a"), b"junk written by hand")
    writer = EventWriter(redis)
    a, b = writer.publisher("job-a", 1), writer.publisher("job-b", 1)
    b.token("secret tokens of b")
    a.token("tokens of a")
    results = await asyncio.gather(a.start("w", "mock-1"), done(b), return_exceptions=True)
    assert results[1] is None, "job-b's events were written"
    assert isinstance(results[0], JobStopped)
    message = results[0].message
    assert "mcpq:stream:job-a holds a value that is not a stream" in message
    assert "job-b" not in message and "secret" not in message
    assert (
        "".join(e.text for e in await job_events(redis, "job-b") if e.type == "token") == "secret tokens of b"
    )


class _ReplyLost(_FlakyRedis):
    """A Redis that runs the write but whose reply is lost on the way back, while `down`."""

    async def evalsha(self, *args):
        answer = await self.redis.evalsha(*args)
        if self.down:
            self.failed += 1
            self.down = False  # the retry's reply comes back
            raise RedisConnectionError("connection lost before the reply came")
        return answer


async def test_a_write_that_landed_though_its_reply_was_lost_is_not_stored_twice(redis, channel):
    flaky = _ReplyLost(redis, down=False)
    publisher = EventWriter(flaky).publisher(JOB, attempt=1)
    await publisher.start("worker-a", "mock-1")
    await publisher.settle()  # the script is known to the server: the next write is one EVALSHA
    flaky.down = True
    publisher.token("once ")
    publisher.token("only")
    await done(publisher)
    assert flaky.failed == 1

    streamed = await job_events(redis, JOB)
    assert_well_formed(streamed)
    assert "".join(e.text for e in streamed if e.type == "token") == "once only"
    assert streamed == await channel_events(channel), "published once each too"


async def test_the_start_event_says_when_the_job_started_not_when_its_write_went_out(
    redis, channel, monkeypatch
):
    now = [1_000.0]
    monkeypatch.setattr("worker.publisher.time.time", lambda: now[0])
    publisher = EventWriter(redis).publisher(JOB, attempt=1)
    publisher.start_soon("worker-a", "mock-1")
    now[0] = 2_000.0  # the job went on before its start event was written
    publisher.token("Hi")
    await done(publisher)
    events = await channel_events(channel)
    assert (events[0].type, events[0].ts) == ("start", 1_000.0)
    assert {e.ts for e in events[1:]} == {2_000.0}, "the later events are stamped when written"


async def test_a_stream_asks_for_its_trim_once_it_can_outgrow_its_length(redis):
    """A first attempt's XADDs leave out MAXLEN while its events number fewer than STREAM_MAXLEN (a
    trim's three arguments were ~15 % of Redis's CPU for a token write), so its stream never outgrows
    the length; past it, and on any later attempt (the stream holds the attempts before), the trim
    is asked for again."""
    writer = EventWriter(redis)
    first, later = writer.publisher(JOB, attempt=1), writer.publisher("job-pub-2", attempt=2)
    assert first._short() and not later._short()
    first._seq = keys.STREAM_MAXLEN - 1
    assert first._short()
    first._seq = keys.STREAM_MAXLEN
    assert not first._short()

    body = b'"seq":0,"attempt":1,"ts":1.0,"type":"token","text":"x"}'
    events = [("token", body)] * (keys.STREAM_MAXLEN + 250)
    await write_wired(redis, {JOB: events}, short=frozenset({JOB}))
    assert await redis.xlen(keys.stream(JOB)) == keys.STREAM_MAXLEN + 250  # (as the flag says: untrimmed)
    await write_wired(redis, {JOB: events[:1]})
    assert await redis.xlen(keys.stream(JOB)) < keys.STREAM_MAXLEN + 250  # trimmed (approximately)
