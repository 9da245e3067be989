"""A worker stalled past its lease (SIGSTOP here; a blocked loop or a paused VM alike) loses its running
job to another worker. Once it goes on, it stops its own run of that job and stores nothing: the
other worker's run is the job's, and the caller gets that run's one whole answer."""

import asyncio
import contextlib
import os
import signal
import time

import pytest
from observe import LONG_MESSAGE, expected_text, heartbeat, starts, terminal_events
from readers import stream_events
from runtimes import runtime_for

from messenger.queue import ANONYMOUS
from shared import keys
from shared.handoff import offer
from shared.models import ChatRequest

PACE = dict(WORKER_CONCURRENCY="1", WORKER_LEASE_SECONDS="1", MOCK_TOKEN_DELAY_MS="40")  # ~2.2 s an answer


def wait_for(condition, what: str, seconds: float = 20):
    deadline = time.monotonic() + seconds
    while not (found := condition()):
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)
    return found


@pytest.mark.parametrize("arq_cli", [False, True], ids=["worker", "arq-cli"])
async def test_a_worker_stalled_past_its_lease_stops_its_run_of_the_job_another_worker_took(
    redis_url, workers, redis_server, clean_env, arq_cli
):
    """Run by `worker` or by `arq worker.WorkerSettings` (arq's CLI) alike: the stalled run's ending
    touches nothing of the other run's, its lease least of all (arq's own finish_job deleted it)."""
    client = redis_server.client()
    (stalled,) = workers.start(redis_url, arq_cli=arq_cli, **PACE)
    async with runtime_for(redis_url) as runtime, asyncio.timeout(60):
        job_id = await runtime.queue.submit(ChatRequest(message=LONG_MESSAGE), caller=ANONYMOUS)
        wait_for(
            lambda: [e for e in stream_events(client, job_id) if e["type"] == "token"], "attempt 1 streams"
        )
        first = stream_events(client, job_id)[0]["worker_id"]
        os.kill(stalled.pid, signal.SIGSTOP)
        try:
            workers.start(redis_url, **PACE)
            wait_for(lambda: 2 in starts(stream_events(client, job_id)), "another worker starts attempt 2")
            (second,) = [e["worker_id"] for e in stream_events(client, job_id) if e["type"] == "start"][1:]
            assert client.get(keys.in_progress(job_id)) == offer(second, 1000).encode(), (
                "the lease says whose"
            )
            client.config_set("notify-keyspace-events", "Kg")
            lease_events = client.pubsub()
            lease_events.subscribe(f"__keyspace@0__:{keys.in_progress(job_id)}")
        finally:
            os.kill(stalled.pid, signal.SIGCONT)
        try:
            result = await runtime.jobs.wait(job_id, timeout=30)
            seen = []
            while (message := lease_events.get_message(timeout=0.5)) is not None:  # all, then quiet
                if message["type"] == "message":
                    seen.append(message["data"])
        finally:
            client.config_set("notify-keyspace-events", "")
            lease_events.close()

    assert result.status == "completed", result.error
    assert (result.attempt, result.worker_id) == (2, second), "the answer is the run that took the job"
    assert result.ai_response == expected_text(LONG_MESSAGE)
    assert [e["attempt"] for e in terminal_events(stream_events(client, job_id))] == [2], (
        "the stalled run wrote no ending"
    )
    log = workers.logs()
    assert f"job {job_id}: another worker took it while this one was stalled" in log, log[-3000:]
    assert heartbeat(client, first)["running_jobs"] == {}, "the stalled worker no longer runs it"
    events = stream_events(client, job_id)
    taken_at = next(i for i, e in enumerate(events) if e["attempt"] == 2)
    assert [e["type"] for e in events[taken_at:] if e["attempt"] == 1] == [], (
        "the stalled run published into the stream after the other worker took the job"
    )
    assert seen.count(b"del") == 1, (
        f"the lease of the run that took the job deleted before its ending: {seen}"
    )


