"""Cancelling a running job (with cancel_job, or by an MCP client abandoning its request) stops it:
the worker closes the provider stream, the caller gets `cancelled`, and partial usage is recorded."""

import asyncio
import contextlib
import json

import anyio
import pytest
from mcp import Client
from observe import ended, terminal_events
from openai_server import eventually, words
from readers import follow, stream_events
from runtimes import runtime_for

from messenger.queue import Submitted
from messenger.server import build_server
from shared import keys
from shared.models import ChatRequest

SLOW_REPLY = " ".join(f"w{i}" for i in range(400))  # 20 s at 50 ms a token: only a cancel ends it early


def start_openai_workers(workers, redis_url, server):
    return workers.start(
        redis_url, AI_PROVIDER="openai", OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY="sk-x"
    )


def data_of(result) -> dict:
    assert not result.is_error, result.content
    return result.structured_content or json.loads(result.content[0].text)


async def test_cancel_job_stops_a_running_openai_job_and_records_partial_usage(
    redis_url, workers, openai_server, clean_env, redis_server
):
    openai_server.script(reply=SLOW_REPLY, token_delay=0.05)
    start_openai_workers(workers, redis_url, openai_server)
    async with runtime_for(redis_url) as runtime, asyncio.timeout(60):
        async with Client(build_server(runtime)) as client:
            submitted = data_of(
                await client.call_tool(
                    "submit_message", {"message": "talk", "model": "gpt-4o-mini", "max_tokens": 1000}
                )
            )
            job_id = submitted["jobId"]
            follower = asyncio.create_task(runtime.jobs.wait(job_id, timeout=40))

            async def streaming():
                return data_of(await client.call_tool("get_job", {"job_id": job_id}))["aiResponse"]

            await eventually(streaming, timeout=20)
            cancelled = data_of(await client.call_tool("cancel_job", {"job_id": job_id}))
            await openai_server.wait_until(lambda: openai_server.disconnects, timeout=15)
            followed = await follower
            stored = await ended(runtime.jobs, job_id)
            # the moment between the worker's `cancelled` event and its stored result (arq writes it a
            # moment later), made to last: a reader then answers from the events, with the same usage
            result_key = keys.result(job_id)
            kept = await runtime.redis.get(result_key)
            await runtime.redis.delete(result_key)
            in_between = await runtime.jobs.get(job_id)
            await runtime.redis.set(result_key, kept)

    assert cancelled["status"] == "cancelled"
    assert followed.status == "cancelled", "a caller following the job sees it cancelled"
    assert 0 < cancelled["usage"]["completionTokens"] < len(words(SLOW_REPLY)), "partial usage"
    assert stored.status == "cancelled"
    assert 0 < stored.usage.completion_tokens < len(words(SLOW_REPLY)), "partial usage is kept"
    assert cancelled["usage"] == stored.model_dump(mode="json")["usage"], (
        "cancel_job answers what get_job will"
    )
    assert cancelled["usage"]["promptTokens"] > 0 and cancelled["usage"]["estimatedCost"] > 0
    assert in_between.status == "cancelled" and in_between.usage == stored.usage
    (closed,) = openai_server.disconnects
    assert closed.sent_tokens < len(words(SLOW_REPLY)), "the worker closed the provider stream"
    assert len(openai_server.chat_requests) == 1
    events = stream_events(redis_server.client(), job_id)
    assert [e["type"] for e in terminal_events(events)] == ["cancelled"]
    usage = redis_server.client().hget(keys.USAGE_TOTAL, "cancelled")
    assert usage == b"1", "the cancelled job's usage is counted"


