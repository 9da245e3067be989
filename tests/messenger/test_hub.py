"""The event hub waits out a busy messenger's slow subscription confirmations, never a stuck one."""

from __future__ import annotations

import asyncio

import pytest

from messenger import hub as hub_module
from messenger.hub import EventHub


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