async def test_a_lone_worker_stalled_past_its_lease_goes_on_with_its_run_and_does_not_claim_it_again(
    redis_url, workers, redis_server, clean_env
):
    """No other worker took the job while this one was stopped: once it goes on, its heartbeat takes
    the lapsed lease back and the run goes on. Its own claims (a poll after the stall) must not start
    the job a second time beside that run: the model called again, an ERROR (the two runs' shared
    bookkeeping: KeyError), and an attempt 2 `start` left after the job's `done`."""
    client = redis_server.client()
    (stalled,) = workers.start(redis_url, **{**PACE, "WORKER_CONCURRENCY": "4"})  # (a slot free to claim)
    async with runtime_for(redis_url) as runtime, asyncio.timeout(60):
        job_id = await runtime.queue.submit(ChatRequest(message=LONG_MESSAGE), caller=ANONYMOUS)
        wait_for(
            lambda: [e for e in stream_events(client, job_id) if e["type"] == "token"], "attempt 1 streams"
        )
        os.kill(stalled.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: not client.exists(keys.in_progress(job_id)), "the lease lapses")
            await asyncio.sleep(1)  # (a poll is due when it goes on)
        finally:
            os.kill(stalled.pid, signal.SIGCONT)
        result = await runtime.jobs.wait(job_id, timeout=30)

    assert result.status == "completed" and result.attempt == 1, result
    assert result.ai_response == expected_text(LONG_MESSAGE)
    assert starts(stream_events(client, job_id)) == [1], [
        (e["attempt"], e["type"]) for e in stream_events(client, job_id) if e["type"] != "token"
    ]
    assert "ERROR" not in workers.logs(), workers.logs()[-3000:]


async def test_the_heartbeat_renews_only_its_own_leases_and_names_the_jobs_another_run_has(redis_url):
    """The renewal's rules, one job each, on real Redis: ours is renewed; another worker's, a job
    ended elsewhere (its result stored) or parked by another run for its caller's answer, is named
    taken and left alone; a lease that lapsed (Redis away or restarted empty), junk, or an older
    version's "1" is ours again."""
    from shared.connection import connect
    from worker.heartbeat import _renew_leases

    me, other = offer("me", 5000), offer("other", 5000)
    redis = connect(redis_url)
    try:
        await redis.set(keys.in_progress("ours"), me, px=100)
        await redis.set(keys.in_progress("theirs"), other, px=100)
        await redis.set(keys.result("ended"), b"{}")
        await redis.hset(keys.input_request("parked"), mapping={"question": "{}", "parked": "true"})
        await redis.set(keys.in_progress("junk"), b"not a holder")
        await redis.set(keys.in_progress("old"), b"1")
        await redis.hset(keys.in_progress("wrong-type"), "x", "y")
        ids = ["ours", "theirs", "ended", "parked", "lapsed", "junk", "old", "wrong-type"]
        taken = await _renew_leases(
            redis, me=me, lease_ms=5000, lease_prefix=keys.IN_PROGRESS_PREFIX, result_prefix=keys.RESULT_PREFIX,
            input_prefix=keys.INPUT_PREFIX, stream_prefix=keys.STREAM_PREFIX, stream_ttl=60, ids=ids,
        )  # fmt: skip
        assert sorted(taken) == [b"ended", b"parked", b"theirs"]
        assert not await redis.exists(keys.in_progress("parked")), "a parked job is not leased again"
        assert await redis.get(keys.in_progress("theirs")) == other.encode(), "another's lease left alone"
        assert not await redis.exists(keys.in_progress("ended")), "an ended job is not leased again"
        for job_id in ("ours", "lapsed", "junk", "old", "wrong-type"):
            assert await redis.get(keys.in_progress(job_id)) == me.encode(), job_id
            assert await redis.pttl(keys.in_progress(job_id)) > 1000, f"{job_id}: renewed for a lease"
    finally:
        await redis.aclose()