@pytest.mark.parametrize("mode", ["auto", "legacy"], ids=["modern", "legacy"])
async def test_an_mcp_client_cancelling_send_message_cancels_the_job(
    redis_url, workers, openai_server, clean_env, mode
):
    openai_server.script(reply=SLOW_REPLY, token_delay=0.05)
    start_openai_workers(workers, redis_url, openai_server)
    progress = anyio.Event()

    async def on_progress(value, total, message):
        if message and not message.startswith("["):
            progress.set()  # a token reached the client: the job is streaming

    async with runtime_for(redis_url) as runtime, asyncio.timeout(60):
        async with Client(build_server(runtime), mode=mode) as client:
            async with anyio.create_task_group() as tg:

                async def ask():
                    await client.call_tool(
                        "send_message_to_ai",
                        {"message": "talk", "model": "gpt-4o-mini", "max_tokens": 1000},
                        progress_callback=on_progress,
                    )

                tg.start_soon(ask)
                await progress.wait()
                tg.cancel_scope.cancel()  # the client gives up on its request
            (job,) = await runtime.jobs.list()
            job = await ended(runtime.jobs, job.job_id, timeout=20)
            await openai_server.wait_until(lambda: openai_server.disconnects, timeout=15)

    assert job.status == "cancelled", job
    assert 0 < job.usage.completion_tokens < len(words(SLOW_REPLY))
    assert len(openai_server.chat_requests) == 1


@pytest.mark.parametrize("mode", ["auto", "legacy"], ids=["modern", "legacy"])
async def test_an_mcp_client_dropping_send_message_before_any_event_cancels_the_queued_job(
    redis_url, clean_env, mode
):
    """The client gives up (drops its stream in the 2026-07-28 era, sends notifications/cancelled in
    2025-11-25) while its submit's reply is on its way: the job is queued (no worker yet) and nothing
    about it has reached the call. The job is cancelled all the same once the submit answers, not left
    to run for nobody."""
    async with runtime_for(redis_url) as runtime, asyncio.timeout(60):
        submitting, queued, answered = runtime.queue.submitting, asyncio.Event(), asyncio.Event()

        def reply_held(*args, **kwargs) -> Submitted:  # Redis queued the job; its reply comes once released
            sent = submitting(*args, **kwargs).outcome

            async def held() -> str:
                job_id = await sent
                queued.set()
                await answered.wait()
                return job_id

            outcome = asyncio.ensure_future(held())
            return Submitted(outcome, asyncio.shield(outcome))

        runtime.queue.submitting = reply_held  # type: ignore[method-assign]
        async with Client(build_server(runtime), mode=mode) as client:
            async with anyio.create_task_group() as tg:

                async def ask():
                    await client.call_tool("send_message_to_ai", {"message": "talk", "max_tokens": 10})

                tg.start_soon(ask)
                await queued.wait()

                async def answer_once_dropped():  # the call stopped following its job: it was dropped
                    await eventually(lambda: not runtime.hub.following, timeout=20)
                    answered.set()

                answering = asyncio.create_task(answer_once_dropped())
                tg.cancel_scope.cancel()  # the client gives up on its request
            await answering
            (job,) = await runtime.jobs.list()
            job = await runtime.jobs.wait(job.job_id, timeout=10)  # its state when it ends, or by then
            queued_now = await runtime.redis.zcard(keys.QUEUE)

    assert job.status == "cancelled", f"the dropped call's job is {job.status}"
    assert not queued_now, "the job is no longer queued"


async def test_a_running_job_whose_result_key_holds_junk_is_cancelled_all_the_same(
    redis_url, workers, clean_env, redis_server
):
    """A cancel reads the job's result key only to tell a queued cancel whose reply was lost: a key of
    another type there (junk, which every read of the job passes over) must not stop the cancel of
    the job a worker runs."""
    workers.start(redis_url, MOCK_TOKEN_DELAY_MS="50")
    client = redis_server.client()
    async with runtime_for(redis_url) as runtime, asyncio.timeout(40):
        job_id = await runtime.queue.submit(ChatRequest(message=" ".join(["long"] * 200)), caller="operator")
        started = asyncio.Event()

        async def on_event(event, _) -> None:
            if event is not None and event.type == "token":
                started.set()

        following = asyncio.create_task(runtime.jobs.wait(job_id, timeout=30, on_event=on_event))
        await started.wait()
        client.hset(keys.result(job_id), "junk", "1")
        cancelled = await runtime.jobs.cancel(job_id)
        followed = await following
    assert cancelled.status == "cancelled" and followed.status == "cancelled", (cancelled, followed)


