"""Everything a messenger process holds while it runs: Redis, the event hub, the job client,
and in embedded mode the in-process worker. Shared by the MCP server and the CLI."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from arq.connections import ArqRedis

from messenger.hub import EventHub
from messenger.jobs import JobClient
from messenger.metrics import MessengerMetrics
from messenger.queue import JobQueue
from shared import prices
from shared.connection import check_access, connect
from shared.heap import settle_heap
from shared.settings import Settings
from shared.tool_client import RemoteTool


@dataclass
class Runtime:
    settings: Settings
    redis: ArqRedis
    hub: EventHub
    jobs: JobClient
    queue: JobQueue
    metrics: MessengerMetrics = field(default_factory=MessengerMetrics)
    exposed: dict[str, list[RemoteTool] | str] = field(default_factory=dict)  # server -> tools, or why not


@contextlib.asynccontextmanager
async def open_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    prices.configure(settings.model_prices)
    await check_access(settings.redis_url)  # one line, not a hub retrying a certificate for ever
    redis = connect(settings.redis_url)
    hub = EventHub(redis)
    metrics = MessengerMetrics()
    queue = JobQueue(redis, settings)
    await hub.start()
    settle_heap()
    try:
        async with contextlib.AsyncExitStack() as stack:
            if settings.embedded:
                from worker import embedded_worker

                await stack.enter_async_context(embedded_worker(settings, metrics.registry))
            yield Runtime(
                settings=settings,
                redis=redis,
                hub=hub,
                jobs=JobClient(redis, hub, settings, queue),
                queue=queue,
                metrics=metrics,
                exposed=await _exposed(settings),
            )
    finally:
        await hub.close()
        await redis.aclose()


async def _exposed(settings: Settings) -> dict[str, list[RemoteTool] | str]:
    """MCP_EXPOSE_SERVERS' tools; without any, no MCP client is loaded (`messenger ask` in embedded
    mode starts a runtime and needs none)."""
    if not settings.exposed_servers:
        return {}
    from messenger.aggregate import list_exposed

    return await list_exposed(settings)