async def test_a_job_handed_off_under_its_workers_offer_written_otherwise_stays_that_workers(redis_url):
    """An idle workers' member is JSON: one that names the worker the same way in another spelling
    (its keys reordered, spaced: junk, or another client's encoder) is still its offer, and the job
    handed off under it is leased with that text. The worker's heartbeat took that lease for another
    worker's, named the job taken and stopped its own run (and its ending stored nothing), so each job
    handed to it ran twice."""
    from shared.connection import connect
    from worker.heartbeat import _renew_leases

    me = offer("me", 5000)
    redis = connect(redis_url)
    listening = redis.pubsub()
    try:
        await listening.subscribe(keys.handoff("me"))  # the worker "me" is listening
        await redis.zadd(keys.IDLE_WORKERS, {'{"lease_ms": 5000, "worker": "me"}': 1})
        async with runtime_for(redis_url) as runtime:
            job_id = await runtime.queue.submit(ChatRequest(message="hi"), caller=ANONYMOUS)
        assert await redis.get(keys.in_progress(job_id)) == b'{"lease_ms": 5000, "worker": "me"}', (
            "handed off"
        )
        taken = await _renew_leases(
            redis, me=me, lease_ms=5000, lease_prefix=keys.IN_PROGRESS_PREFIX, result_prefix=keys.RESULT_PREFIX,
            input_prefix=keys.INPUT_PREFIX, stream_prefix=keys.STREAM_PREFIX, stream_ttl=60, ids=[job_id],
        )  # fmt: skip
        assert taken == [], "the worker's own job named taken"
    finally:
        await redis.delete(keys.IDLE_WORKERS)
        await listening.aclose()
        await redis.aclose()


class RenewalHeld:
    """A worker's heartbeat (its state: `state`, one running job `JOB`) stalled once Redis ran its first
    renewal and before it read the reply; `take()`: the lease lapses meanwhile and another worker's
    start takes the job; `release` set: the stall ends; `beaten`: the beat's next step came after it."""

    JOB = "job-1"

    def __init__(self, redis, state):
        self.redis, self.state = redis, state
        self.renewed, self.release, self.beaten = asyncio.Event(), asyncio.Event(), asyncio.Event()

    def __getattr__(self, name):  # the heartbeat's Redis
        return getattr(self.redis, name)

    async def evalsha(self, *args):
        reply = await self.redis.evalsha(*args)
        if not self.renewed.is_set():
            self.renewed.set()
            await self.release.wait()
        return reply

    async def capacity_renewed(self, _redis) -> None:  # the beat's next step, after it noted the renewal
        if self.release.is_set():
            self.beaten.set()

    async def take(self) -> None:
        lease = keys.in_progress(self.JOB)
        await self.redis.config_set("notify-keyspace-events", "Kx")
        expired = self.redis.pubsub()
        await expired.subscribe(f"__keyspace@0__:{lease}")
        try:
            await self.renewed.wait()
            while (await expired.get_message(ignore_subscribe_messages=True, timeout=None) or {}).get(
                "data"
            ) != b"expired":
                pass  # stalled past the lease: it lapsed
        finally:
            await self.redis.config_set("notify-keyspace-events", "")
            await expired.aclose()
        await self.redis.set(lease, offer("other", 1000))  # another worker's start took the job


@contextlib.asynccontextmanager
async def renewal_held(redis_url: str):
    from shared.connection import connect
    from shared.settings import load_settings
    from worker import heartbeat as beat
    from worker.job import WorkerState
    from worker.providers.mock import MockProvider
    from worker.publisher import EventWriter

    redis = connect(redis_url)
    settings = load_settings(redis_url=redis_url, worker_lease_seconds=1)
    state = WorkerState(settings=settings, provider=MockProvider(), worker_id="me", writer=EventWriter(redis))
    state.running[RenewalHeld.JOB] = 1
    await redis.set(keys.in_progress(RenewalHeld.JOB), offer("me", 1000), px=1000)
    held = RenewalHeld(redis, state)
    state.capacity.renew = held.capacity_renewed  # type: ignore[method-assign]
    await redis.script_load(beat._renew_leases.lua)  # type: ignore[attr-defined]  # (its first call: EVALSHA)
    beating = asyncio.create_task(beat.beat_forever(held, state))
    try:
        async with asyncio.timeout(20):
            yield held
    finally:
        beating.cancel()
        await redis.delete(keys.in_progress(RenewalHeld.JOB), keys.stream(RenewalHeld.JOB))
        await redis.aclose()


async def test_a_renewal_whose_reply_came_after_a_stall_does_not_count_as_fresh(redis_url, clean_env):
    """Stalled after Redis renewed its leases and before it read the reply: the lease lapsed meanwhile
    and another worker took the job. The worker must still count its leases as not renewed for a whole
    lease (what decides whether a hand-off or an ending is checked against the lease first), not as
    renewed the moment the reply was read."""
    from types import SimpleNamespace

    from worker.wakeups import QueueWorker

    async with renewal_held(redis_url) as held:
        await held.take()
        held.release.set()
        await held.beaten.wait()
    worker = SimpleNamespace(ctx={"mcpq": held.state}, in_progress_timeout_s=1)
    assert QueueWorker._stalled(worker), "a renewal made before the stall taken as fresh"  # type: ignore[arg-type]


