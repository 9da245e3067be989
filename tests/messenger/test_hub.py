"""The event hub waits out a busy messenger's slow subscription confirmations, never a stuck one, and
a job is enqueued while its follower's subscription is being confirmed, missing none of its events."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

import pytest
from openai_server import eventually
from relays import FreezingProxy
from runtimes import embedded

from messenger import hub as hub_module
from messenger.hub import EventHub
from shared import keys
from shared.connection import connect
from shared.models import ChatRequest


async def test_a_confirmation_behind_a_reader_that_keeps_reading_is_waited_for(redis, monkeypatch):
    monkeypatch.setattr(hub_module, "SUBSCRIBE_TIMEOUT", 0.05)
    hub = EventHub(redis)
    loop = asyncio.get_running_loop()
    pending: asyncio.Future[None] = loop.create_future()
    due = loop.time() + 0.25  # five timeouts later

    async def busy_reader() -> None:  # reads other messages all along, the confirmation last
        while loop.time() < due:
            hub._reads += 1
            await asyncio.sleep(0)
        pending.set_result(None)

    reading = asyncio.create_task(busy_reader())
    await hub._confirmed(pending)
    await reading
    assert pending.done()


async def test_a_reader_that_reads_nothing_fails_the_subscription(redis, monkeypatch):
    monkeypatch.setattr(hub_module, "SUBSCRIBE_TIMEOUT", 0.05)
    hub = EventHub(redis)
    with pytest.raises(TimeoutError):
        await hub._confirmed(asyncio.get_running_loop().create_future())


async def test_a_job_is_enqueued_before_its_subscription_is_confirmed_and_no_event_is_missed(monkeypatch):
    """The enqueue does not wait for Redis to confirm the follower's subscription (a round trip before
    the caller's first token): here the confirmation comes only after the job has ended, so every
    event was published before the subscription was live, and the caller still gets them all."""
    async with embedded(monkeypatch) as runtime:
        confirmed = runtime.hub._confirmed

        async def after_the_job_ended(pending):
            await eventually(lambda: runtime.redis.keys(keys.result("*")))
            await confirmed(pending)

        monkeypatch.setattr(runtime.hub, "_confirmed", after_the_job_ended)
        told: list[str] = []

        async def on_event(event, _transcript) -> None:
            if event is not None and event.type == "token":
                told.append(event.text)

        result = await runtime.jobs.run(ChatRequest(message="all of it, please"), on_event, timeout=20)
    assert result.status == "completed" and result.ai_response
    assert "".join(told) == result.ai_response


async def test_a_job_is_enqueued_without_waiting_for_its_subscribe_to_be_sent(redis):
    """The enqueue goes out at once, not a loop turn (or a busy messenger's 0.4 ms) after the
    SUBSCRIBE's send: here the SUBSCRIBE is sent only once the job is enqueued, and the follow
    still gets its job's messages."""
    hub = EventHub(redis)
    await hub.start()
    channel, enqueued, order = keys.events("enqueued-first"), asyncio.Event(), []
    _sent_after(hub, "subscribe", channel, enqueued, order)

    async def enqueue() -> None:
        order.append("enqueue")
        enqueued.set()

    try:
        async with asyncio.timeout(10), hub.follow("enqueued-first", meanwhile=enqueue) as queue:
            await redis.publish(channel, b"first")
            assert await queue.get() == b"first"
    finally:
        await hub.close()
    assert order == ["enqueue", "subscribe"]


async def test_a_follow_ends_without_waiting_for_its_unsubscribe_which_still_goes_out(redis):
    """A follower's end (a call's answer) does not wait for its channel's UNSUBSCRIBE to be sent: here
    the UNSUBSCRIBE waits until the follow has ended, and Redis still drops the channel after it; a
    follow of the same job right after is subscribed again, in order."""
    hub = EventHub(redis)
    await hub.start()
    channel, ended, order = keys.events("ends-first"), asyncio.Event(), []
    _sent_after(hub, "unsubscribe", channel, ended, order)
    try:
        async with asyncio.timeout(10):
            async with hub.follow("ends-first"):
                pass
            order.append("ended")
            ended.set()
            await eventually(lambda: order == ["ended", "unsubscribe"])
            await eventually(lambda: _no_subscriber(redis, channel))
            async with hub.follow("ends-first") as queue:  # subscribed anew after the UNSUBSCRIBE
                await redis.publish(channel, b"again")
                assert await queue.get() == b"again"
    finally:
        await hub.close()


def _sent_after(hub: EventHub, command: str, channel: str, event: asyncio.Event, order: list[str]) -> None:
    """The hub's `command` (subscribe, unsubscribe) of `channel` is sent only once `event` is set (or
    2 s later: a caller that waits for it never sets it), noting its name in `order`."""
    send = getattr(hub._pubsub, command)

    async def later(*channels):
        if channel in channels:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), 2)
            order.append(command)
        return await send(*channels)

    setattr(hub._pubsub, command, later)


