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

import pytest
from openai_server import eventually
from readers import stream_events
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


@pytest.mark.parametrize("heard", ["before the retake", "after the retake"])
async def test_a_job_handed_over_and_retaken_after_a_resubscribe_runs_once_even_when_quick(
    redis_url, clean_env, redis_server, monkeypatch, heard
):
    """After a (re)subscribe the claim retakes the jobs leased to this worker that it does not run. A
    hand-off published just before that claim's script (on the new connection) is both heard and
    retaken: the start that comes second must not run the job again, even once the first run has
    ended (a quick job ends within the claim's round trip, or before its hand-off is read). Before,
    `_start` only skipped a job whose first run was still going: the job ran twice (two `start`
    events, the model called again)."""
    from shared.settings import load_settings
    from worker import wakeups
    from worker.claim import Claimed
    from worker.embedded import stop
    from worker.runner import build_worker

    client = redis_server.client()
    claim_jobs, handed, answered = wakeups.claim_jobs, [], asyncio.Event()

    def done() -> bool:
        return bool(client.exists(keys.result(handed[0].raw_id.decode())))

    async def retake_after_a_hand_off(redis, **kwargs):
        if kwargs["running_ids"] == "":  # (the usual claims)
            return await claim_jobs(redis, **kwargs)
        # a hand-off just before the retake's script: its lease (a claim of that one job for us, as the
        # enqueue's hand-off leases it), and its start as `handed` makes it, now or once the job ended
        job_id = await runtime.queue.submit(ChatRequest(message="quick"), caller="operator")
        lease = {**kwargs, "mine": keys.claim("hand-off"), "scan": 0, "reset": False, "offering": False}
        handed.extend(Claimed.batch((await claim_jobs(redis, **{**lease, "candidates": [job_id]}))[2:]))
        if heard == "before the retake":
            worker._start(handed[0], worker._problem(handed[0])[2])  # (as `handed` does)
        reply = await claim_jobs(redis, **kwargs)  # (its running_ids were read before the hand-off)
        if heard == "before the retake":
            await eventually(done, timeout=20)  # the run ended
        answered.set()  # (the claim starts what it leased in this step)
        return reply

    monkeypatch.setattr(wakeups, "claim_jobs", retake_after_a_hand_off)
    async with runtime_for(redis_url) as runtime, asyncio.timeout(40):
        worker = build_worker(load_settings(redis_url=redis_url), handle_signals=False)
        running = asyncio.create_task(worker.async_run())
        try:
            await eventually(lambda: client.zcard(keys.IDLE_WORKERS) > 0, timeout=20)  # idle, offering
            worker._reset = worker._retake = worker._full_poll_due = True  # as a resubscribe does
            worker._wake.set()
            await answered.wait()
            if heard == "after the retake":  # its message read once the retake's run ended
                await eventually(done, timeout=20)
                job, count = handed[0], worker._handed
                client.publish(keys.handoff(worker._worker_id()), json.dumps({
                    "id": job.raw_id.decode(), "score": job.score.decode(), "job": job.raw_job.decode(),
                    "try": job.job_try, "note": "", "aborted": False, "owner": job.owner.decode(),
                }))  # fmt: skip
                await eventually(lambda: worker._handed > count, timeout=20)
            await eventually(lambda: worker.job_counter == 0, timeout=20)  # a second run, if any, ended
        finally:
            await stop(worker, 5, running)
    kinds = [e["type"] for e in stream_events(client, handed[0].raw_id.decode())]
    assert kinds.count("start") == 1, f"the job ran twice: {kinds}"
