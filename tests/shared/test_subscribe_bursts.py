"""subscribe_forever hands on a burst of messages from what one read brought in: one read_response
(its timer, health check and retry layers) a burst, not one a message; every message still reaches
its handler once, in the order it was published. Every worker reads every wake-up, so a backlog's
enqueues cost each worker a read per message before (a timer each: 2 % of a worker's samples)."""

from __future__ import annotations

import asyncio

import redis
from redis.asyncio.connection import AbstractConnection

from shared.connection import connect, subscribe_forever

BURST = 200


async def test_a_burst_of_messages_is_handed_on_in_order_from_a_few_reads(redis_url, monkeypatch):
    reads = [0]
    read_response = AbstractConnection.read_response

    async def counted(self, *args, **kwargs):
        reads[0] += 1
        return await read_response(self, *args, **kwargs)

    monkeypatch.setattr(AbstractConnection, "read_response", counted)
    client, publisher = connect(redis_url), redis.Redis.from_url(redis_url)  # (a sync one: not counted)
    got: list[bytes] = []
    other: list[bytes] = []
    subscribed, done = asyncio.Event(), asyncio.Event()

    def handler(into: list[bytes]):
        def handle(data: bytes) -> None:
            into.append(data)
            if len(got) + len(other) == BURST:
                done.set()

        return handle

    task = asyncio.create_task(
        subscribe_forever(
            client,
            {"burst": handler(got), "other": handler(other)},
            on_subscribed=subscribed.set,
            what="a burst",
        )
    )
    try:
        async with asyncio.timeout(10):
            await subscribed.wait()
            reads[0] = 0
            with publisher.pipeline(transaction=False) as pipe:  # one write: one burst
                for i in range(BURST):
                    pipe.publish("burst" if i % 10 else "other", str(i))
                pipe.execute()
            await done.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()
        publisher.close()
    assert got == [str(i).encode() for i in range(BURST) if i % 10]
    assert other == [str(i).encode() for i in range(0, BURST, 10)]
    assert reads[0] <= BURST // 10, f"{reads[0]} reads for a burst of {BURST}"


async def test_a_task_a_handler_starts_steps_before_the_next_read_is_armed(redis_url, monkeypatch):
    """A job handed to a worker starts (its task's first step) before the subscription's next read
    is set up: that read's timer and parser call are not on the way to the job's start."""
    order: list[str] = []
    read_response = AbstractConnection.read_response

    async def noted(self, *args, **kwargs):
        order.append("read")
        return await read_response(self, *args, **kwargs)

    monkeypatch.setattr(AbstractConnection, "read_response", noted)
    client, publisher = connect(redis_url), redis.Redis.from_url(redis_url)
    subscribed, started = asyncio.Event(), asyncio.Event()

    async def job() -> None:
        order.append("job")
        started.set()

    task = asyncio.create_task(
        subscribe_forever(
            client,
            {"handoff": lambda _: order.append("handed") or asyncio.ensure_future(job())},
            on_subscribed=subscribed.set,
            what="a hand-off",
        )
    )
    try:
        async with asyncio.timeout(10):
            await subscribed.wait()
            await asyncio.sleep(0.05)  # (the first read is waiting)
            order.clear()
            publisher.publish("handoff", "job-1")
            await started.wait()
            await asyncio.sleep(0.05)
        assert order[:3] == ["handed", "job", "read"], order
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()
