"""A worker whose wake-up subscription went half-open while it was idle (a NAT or a frozen proxy
between it and Redis forgets the idle connection: no answer, no RST). Redis still counts the
subscriber, so the enqueue goes on handing jobs into it. The worker finds out by a PING
(shared/connection.py subscribe_forever), takes its offer back, subscribes again and starts the jobs
handed to it meanwhile at once, not once their leases lapse; the jobs after are handed to it and
heard. Real Redis, a worker process whose connections go through tests/relays.py's FreezingProxy."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

from openai_server import eventually
from relays import FreezingProxy
from runtimes import runtime_for

from shared import keys
from shared.models import ChatRequest

LEASE_SECONDS = "3600"  # a hand-off lost to the frozen connection waits an hour unless the worker finds out


def offered(client, worker_id: str) -> int:
    """The slots `worker_id` offers in mcpq:workers:idle."""
    return sum(
        int(score)
        for member, score in client.zrange(keys.IDLE_WORKERS, 0, -1, withscores=True)
        if json.loads(member)["worker"] == worker_id
    )


async def test_a_worker_whose_subscription_froze_while_idle_starts_the_jobs_handed_into_it(
    redis_url, workers, redis_server, clean_env
):
    url = urlsplit(redis_url)
    proxy = FreezingProxy(url.hostname or "127.0.0.1", url.port or 6379)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    proxied = f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}{url.path}"
    client = redis_server.client()
    request = ChatRequest(message="ping")
    try:
        env = {"WORKER_CONCURRENCY": "2", "WORKER_LEASE_SECONDS": LEASE_SECONDS}
        await asyncio.to_thread(workers.start, proxied, **env)  # (the proxy serves on this loop meanwhile)
        (worker_id,) = [json.loads(client.get(k))["worker_id"] for k in client.scan_iter("mcpq:worker:*")]
        await eventually(lambda: offered(client, worker_id) == 2)
        proxy.freeze(subscriptions_only=True)
        async with runtime_for(redis_url) as runtime, asyncio.timeout(60):
            lost = [await runtime.queue.submit(request, caller="alice") for _ in range(2)]
            assert all(client.exists(keys.in_progress(j)) for j in lost), "handed to the frozen worker"
            results = [await runtime.jobs.wait(j, timeout=25) for j in lost]
            await eventually(lambda: offered(client, worker_id) == 2)  # its slots free, offered again
            after = await runtime.queue.submit(request, caller="alice")
            results.append(await runtime.jobs.wait(after, timeout=10))
    finally:
        workers.stop_all()  # (before the proxy's connections go)
        server.close()
    # the hand-offs counted a start that never ran, as a worker that died before starting them would
    assert [(r.status, r.attempt) for r in results] == [("completed", 2)] * 2 + [("completed", 1)], results
    assert "wake-up subscription stuck" in workers.logs()