async def test_an_event_write_waits_for_a_look_at_the_leases_made_after_the_stall(redis_url, clean_env):
    """An event write that finds the leases stale waits for the heartbeat's look; the look then under
    way (its renewal run by Redis before the stall, the job ours then) tells nothing of now: the stalled
    run's token was written after another worker took the job. It waits for the next look, which finds
    the job taken and stops the run."""
    from shared.errors import JobStopped

    async with renewal_held(redis_url) as held:
        held.state.writer.leases = held.state
        await held.take()
        run = held.state.writer.publisher(held.JOB, 1)
        started = asyncio.ensure_future(run.start("me", "mock"))  # stale: waits for a look
        await held.state.look_now.wait()  # (the beat under way is still stalled: nothing clears it)
        held.release.set()
        with pytest.raises(JobStopped):
            await started
        assert await held.redis.xlen(keys.stream(held.JOB)) == 0, (
            "the stalled run wrote into the job's stream"
        )


async def test_a_stopped_run_of_a_taken_job_writes_none_of_its_pending_events(redis_url, clean_env):
    """The heartbeat finds the job taken (WorkerState.lose) and the run's ending forgets it
    (QueueWorker._stopped) before the writer's next write: that write let the run's pending token
    through (its job no longer `taken`) into the stream of the run that took it."""
    from shared.connection import connect
    from shared.errors import JobStopped
    from shared.settings import load_settings
    from worker.job import WorkerState
    from worker.providers.mock import MockProvider
    from worker.publisher import EventWriter
    from worker.wakeups import QueueWorker

    redis = connect(redis_url)
    settings = load_settings(redis_url=redis_url, worker_lease_seconds=1)
    state = WorkerState(settings=settings, provider=MockProvider(), worker_id="me", writer=EventWriter(redis))
    state.writer.leases = state
    state.leases_renewed_at = time.monotonic()  # (not stale: the write goes at the writer's next turn)
    job_id = f"stopped-{time.monotonic_ns()}"
    state.running[job_id] = 1
    run = state.writer.publisher(job_id, 1)
    try:
        run.token("written after the take")
        state.lose(job_id)
        QueueWorker._stopped(state, job_id)
        with pytest.raises(JobStopped):
            await asyncio.wait_for(run.settle(), 5)
        assert await redis.xlen(keys.stream(job_id)) == 0, "the stopped run wrote into the job's stream"
    finally:
        await redis.delete(keys.stream(job_id))
        await redis.aclose()


async def _ending_under(redis_url: str, lease_holder: str, *, finish: bool) -> dict:
    """One job's ending by a worker whose heartbeat renewed its leases just now (so the ending does not
    ask Redis first), with the job's lease set to `lease_holder`'s offer: what Redis holds after it."""
    from shared.models import JobResult
    from shared.settings import load_settings
    from worker import accounting
    from worker.job import WorkerState
    from worker.providers.mock import MockProvider
    from worker.publisher import EventWriter
    from worker.runner import build_worker

    settings = load_settings(redis_url=redis_url, worker_lease_seconds=1)
    worker = build_worker(settings, handle_signals=False)
    redis = worker.pool
    state = WorkerState(settings=settings, provider=MockProvider(), worker_id="me", writer=EventWriter(redis))
    state.leases_renewed_at = time.monotonic()
    worker.ctx["mcpq"], worker._me = state, offer("me", 1000)
    job_id = f"ending-{lease_holder}-{finish}-{time.monotonic_ns()}"
    await redis.set(keys.job(job_id), b"{}")
    await redis.zadd(keys.QUEUE, {job_id: 1})
    await redis.set(keys.in_progress(job_id), offer(lease_holder, 1000))
    result = JobResult(job_id=job_id, status="completed", ai_response="attempt 1", model="mock", attempt=1)
    count = await accounting.prepare(redis, result.model_dump(mode="json", by_alias=True), {"message": "hi"},
                                     history_ttl=60)  # fmt: skip
    state.running[job_id] = 1
    try:
        await worker.finish_job(job_id, finish, b"stored", 60, False, 5000 if not finish else None, None,
                                count=count if finish else None)  # fmt: skip
        return {
            "result": await redis.get(keys.result(job_id)),
            "lease": await redis.get(keys.in_progress(job_id)),
            "job": await redis.get(keys.job(job_id)),
            "queued": await redis.zscore(keys.QUEUE, job_id),
            "counted": await redis.exists(keys.usage_counted(job_id)),
            "requests": await redis.hget(keys.USAGE_TOTAL, "requests"),
        }
    finally:
        await redis.delete(keys.job(job_id), keys.in_progress(job_id), keys.result(job_id))
        await redis.zrem(keys.QUEUE, job_id)
        await redis.aclose()


