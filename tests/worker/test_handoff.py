"""A job enqueued while a worker is idle is handed to it, leased, with what it needs to start
(shared/handoff.py): no claim round trip. Every way a hand-off can go wrong leaves the job to the
queue and its lease, so it still runs, once (at least once, as before): the worker died before or
after the hand-off, it was full, the job was cancelled before it started. Real Redis, real workers."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import threading
import time

from runtimes import runtime_for

from shared import keys
from shared.handoff import HANDOFF_MAX_BYTES, offer
from shared.models import ChatRequest
from worker.claim import claim_jobs

REQUEST = ChatRequest(message="ping")
SLOW = "200"  # ms between mock tokens: a job that holds its slot for a second or two


def wait_until(condition, what: str, seconds: float = 20) -> None:
    """Poll Redis (sync) until `condition()`; the state waited for lives in Redis, not here."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)


def offers(client) -> dict[str, int]:
    """worker id -> slots it offers in mcpq:workers:idle."""
    return {
        json.loads(member)["worker"]: int(score)
        for member, score in client.zrange(keys.IDLE_WORKERS, 0, -1, withscores=True)
    }


def the_worker_id(client) -> str:
    (worker_id,) = [json.loads(client.get(k))["worker_id"] for k in client.scan_iter("mcpq:worker:*")]
    return worker_id


class Monitor:
    """Every command Redis runs while the block runs (MONITOR, in a thread)."""

    def __init__(self, client):
        self.client, self.lines = client, []

    def __enter__(self):
        self._monitor = self.client.monitor().__enter__()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self):
        try:
            for command in self._monitor.listen():
                self.lines.append(command["command"])
        except Exception:  # the connection closed: done
            pass

    def __exit__(self, *exc):
        self.client.ping()  # one last line so the reader sees everything before it
        time.sleep(0.2)
        self._monitor.connection.disconnect()
        self._thread.join(5)


async def test_a_job_enqueued_while_a_worker_is_idle_starts_from_the_hand_off_without_a_claim(
    redis_url, workers, redis_server, clean_env
):
    workers.start(redis_url, WORKER_CONCURRENCY="3")
    client = redis_server.client()
    worker_id = the_worker_id(client)
    wait_until(lambda: offers(client).get(worker_id) == 3, "the idle worker offers its 3 slots")
    claim_sha = hashlib.sha1(claim_jobs.lua.encode()).hexdigest()  # type: ignore[attr-defined]
    listener = client.pubsub()
    listener.subscribe(keys.handoff(worker_id))  # to read what the worker is handed
    async with runtime_for(redis_url) as runtime:
        with Monitor(client) as monitor:
            job_id = await runtime.queue.submit(REQUEST, caller="alice")
            result = await runtime.jobs.wait(job_id, timeout=10)
    assert result.status == "completed" and result.attempt == 1, result
    handed = [m for m in iter(lambda: listener.get_message(timeout=0.1), None) if m["type"] == "message"]
    listener.close()
    assert len(handed) == 1, "the enqueue handed the job to the idle worker"
    assert [c for c in monitor.lines if c.startswith(f"PUBLISH {keys.handoff(worker_id)} ") and job_id in c]
    message = json.loads(handed[0]["data"])
    assert (message["id"], message["try"], message["owner"], message["aborted"]) == (
        job_id,
        1,
        "alice",
        False,
    )
    assert json.loads(message["job"])["a"][0]["message"] == "ping"
    claims = [c for c in monitor.lines if c.startswith(f"EVALSHA {claim_sha}") and job_id in c]
    assert claims == [], "no claim script ran for the handed job"
    assert not [c for c in monitor.lines if c == f"PUBLISH {keys.WAKEUP_CHANNEL} {job_id}"], (
        "no wake-up either"
    )
    wait_until(lambda: offers(client).get(worker_id) == 3, "its slot is offered again once the job ended")


