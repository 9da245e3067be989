"""shared/connection.py: the pool's quick checkout (no lock and no probe for a clean connection, yet a
connection left with an unread reply never hands that reply to the next command), the Batch, and
what a claim does while Redis is away."""

from __future__ import annotations

import asyncio
import math
import time

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis_server import RedisServer

from shared import connection
from shared.connection import CLAIM, Batch, QuickCheckout, connect


async def test_a_connection_returned_with_an_unread_reply_is_reconnected_not_reused(redis_url):
    redis = connect(redis_url)
    try:
        pool = redis.connection_pool
        assert isinstance(pool, QuickCheckout)
        connection = await pool.get_connection()
        await connection.send_command("ECHO", "stale")
        async with asyncio.timeout(5):
            while not await connection.can_read_destructive():  # the reply is in the parser now
                pass
        await pool.release(connection)  # as a buggy caller would: its reply unread
        assert await redis.echo("fresh") == b"fresh"
        assert await redis.ping() is True
    finally:
        await redis.aclose()


async def test_concurrent_commands_each_get_their_own_answer(redis_url):
    redis = connect(redis_url)
    try:
        answers = await asyncio.gather(*(redis.echo(f"n{i}") for i in range(300)))
        assert answers == [f"n{i}".encode() for i in range(300)]
    finally:
        await redis.aclose()


async def test_a_batch_sends_every_waiting_callers_commands_in_one_pipeline(redis_url, monkeypatch):
    """Batch (the messenger's session events and records): one pipeline carries the commands of every
    waiting caller, each caller's in order, each with its own reply."""
    redis = connect(redis_url)
    batch = Batch(redis)
    pipelines = 0
    make = redis.pipeline

    def counted(*args, **kwargs):
        nonlocal pipelines
        pipelines += 1
        return make(*args, **kwargs)

    monkeypatch.setattr(redis, "pipeline", counted)

    async def stream(k: int) -> list[str]:
        async def add(i: int) -> str:
            expire = [("EXPIRE", f"s{k}", 60)] if i == 0 else []
            return (await batch.run(("XADD", f"s{k}", "*", "m", str(i)), *expire)).decode()

        return [await add(i) for i in range(10)]

    ids = await asyncio.gather(*(stream(k) for k in range(20)))
    for k, entry_ids in enumerate(ids):
        stored = await redis.xrange(f"s{k}")
        assert [i.decode() for i, _ in stored] == entry_ids
        assert [f[b"m"] for _, f in stored] == [str(i).encode() for i in range(10)]
        assert 0 < await redis.ttl(f"s{k}") <= 60
    assert pipelines <= 11, pipelines  # 200 events: about one pipeline per round of the 20 streams
    await redis.aclose()


@pytest.mark.parametrize("error", [RedisConnectionError("Redis went away"), RuntimeError("a bug")])
async def test_a_failed_batch_fails_its_callers_and_the_next_one_lands(redis_url, monkeypatch, error):
    """No caller waits for ever: whatever the pipeline raised, each caller of it gets it."""
    redis = connect(redis_url)
    batch = Batch(redis)
    make = redis.pipeline

    def broken(*args, **kwargs):
        pipe = make(*args, **kwargs)

        async def refuse(*_a, **_k):
            raise error

        pipe.execute = refuse
        return pipe

    monkeypatch.setattr(redis, "pipeline", broken)
    results = await asyncio.gather(
        *(batch.run(("XADD", "s", "*", "m", "x")) for _ in range(3)), return_exceptions=True
    )
    assert all(r is error for r in results)
    monkeypatch.setattr(redis, "pipeline", make)
    entry = await batch.run(("XADD", "s", "*", "m", "y"))
    assert [i for i, _ in await redis.xrange("s")] == [entry]
    await redis.aclose()


async def test_a_batched_commands_error_is_its_callers_alone(redis_url):
    """A wrong-type key fails the caller that read it (messenger.sessions reads that as an unknown
    session); the callers beside it in the same pipeline get their replies."""
    redis = connect(redis_url)
    batch = Batch(redis)
    try:
        await redis.hset("h", "x", "y")
        await redis.set("k", "v")
        results = await asyncio.gather(
            batch.run(("GETEX", "h", "EX", 60)), batch.run(("GETEX", "k", "EX", 60)), return_exceptions=True
        )
        assert "WRONGTYPE" in str(results[0]) and results[1] == b"v"
        assert 0 < await redis.ttl("k") <= 60
    finally:
        await redis.aclose()


async def test_a_batch_hands_a_send_to_reply_to_its_callee_and_one_that_raises_fails_no_other(redis_url):
    """Batch.send_to (a submit's enqueue): the reply, an error reply as its exception, goes to the
    callee in the pipeline's flush; a callee that raises is the loop's exception handler's, and the
    callers beside it in the same pipeline get their replies."""
    redis = connect(redis_url)
    batch = Batch(redis)
    loop = asyncio.get_running_loop()
    handled: list[dict] = []
    loop.set_exception_handler(lambda _, context: handled.append(context))
    got: list = []

    def broken(reply):
        raise RuntimeError("callee")

    try:
        await redis.hset("h", "x", "y")
        batch.send_to(got.append, ("SET", "k", "v"))
        batch.send_to(broken, ("GET", "k"))
        batch.send_to(got.append, ("GETEX", "h", "EX", 60))
        assert await batch.run(("GET", "k")) == b"v"  # (the same pipeline: all answered by then)
        assert got[0] is True and isinstance(got[1], ResponseError) and "WRONGTYPE" in str(got[1])
        assert [str(c["exception"]) for c in handled] == ["callee"]
    finally:
        loop.set_exception_handler(None)
        await redis.aclose()