async def _no_subscriber(redis, channel: str) -> bool:
    return (await redis.pubsub_numsub(channel))[0][1] == 0


async def test_a_burst_of_messages_reaches_every_follower_whole_and_in_order_beside_a_new_subscription(redis):
    """One script publishes 3 × 500 messages at once, so the hub reads them buffered in a few socket
    reads; a follow that starts meanwhile is confirmed, and every follower gets its own, in order."""
    hub = EventHub(redis)
    await hub.start()
    try:
        async with contextlib.AsyncExitStack() as stack:
            jobs = ["burst-a", "burst-b", "burst-c"]
            queues = [await stack.enter_async_context(hub.follow(job)) for job in jobs]
            channels = [keys.events(job) for job in jobs]
            burst = asyncio.create_task(
                redis.eval(
                    "for i = 1, 500 do for _, c in ipairs(KEYS) do redis.call('PUBLISH', c, c .. ':' .. i) end end",
                    len(channels),
                    *channels,
                )
            )
            late = await asyncio.wait_for(stack.enter_async_context(hub.follow("burst-late")), 5)
            await burst
            for channel, queue in zip(channels, queues, strict=True):
                got = [await asyncio.wait_for(queue.get(), 5) for _ in range(500)]
                assert got == [f"{channel}:{i}".encode() for i in range(1, 501)]
                assert queue.empty()
            assert late.empty()
    finally:
        await hub.close()


async def test_a_stuck_subscription_connection_is_replaced_for_the_follows_after_it(redis_url, monkeypatch):
    """The hub's connection went half-open (a partition or failover: no answer, no RST): a follow whose
    SUBSCRIBE is never confirmed with nothing read fails (SUBSCRIBE_TIMEOUT), and the hub drops that
    connection, so the next follow subscribes on a new one and hears its job. Before, the reader
    waited on the dead connection for good and every later call failed the same way, Redis up."""
    monkeypatch.setattr(hub_module, "SUBSCRIBE_TIMEOUT", 0.3)
    url = urlsplit(redis_url)
    proxy = FreezingProxy(url.hostname, url.port)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    redis = connect(f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}{url.path}")
    direct = connect(redis_url)
    hub = EventHub(redis)
    await hub.start()
    try:
        async with asyncio.timeout(10):
            async with hub.follow("before") as queue:
                await direct.publish(keys.events("before"), b"live")
                assert await queue.get() == b"live"
            proxy.freeze()
            with pytest.raises(TimeoutError):
                async with hub.follow("stuck"):
                    pass
            async with hub.follow("after") as queue:
                await direct.publish(keys.events("after"), b"heard")
                item = await queue.get()
                while item is hub_module.RESYNC:  # (the reconnect: its followers re-read their streams)
                    item = await queue.get()
                assert item == b"heard"
    finally:
        await hub.close()
        await redis.aclose()
        await direct.aclose()
        server.close()