async def test_a_worker_killed_with_offered_slots_strands_no_job(redis_url, workers, redis_server, clean_env):
    client = redis_server.client()
    (doomed,) = workers.start(redis_url, WORKER_CONCURRENCY="5")
    doomed_id = the_worker_id(client)
    workers.start(redis_url, WORKER_CONCURRENCY="1")
    survivor_id = next(w for w in offers_when(client, 2) if w != doomed_id)
    doomed.kill()
    doomed.wait(10)
    wait_until(
        lambda: not client.pubsub_numsub(keys.handoff(doomed_id))[0][1], "Redis saw the connection close"
    )
    assert offers(client)[doomed_id] == 5, "the dead worker's offer is still there (it could not withdraw it)"
    async with runtime_for(redis_url) as runtime, asyncio.timeout(30):
        job_id = await runtime.queue.submit(REQUEST, caller="alice")
        result = await runtime.jobs.wait(job_id, timeout=10)
    assert result.status == "completed" and result.attempt == 1, result
    assert result.worker_id == survivor_id, "the live worker ran it at once"
    assert doomed_id not in offers(client), "the enqueue dropped the dead worker's offer"


def offers_when(client, count: int) -> dict[str, int]:
    wait_until(lambda: len(offers(client)) == count, f"{count} workers offer slots")
    return offers(client)


async def test_a_job_handed_to_a_worker_that_dies_before_starting_it_runs_elsewhere_once_its_lease_lapses(
    redis_url, workers, redis_server, clean_env
):
    """The hand-off went out and its worker never started the job (killed in between): the lease it
    was given lapses, and a live worker's poll runs the job again."""
    client = redis_server.client()
    workers.start(redis_url, WORKER_CONCURRENCY="1")
    offers_when(client, 1)
    ghost = client.pubsub()
    ghost.subscribe(keys.handoff("ghost"))  # alive as far as Redis can tell, but it never starts anything
    client.zadd(keys.IDLE_WORKERS, {offer("ghost", 1000): 50})
    async with runtime_for(redis_url) as runtime, asyncio.timeout(30):
        job_id = await runtime.queue.submit(REQUEST, caller="alice")
        assert client.exists(keys.in_progress(job_id)), "handed to the ghost: leased"
        result = await runtime.jobs.wait(job_id, timeout=15)
    handed = [m for m in iter(lambda: ghost.get_message(timeout=0.1), None) if m["type"] == "message"]
    ghost.close()
    assert [json.loads(m["data"])["id"] for m in handed] == [job_id]
    assert result.status == "completed", result
    assert result.attempt == 2, "the ghost's hand-off counted as a start, as a claim would"
    assert offers(client)["ghost"] == 49


async def test_a_job_cancelled_after_its_hand_off_and_before_its_start_never_runs(
    redis_url, workers, redis_server, clean_env
):
    client = redis_server.client()
    workers.start(redis_url, WORKER_CONCURRENCY="1")
    offers_when(client, 1)
    ghost = client.pubsub()
    ghost.subscribe(keys.handoff("ghost"))
    client.zadd(keys.IDLE_WORKERS, {offer("ghost", 1000): 50})
    async with runtime_for(redis_url) as runtime, asyncio.timeout(30):
        job_id = await runtime.queue.submit(REQUEST, caller="alice")
        result = await runtime.jobs.cancel(job_id)
        if result.status not in ("cancelled", "failed"):
            result = await runtime.jobs.wait(job_id, timeout=15)
    ghost.close()
    assert result.status == "cancelled", result
    assert f"{job_id}:chat aborted before start" in workers.logs(), "the live worker never ran it"


async def test_a_full_worker_is_not_handed_jobs_they_queue_and_run_after(
    redis_url, workers, redis_server, clean_env
):
    client = redis_server.client()
    workers.start(redis_url, WORKER_CONCURRENCY="1", MOCK_TOKEN_DELAY_MS=SLOW)
    offers_when(client, 1)
    async with runtime_for(redis_url) as runtime, asyncio.timeout(60):
        first = await runtime.queue.submit(REQUEST, caller="alice")
        assert offers(client) == {}, "its only slot was taken: it offers none"
        second = await runtime.queue.submit(REQUEST, caller="bob")
        assert not client.exists(keys.in_progress(second)), (
            "nobody was idle: it waits in the queue, not leased"
        )
        results = [await runtime.jobs.wait(j, timeout=30) for j in (first, second)]
    assert [(r.status, r.attempt) for r in results] == [("completed", 1), ("completed", 1)]