async def _followed_when_a_worker_claims(redis_url, workers, job_id: str, runtime, before) -> tuple:
    """Follow `job_id`, do `before()`, then start a worker: (the follower's JobResult, the events it
    heard)."""
    following, heard = await follow(runtime.jobs, job_id)
    await before()
    workers.start(redis_url)
    return await following, heard


async def test_a_job_cancelled_while_a_dead_worker_holds_it_ends_with_its_cancelled_event(
    redis_url, workers, clean_env, redis_server
):
    """Its worker died (its lease not lapsed yet) when the cancel came: the abort waits for the next
    claim, which ends the job before it starts. Every job ends with one terminal event: the stream
    says `cancelled`, and a follower hears it (not only the stored result, at its idle re-check)."""
    client = redis_server.client()
    async with runtime_for(redis_url) as runtime, asyncio.timeout(40):
        job_id = await runtime.queue.submit(ChatRequest(message="never runs"), caller="operator")
        client.set(keys.in_progress(job_id), b"a-dead-worker", px=1500)  # its lease, about to lapse
        cancelling: list[asyncio.Task] = []

        async def cancel() -> None:
            cancelling.append(asyncio.create_task(runtime.jobs.cancel(job_id)))
            await asyncio.sleep(0.2)  # (its abort request is written)

        followed, heard = await _followed_when_a_worker_claims(redis_url, workers, job_id, runtime, cancel)
        cancelled = await cancelling[0]
    assert followed.status == "cancelled" and cancelled.status == "cancelled", (followed, cancelled)
    assert [e["type"] for e in terminal_events(stream_events(client, job_id))] == ["cancelled"]
    assert heard == ["cancelled"], heard
    assert "aborted before start" in workers.logs()


async def test_a_job_out_of_tries_ends_with_its_error_event(redis_url, workers, clean_env, redis_server):
    """A job started MAX_TRIES times (its workers died under it) is not started again: it fails, and
    like every job ends with one terminal event, `error`, that its follower hears."""
    from worker.runner import MAX_TRIES

    client = redis_server.client()
    async with runtime_for(redis_url) as runtime, asyncio.timeout(40):
        job_id = await runtime.queue.submit(ChatRequest(message="never runs"), caller="operator")

        async def out_of_tries() -> None:
            client.set(keys.retry(job_id), str(MAX_TRIES))  # started MAX_TRIES times already

        followed, heard = await _followed_when_a_worker_claims(
            redis_url, workers, job_id, runtime, out_of_tries
        )
    assert followed.status == "failed" and "retries exceeded" in (followed.error or ""), followed
    assert [e["type"] for e in terminal_events(stream_events(client, job_id))] == ["error"]
    assert heard == ["error"], heard


async def test_a_job_cancelled_before_its_start_with_a_junk_stream_key_still_never_runs(
    redis_url, workers, clean_env, redis_server
):
    """Its stream key holds junk of another type, so its `cancelled` event cannot be written: the
    job still ends cancelled at that claim (said in the log), never left to a later claim that no
    longer sees the abort and would run it."""
    client = redis_server.client()
    async with runtime_for(redis_url) as runtime, asyncio.timeout(40):
        job_id = await runtime.queue.submit(ChatRequest(message="never runs"), caller="operator")
        client.set(keys.in_progress(job_id), b"a-dead-worker", px=1500)  # its lease, about to lapse
        cancelling = asyncio.create_task(runtime.jobs.cancel(job_id))
        await asyncio.sleep(0.2)  # (its abort request is written)
        client.set(keys.stream(job_id), b"junk")
        workers.start(redis_url)
        cancelled = await cancelling
        if cancelled.status != "cancelled":
            cancelled = await runtime.jobs.wait(job_id, timeout=20)
    assert cancelled.status == "cancelled", cancelled
    assert workers.logs().count("aborted before start") == 1, workers.logs()[-3000:]
    assert json.loads(client.get(keys.result(job_id)))["r"]["error"] == "CancelledError"