async def test_an_ending_stores_nothing_once_another_worker_holds_the_lease_whenever_it_took_it(
    redis_url, clean_env
):
    """The job was taken after the run's last look at its lease (the lease lapsed between the
    heartbeat's renewal and the ending): the check is in the ending's own write, so the run stores no
    result, drops none of the other run's keys (its lease, the job, the queue entry) and counts no
    usage; handed back at shutdown, it leaves the other run's lease and queue entry alone."""
    after = await _ending_under(redis_url, "other", finish=True)
    assert after["result"] is None, "attempt 1's result stored over the run that took the job"
    assert after["lease"] == offer("other", 1000).encode(), "the other worker's lease deleted"
    assert (after["job"], after["queued"]) == (b"{}", 1), "the other run's job dropped"
    assert not after["counted"], "attempt 1 counted: the other run's count would be skipped"
    handed_back = await _ending_under(redis_url, "other", finish=False)
    assert (handed_back["lease"], handed_back["queued"]) == (offer("other", 1000).encode(), 1)
    mine = await _ending_under(redis_url, "me", finish=True)
    assert (mine["result"], mine["lease"], mine["job"], mine["queued"], mine["counted"]) == (
        b"stored",
        None,
        None,
        None,
        1,
    ), "a job still ours ends as before"


async def test_an_ending_sent_again_after_its_reply_was_lost_finds_its_own_ending_done(
    redis_url, redis_server, clean_env, caplog
):
    """redis-py sends the endings' MULTI again when the connection drops with its reply on the way:
    the second run finds the job's ending its own, not another worker's (no 'stopped' warning), counts
    nothing twice, and a job handed back with a delay is delayed once."""
    import hashlib

    from relays import losing_one_reply

    from worker import accounting
    from worker.endings import end_jobs

    client = redis_server.client()
    client.script_load(end_jobs.lua)  # type: ignore[attr-defined]  # (the MULTI's EVALSHA finds it)
    client.script_load(accounting._record.lua)  # type: ignore[attr-defined]
    ending = hashlib.sha1(end_jobs.lua.encode()).hexdigest().encode()  # type: ignore[attr-defined]
    async with losing_one_reply(redis_server.port, ending) as port:  # (only the ending's MULTI holds it)
        ended = await _ending_under(f"redis://127.0.0.1:{port}/0", "me", finish=True)
    async with losing_one_reply(redis_server.port, ending) as port:
        handed_back = await _ending_under(f"redis://127.0.0.1:{port}/0", "me", finish=False)
    assert "its ending is the other worker's" not in caplog.text, "a replay taken for another's run"
    assert (ended["result"], ended["lease"], ended["counted"], ended["requests"]) == (
        b"stored",
        None,
        1,
        b"1",
    )
    assert handed_back["queued"] == 5001, "the hand-back's delay added twice"


