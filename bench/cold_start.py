"""A messenger that has just started gets many requests at once: every one must be subscribed.

Many `EventHub.follow()` calls on a fresh hub, all at once; each must be confirmed by Redis
within a few seconds (a follow that is not confirmed makes its caller's request fail).
"""

from __future__ import annotations

import asyncio

from bench.lab import Site
from messenger.hub import EventHub
from messenger.queue import new_job_id
from shared.connection import connect


class NotSubscribed(Exception):
    """A follow was never confirmed: its caller's request would fail."""


async def measure(site: Site, follows: int, within: float = 3.0) -> dict[str, float]:
    redis = connect(site.url)  # a pool of its own: a failing hub strands connections in it
    hub = EventHub(redis)
    await hub.start()
    confirmed = 0
    all_confirmed, release = asyncio.Event(), asyncio.Event()

    async def follow() -> None:
        nonlocal confirmed
        async with hub.follow(new_job_id()):
            confirmed += 1
            if confirmed == follows:
                all_confirmed.set()
            await release.wait()

    tasks = [asyncio.create_task(follow()) for _ in range(follows)]
    try:
        async with asyncio.timeout(within):
            await all_confirmed.wait()
    except TimeoutError:
        pass
    finally:
        release.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await hub.close()
        await redis.aclose()
    if confirmed < follows:
        raise NotSubscribed(
            f"{confirmed} of {follows} concurrent first follows on a fresh EventHub confirmed within {within:g} s"
        )
    return {"confirmed": confirmed}
