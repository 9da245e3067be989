"""A worker stopped with SIGTERM takes no new jobs, finishes or hands back the ones it holds within
WORKER_SHUTDOWN_GRACE_SECONDS, and exits 0."""

import asyncio
import signal

from observe import LONG_MESSAGE, Recorder, exit_code, expected_text, heartbeat, starts, terminal_events
from openai_server import eventually
from readers import stream_events
from runtimes import runtime_for

from messenger.queue import ANONYMOUS
from shared.models import ChatRequest


async def streaming(runtime, job_id: str) -> None:
    async def has_text():
        return (await runtime.jobs.get(job_id)).ai_response

    await eventually(has_text, timeout=20)


async def test_sigterm_with_a_long_grace_finishes_the_running_job_takes_no_new_one_and_exits_0(
    redis_url, workers, clean_env, redis_server
):
    (proc,) = workers.start(redis_url, MOCK_TOKEN_DELAY_MS="40", WORKER_SHUTDOWN_GRACE_SECONDS="60")
    async with runtime_for(redis_url) as runtime, asyncio.timeout(60):
        running = await runtime.queue.submit(ChatRequest(message=LONG_MESSAGE), caller=ANONYMOUS)
        await streaming(runtime, running)
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        later = await runtime.queue.submit(ChatRequest(message="submitted after SIGTERM"), caller=ANONYMOUS)

        finished = await runtime.jobs.wait(running, timeout=20)
        assert finished.status == "completed", finished.error
        assert finished.attempt == 1, "finished by the worker that had it, not handed back"
        assert finished.ai_response == expected_text(LONG_MESSAGE)
        assert await exit_code(proc) == 0
        assert (await runtime.jobs.get(later)).status == "queued", "the stopping worker took no new job"
        assert heartbeat(redis_server.client(), finished.worker_id) is None, "its heartbeat is gone"

        workers.start(redis_url)
        taken = await runtime.jobs.wait(later, timeout=20)
    assert taken.status == "completed", taken.error
    assert taken.attempt == 1
    assert taken.worker_id != finished.worker_id, "another worker ran the job submitted after SIGTERM"


async def test_sigterm_with_a_short_grace_hands_the_job_back_to_another_worker_and_exits_0(
    redis_url, workers, clean_env, redis_server
):
    procs = workers.start(redis_url, count=2, MOCK_TOKEN_DELAY_MS="60", WORKER_SHUTDOWN_GRACE_SECONDS="0.5")
    seen = Recorder()
    stopped = []

    async def on_event(event, transcript):
        await seen(event, transcript)
        if not stopped and event is not None and event.type == "token":
            pid = heartbeat(redis_server.client(), transcript.worker_id)["pid"]
            (proc,) = [p for p in procs if p.pid == pid]
            proc.send_signal(signal.SIGTERM)
            stopped.append((proc, transcript.worker_id))

    async with runtime_for(redis_url) as runtime, asyncio.timeout(60):
        result = await runtime.jobs.run(ChatRequest(message=LONG_MESSAGE), on_event, timeout=40)
        ((proc, first_worker),) = stopped
        assert await exit_code(proc) == 0

    assert result.status == "completed", result.error
    assert result.attempt == 2, "handed back and run again"
    assert result.worker_id != first_worker
    assert result.ai_response == expected_text(LONG_MESSAGE)
    assert seen.text(1) and seen.text(1) != result.ai_response, "the grace ran out before the answer did"
    events = stream_events(redis_server.client(), result.job_id)
    assert starts(events) == [1, 2]
    assert [e["type"] for e in terminal_events(events)] == ["done"], "a handed-back attempt has no ending"