async def test_a_job_handed_to_a_worker_with_no_free_slot_goes_back_and_runs_once(
    redis_url, workers, redis_server, clean_env
):
    """A worker is handed more than it can run (an offer left over from before Redis lost track): it
    gives the job back (lease and start count undone) instead of running it over its
    WORKER_CONCURRENCY, and the job runs when a slot frees."""
    client = redis_server.client()
    workers.start(redis_url, WORKER_CONCURRENCY="1", MOCK_TOKEN_DELAY_MS=SLOW)
    worker_id = next(iter(offers_when(client, 1)))
    async with runtime_for(redis_url) as runtime, asyncio.timeout(60):
        first = await runtime.queue.submit(REQUEST, caller="alice")
        client.zadd(keys.IDLE_WORKERS, {offer(worker_id, 10_000): 1})  # a slot it does not have
        second = await runtime.queue.submit(REQUEST, caller="bob")
        wait_until(lambda: not client.exists(keys.in_progress(second)), "the full worker gave the job back")
        assert client.get(keys.retry(second)) is None, "its start was not counted"
        results = [await runtime.jobs.wait(j, timeout=30) for j in (first, second)]
    assert [(r.status, r.attempt) for r in results] == [("completed", 1), ("completed", 1)]
    logs = workers.logs()
    assert "Traceback" not in logs


async def test_a_hand_off_message_that_is_not_one_is_ignored_and_the_worker_serves_on(
    redis_url, workers, redis_server, clean_env
):
    client = redis_server.client()
    workers.start(redis_url, WORKER_CONCURRENCY="2")
    worker_id = next(iter(offers_when(client, 1)))
    for junk in (b"\xff\x00", b"[]", b'{"id": 5}', b'{"id":"x","score":"1","job":"","try":0,"note":"",'
                 b'"aborted":false,"owner":""}'):  # fmt: skip
        client.publish(keys.handoff(worker_id), junk)
    async with runtime_for(redis_url) as runtime, asyncio.timeout(30):
        job_id = await runtime.queue.submit(REQUEST, caller="alice")
        result = await runtime.jobs.wait(job_id, timeout=10)
    assert result.status == "completed" and result.attempt == 1, result
    logs = workers.logs()
    assert logs.count("ignoring a hand-off message") == 4
    assert "Traceback" not in logs


async def test_a_worker_whose_offer_redis_lost_takes_jobs_again(redis_url, workers, redis_server, clean_env):
    """Its offer deleted (a FLUSHALL, a hand-edit): the worker, which counted those slots as offered,
    finds them missing at its polls and starts afresh instead of idling for good."""
    client = redis_server.client()
    workers.start(redis_url, WORKER_CONCURRENCY="3")
    offers_when(client, 1)
    client.delete(keys.IDLE_WORKERS)
    async with runtime_for(redis_url) as runtime, asyncio.timeout(30):
        job_id = await runtime.queue.submit(REQUEST, caller="alice")
        assert not client.exists(keys.in_progress(job_id)), "no offer left: it waits in the queue"
        result = await runtime.jobs.wait(job_id, timeout=15)
    assert result.status == "completed" and result.attempt == 1, result
    wait_until(lambda: len(offers(client)) == 1, "the worker offers its slots again")


async def test_an_offer_with_a_lease_redis_cannot_set_is_dropped_and_the_enqueue_goes_on(
    redis_url, workers, redis_server, clean_env
):
    """An offer written by hand for a live worker, its lease a fraction or beyond PSETEX's range: the
    enqueue drops it (as any junk offer) instead of failing half-way with the job already queued."""
    workers.start(redis_url, WORKER_CONCURRENCY="2")
    client = redis_server.client()
    worker_id = the_worker_id(client)
    wait_until(lambda: offers(client).get(worker_id) == 2, "the idle worker offers its slots")
    for lease in (1.5, 1e30):
        client.zadd(keys.IDLE_WORKERS, {json.dumps({"worker": worker_id, "lease_ms": lease}): 100})
        async with runtime_for(redis_url) as runtime:
            job_id = await runtime.queue.submit(REQUEST, caller="alice")
            result = await runtime.jobs.wait(job_id, timeout=10)
        assert result.status == "completed" and result.attempt == 1, result