def losing_the_first_ending(monkeypatch) -> list:
    """The worker's first ending write fails whole (Redis went away at that moment); the list holds it."""
    from redis.exceptions import ConnectionError

    from worker.endings import Endings

    store, lost = Endings.store, []

    def lost_once(self, ending, count=None):  # (the write's future: failed, the first time)
        if not lost:
            lost.append(ending)
            failed = asyncio.get_running_loop().create_future()
            failed.set_exception(ConnectionError("Connection closed by server."))
            return failed
        return store(self, ending, count)

    monkeypatch.setattr(Endings, "store", lost_once)
    return lost


@contextlib.asynccontextmanager
async def in_process_worker(settings):
    """A worker of `settings` running in this test's loop (its books can be read), stopped at the end."""
    from worker.embedded import stop
    from worker.runner import build_worker

    worker = build_worker(settings, handle_signals=False)
    running = asyncio.create_task(worker.async_run())
    try:
        yield worker
    finally:
        await stop(worker, 5, running)


def talking_slowly(openai_server, redis_url: str, **settings):
    """Settings whose jobs stream 60 tokens 50 ms apart (3 s) from the test's OpenAI-compatible server."""
    from shared.settings import load_settings

    openai_server.script(reply=" ".join(f"w{i}" for i in range(60)), token_delay=0.05)
    return load_settings(
        redis_url=redis_url, ai_provider="openai", openai_base_url=openai_server.base_url,
        openai_api_key="sk-x", **settings,
    )  # fmt: skip


async def test_a_job_cancelled_before_its_start_whose_ending_was_lost_never_runs(
    redis_url, clean_env, redis_server, monkeypatch
):
    """The claim finds the job's cancel waiting and ends it unrun, but storing that ending fails (Redis
    went away at that moment): its lease lapses, and the next claim must still see the cancel and end
    it, never run it. Before, the first claim had taken the job off arq:abort: the next one ran it."""
    from shared.settings import load_settings

    lost = losing_the_first_ending(monkeypatch)
    client = redis_server.client()
    async with runtime_for(redis_url) as runtime, asyncio.timeout(40):
        job_id = await runtime.queue.submit(ChatRequest(message="never runs"), caller="operator")
        client.set(keys.in_progress(job_id), b"a-dead-worker", px=1500)  # its lease, about to lapse
        cancelling = asyncio.create_task(runtime.jobs.cancel(job_id))
        await eventually(lambda: client.zscore(keys.ABORT_SET, job_id) is not None)
        async with in_process_worker(load_settings(redis_url=redis_url, worker_lease_seconds=1)):
            await eventually(lambda: client.exists(keys.result(job_id)), timeout=30)
        await cancelling
        job = await runtime.jobs.get(job_id)
    assert lost, "no ending was lost"
    kinds = [e["type"] for e in stream_events(client, job_id)]
    assert "start" not in kinds, f"the cancelled job ran: {kinds}"
    assert job.status == "cancelled", job
    assert json.loads(client.get(keys.result(job_id)))["r"]["error"] == "CancelledError"