async def test_a_batch_reads_the_replies_redis_py_would(redis_url):
    """A Batch takes each reply from the parser (messenger's stores, reads, enqueues): the replies are
    a plain pipeline's, each through its response callback (EXPIRE's bool, XRANGE's entries, a missing
    key's None, HGETALL's dict), an error reply in its command's place, and replies too long for one
    socket read (a 3 MB value, 2,000 entries) read whole after those before them."""
    redis = connect(redis_url)
    try:
        await redis.set("big", b"x" * 3_000_000)
        await redis.hset("h", "f", "v")
        for i in range(2000):
            await redis.xadd("s", {"m": str(i)})
        commands = [
            ("XADD", "s2", "*", "m", "é"), ("EXPIRE", "s2", 60), ("EXPIRE", "missing", 60), ("GET", "missing"),
            ("GET", "big"), ("XRANGE", "s", "-", "+"), ("GETEX", "h", "EX", 60), ("HGETALL", "h"),
            ("HGETALL", "missing"), ("EXISTS", "big", "h"), ("SET", "k", "v"), ("XRANGE", "missing", "-", "+"),
        ]  # fmt: skip
        plain = redis.pipeline(transaction=False)
        for args in commands:
            plain.execute_command(*args)
        expected = await plain.execute(raise_on_error=False)
        got = await Batch(redis).run_each(*commands)
        assert [repr(r) if isinstance(r, Exception) else r for r in got][1:] == [
            repr(r) if isinstance(r, Exception) else r for r in expected
        ][1:]
        assert isinstance(got[0], bytes) and isinstance(got[6], Exception) and "WRONGTYPE" in str(got[6])
        assert got[1] is True and got[2] is False and len(got[4]) == 3_000_000 and len(got[5]) == 2000
    finally:
        await redis.aclose()


def test_a_batch_pipeline_is_packed_in_the_bytes_redis_py_packs(redis_url):
    """One hiredis buffer for the Batch's pipeline: the bytes of redis-py's pack_commands, for str,
    bytes, int, float and non-ASCII arguments, and a command name with a space (split by redis-py)."""
    wire = connect(redis_url).connection_pool.make_connection()
    commands = [("XADD", "s", "MAXLEN", "~", 10000, "*", "m", "é" * 7000), ("SET", b"k", 1.5), ("GET", "k")]
    assert connection._packed(wire, commands) == [b"".join(wire.pack_commands(commands))]
    spaced = [("CONFIG GET", "maxmemory"), ("GET", "k")]
    assert b"".join(connection._packed(wire, spaced)) == b"".join(wire.pack_commands(spaced))


async def test_a_batch_whose_connection_drops_mid_reply_is_sent_again(redis_url, monkeypatch):
    """A connection that closes while a Batch reads its replies (the second one not whole yet) is
    closed, and the pipeline goes again once connected anew, as with redis-py's own read."""
    redis = connect(redis_url)
    cls = redis.connection_pool.connection_class
    read, cut = cls.read_response, []

    async def cut_once(self, *args, **kwargs):
        if not cut:  # the first read of a reply not in the parser yet: the socket closes under it
            cut.append(self)
            self._writer.transport.abort()
        return await read(self, *args, **kwargs)

    try:
        await redis.set("big", b"y" * 3_000_000)
        await redis.set("small", b"s")
        monkeypatch.setattr(cls, "read_response", cut_once)
        assert await Batch(redis).run_each(("GET", "small"), ("GET", "big")) == [b"s", b"y" * 3_000_000]
        assert cut  # (the retry connected it again)
    finally:
        await redis.aclose()


async def test_a_claim_never_rides_out_an_outage_and_the_process_notes_redis_away(tmp_path, monkeypatch):
    """A worker's claims (CLAIM) fail at once while Redis is away, where a service connection would
    retry for seconds and land as Redis comes back: before live holders renewed the leases that
    lapsed meanwhile (tests/faults/test_redis_outage.py ran jobs twice on a loaded box). The process
    notes Redis away (failed_within) so the worker waits; one dropped connection is not an outage."""
    monkeypatch.setattr(connection, "_failed_at", [-math.inf])
    server = RedisServer(tmp_path / "redis", persistent=False)
    server.tmp.mkdir()
    server.start()
    claims = connect(server.url, CLAIM)
    try:
        await claims.ping()
        server.client().client_kill_filter(_type="normal", skipme=True)  # a dropped connection
        assert await claims.ping() is True
        assert not connection.failed_within(60), "one dropped connection is not Redis away"
        server.stop()
        started = time.monotonic()
        with pytest.raises((RedisConnectionError, OSError)):
            await claims.ping()
        assert time.monotonic() - started < 1, "a claim is not retried across an outage"
        assert connection.failed_within(60)
    finally:
        await claims.aclose()
        server.stop()