async def test_junk_in_the_offers_does_not_make_a_freed_slot_skip_a_due_job(redis_url):
    """A freed slot trusts the offers (someone offers: nothing waits) only for ones of a slot or more:
    a member offering none (written by hand), which the enqueue never takes nor drops, must not leave
    every due job to the polls (and to be overtaken by the next enqueue's hand-off) for good."""
    from shared.connection import connect

    redis = connect(redis_url)
    try:
        for junk, slots in (("junk", 0), (offer("ghost", 1000), 0), (offer("ghost", 1000), -3)):
            await redis.flushall()
            await redis.zadd(keys.QUEUE, {"job-1": 1000})
            await redis.set(keys.JOB_PREFIX + "job-1", b"x")
            await redis.zadd(keys.IDLE_WORKERS, {junk: slots})
            claimed = await claim_jobs(
                redis, queue=keys.QUEUE, abort_set=keys.ABORT_SET, idle=keys.IDLE_WORKERS, mine=keys.claim(junk),
                mine_ttl=60, now_ms=int(time.time() * 1000), lease_ms=1000, unreported=1, scan=10, offering=True,
                trust_offers=True, reset=False, me=offer("me", 1000), retry_ttl=60,
                lease_prefix=keys.IN_PROGRESS_PREFIX, job_prefix=keys.JOB_PREFIX, retry_prefix=keys.RETRY_PREFIX,
                owner_prefix=keys.OWNER_PREFIX, running_ids="", candidates=[],
            )  # fmt: skip
            assert claimed[2:3] == [b"job-1"], (junk, slots, claimed)
    finally:
        await redis.aclose()


async def test_a_worker_stopped_after_its_hand_off_does_not_run_the_job_again_once_it_ran_elsewhere(
    redis_url, workers, redis_server, clean_env
):
    """SIGSTOP: subscribed, so handed jobs, but not reading. Its lease lapses and another worker runs
    the job; once the stopped worker goes on, the old hand-off must not start the ended job again."""
    client = redis_server.client()
    (stopped,) = workers.start(redis_url, WORKER_CONCURRENCY="5", WORKER_LEASE_SECONDS="1")
    stopped_id = the_worker_id(client)
    workers.start(redis_url, WORKER_CONCURRENCY="1", WORKER_LEASE_SECONDS="1")
    offers_when(client, 2)
    os.kill(stopped.pid, signal.SIGSTOP)
    try:
        async with runtime_for(redis_url) as runtime, asyncio.timeout(30):
            job_id = await runtime.queue.submit(REQUEST, caller="alice")
            result = await runtime.jobs.wait(job_id, timeout=20)
    finally:
        os.kill(stopped.pid, signal.SIGCONT)
    assert result.status == "completed", result
    wait_until(
        lambda: offers(client).get(stopped_id) == 5, "the stopped worker read its hand-off and offers again"
    )
    runs = workers.logs().count(f"→ {job_id}:chat")
    assert runs == 1, f"the job ran {runs} times"


async def test_a_job_too_large_to_hand_off_is_woken_and_claimed_and_runs(
    redis_url, workers, redis_server, clean_env
):
    """A job over HANDOFF_MAX_BYTES goes the wake-up way (a hand-off carries the whole value on
    pub/sub, where Redis drops a subscriber that falls a buffer's worth behind): it still runs once."""
    workers.start(redis_url, WORKER_CONCURRENCY="3")
    client = redis_server.client()
    worker_id = the_worker_id(client)
    wait_until(lambda: offers(client).get(worker_id) == 3, "the idle worker offers its 3 slots")
    big = ChatRequest(message="x" * (HANDOFF_MAX_BYTES + 1))
    async with runtime_for(redis_url) as runtime:
        with Monitor(client) as monitor:
            job_id = await runtime.queue.submit(big, caller="alice")
            result = await runtime.jobs.wait(job_id, timeout=10)
    assert result.status == "completed" and result.attempt == 1, result
    assert not [c for c in monitor.lines if c.startswith(f"PUBLISH {keys.handoff(worker_id)} ")], (
        "not handed off"
    )
    assert [c for c in monitor.lines if c == f"PUBLISH {keys.WAKEUP_CHANNEL} {job_id}"], "woken instead"