async def test_a_running_job_cancelled_whose_ending_was_lost_never_runs_again(
    redis_url, clean_env, redis_server, monkeypatch, openai_server
):
    """A running job is cancelled: its worker's abort poll stops it, but storing its `cancelled` ending
    fails (Redis went away at that moment): its lease lapses, and the next claim must still see the
    cancel and end the job, never run it again. Before, the abort poll took the job off arq:abort as
    it stopped it: the next claim ran the job again from its start, to the end of its answer."""
    lost = losing_the_first_ending(monkeypatch)
    client = redis_server.client()
    settings = talking_slowly(openai_server, redis_url, worker_lease_seconds=1)
    async with runtime_for(redis_url) as runtime, asyncio.timeout(40):
        async with in_process_worker(settings):
            job_id = await runtime.queue.submit(ChatRequest(message="talk"), caller="operator")
            await eventually(
                lambda: "token" in [e["type"] for e in stream_events(client, job_id)], timeout=20
            )
            await runtime.jobs.cancel(job_id)
            await eventually(lambda: lost and client.exists(keys.result(job_id)), timeout=30)
        job = await runtime.jobs.get(job_id)
    kinds = [e["type"] for e in stream_events(client, job_id)]
    assert kinds.count("start") == 1, f"the cancelled job ran again: {kinds}"
    assert job.status == "cancelled", job


async def test_a_cancelled_running_job_leaves_nothing_behind_in_its_worker(
    redis_url, clean_env, redis_server, openai_server
):
    """A running job's cancel is marked in its worker (`aborting_tasks`: its task is cancelled once,
    not at every abort poll while its cancel ends it) until the job's task ends. `chat` takes a
    user's cancel and returns its 'cancelled' ending, so the mark was only dropped for a job that
    raised CancelledError: every cancelled job left its id there for the worker's life."""
    client = redis_server.client()
    settings = talking_slowly(openai_server, redis_url)
    async with runtime_for(redis_url) as runtime, asyncio.timeout(40):
        async with in_process_worker(settings) as worker:
            job_ids = [
                await runtime.queue.submit(ChatRequest(message="talk"), caller="operator") for _ in range(3)
            ]
            await eventually(
                lambda: all("token" in [e["type"] for e in stream_events(client, j)] for j in job_ids),
                timeout=20,
            )
            for job_id in job_ids:
                await runtime.jobs.cancel(job_id)
            await eventually(lambda: all(client.exists(keys.result(j)) for j in job_ids), timeout=30)
            await eventually(lambda: not worker.job_tasks, timeout=10)
            left = set(worker.aborting_tasks)
        jobs = [await runtime.jobs.get(j) for j in job_ids]
    assert [j.status for j in jobs] == ["cancelled"] * 3, jobs
    assert left == set(), f"cancelled jobs' ids left in the worker: {left}"


async def test_a_job_past_arqs_timeout_is_stopped_by_the_workers_deadlines_and_fails_with_its_timeout(
    redis_url, clean_env, redis_server, openai_server
):
    """arq's job timeout (the backstop past JOB_TIMEOUT_SECONDS) is the worker's one Deadlines timer
    (worker/deadlines.py), not a timer a job: a job still running past it is cancelled and ends as
    asyncio.timeout ended it, failed with TimeoutError, and leaves nothing in the deadlines' books."""
    client = redis_server.client()
    settings = talking_slowly(openai_server, redis_url)
    async with runtime_for(redis_url) as runtime, asyncio.timeout(40):
        async with in_process_worker(settings) as worker:
            worker.job_timeout_s = 0.5  # (JOB_TIMEOUT_SECONDS + 30 as configured: the job's own never fires)
            job_id = await runtime.queue.submit(ChatRequest(message="talk"), caller="operator")
            await eventually(lambda: client.exists(keys.result(job_id)), timeout=20)
            deadlines = worker._deadlines
            await eventually(lambda: deadlines._timer is None, timeout=5)
            books = (dict(deadlines._due), set(deadlines._expired), dict(worker.job_tasks))
    job = await runtime.jobs.get(job_id)
    kinds = [e["type"] for e in stream_events(client, job_id)]
    assert job.status == "failed" and "TimeoutError" in (job.error or ""), job
    assert kinds.count("token") < 60 and "done" not in kinds, kinds
    assert books == ({}, set(), {}), books