async def test_a_hand_back_sent_again_after_the_same_worker_started_the_job_again_leaves_that_run(
    redis_url, redis_server, clean_env
):
    """A hand-back's reply lost, and before redis-py's second send reaches Redis this worker's claim (on
    its own connection) starts the job again, under the same lease value: the second send must not
    take that run's lease (another worker would start the job too) nor delay the job again."""
    import hashlib

    from relays import losing_one_reply

    from shared.settings import load_settings
    from worker.endings import end_jobs
    from worker.job import WorkerState
    from worker.providers.mock import MockProvider
    from worker.publisher import EventWriter
    from worker.runner import build_worker

    client = redis_server.client()
    client.script_load(end_jobs.lua)  # type: ignore[attr-defined]  # (the MULTI's EVALSHA finds it)
    ending = hashlib.sha1(end_jobs.lua.encode()).hexdigest().encode()  # type: ignore[attr-defined]
    job_id, lease = f"handed-back-{time.monotonic_ns()}", offer("me", 1000)
    client.set(keys.job(job_id), b"{}")
    client.zadd(keys.QUEUE, {job_id: 1})
    client.set(keys.in_progress(job_id), lease)
    client.set(keys.retry(job_id), b"1")  # (this run is the job's first start)
    reconnect = asyncio.Event()
    async with losing_one_reply(redis_server.port, ending, reconnect) as port:
        settings = load_settings(redis_url=f"redis://127.0.0.1:{port}/0", worker_lease_seconds=1)
        worker = build_worker(settings, handle_signals=False)
        state = WorkerState(
            settings=settings, provider=MockProvider(), worker_id="me", writer=EventWriter(worker.pool)
        )
        state.leases_renewed_at = time.monotonic()
        worker.ctx["mcpq"], worker._me = state, lease
        state.running[job_id] = 1
        handing_back = asyncio.create_task(
            worker.finish_job(job_id, False, None, 60, False, 5000, None, attempt=1)
        )
        await asyncio.to_thread(wait_for, lambda: not client.exists(keys.in_progress(job_id)), "handed back")
        client.set(keys.in_progress(job_id), lease)  # this worker's claim: started again, try 2
        client.incr(keys.retry(job_id))
        reconnect.set()
        await handing_back
        await worker.pool.aclose()
    assert client.get(keys.in_progress(job_id)) == lease.encode(), "the run started again lost its lease"
    assert client.zscore(keys.QUEUE, job_id) == 5001, "the hand-back's delay added twice"


async def test_a_pause_parks_the_job_only_while_the_run_holds_it_and_once(redis_url, clean_env):
    """A run that paused for its caller's answer parks its job in one script: not when another worker
    took the job after the run's last look at its lease (the other run's lease and attempt count left
    alone), and once when the park is sent again (redis-py, after a reply lost): its attempt base is
    added once."""
    from shared.connection import connect
    from shared.settings import load_settings
    from worker import pause

    redis = connect(redis_url)
    settings = load_settings(redis_url=redis_url)
    how = pause.Park(job_try=2, expires_at=time.time() + 60)
    try:
        for job_id, holder in (("taken", "other"), ("ours", "me")):
            await redis.set(keys.job(job_id), b"{}")
            await redis.set(keys.in_progress(job_id), offer(holder, 1000))
            await redis.hset(keys.input_request(job_id), "question", "{}")
        assert await pause.park(redis, "taken", how, settings, offer("me", 1000)) == -1
        assert await redis.get(keys.in_progress("taken")) == offer("other", 1000).encode()
        assert await redis.hget(keys.input_request("taken"), "base") is None, "the other run's attempts"
        assert await pause.park(redis, "ours", how, settings, offer("me", 1000)) == 1
        assert await pause.park(redis, "ours", how, settings, offer("me", 1000)) == 1  # sent again
        assert await redis.hget(keys.input_request("ours"), "base") == b"2", "its attempts added twice"
    finally:
        await redis.aclose()


async def test_a_park_sent_again_after_an_answer_came_first_adds_its_attempts_once(
    redis_url, redis_server, clean_env
):
    """The caller answered before the run's park (the question gone from the record): the park puts
    the job back on its way, and redis-py sends it again after its reply was lost (a failover, a blip).
    That second run finds no lease and no park, yet must not add the run's attempts a second time."""
    from relays import losing_one_reply

    from shared.connection import connect
    from shared.settings import load_settings
    from worker import pause

    client = redis_server.client()
    client.set(keys.in_progress("answered-MARKED"), offer("me", 1000))
    client.hset(keys.input_request("answered-MARKED"), mapping={"base": "3", "answer:1": "{}"})
    client.script_load(pause._park.lua)  # type: ignore[attr-defined]  # (the EVALSHA finds it)
    how = pause.Park(job_try=2, expires_at=time.time() + 60)
    async with losing_one_reply(redis_server.port, b"answered-MARKED") as port:
        redis = connect(f"redis://127.0.0.1:{port}/0")
        try:
            parked = await pause.park(
                redis, "answered-MARKED", how, load_settings(redis_url=redis_url), offer("me", 1000)
            )
        finally:
            await redis.aclose()
    assert parked == 0
    assert client.hget(keys.input_request("answered-MARKED"), "base") == b"5", "its attempts added twice"
