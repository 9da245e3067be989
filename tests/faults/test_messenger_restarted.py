"""The messenger that submitted a job goes away mid-stream: the job completes anyway, and another
messenger (a new Runtime, or a `messenger job` process) fetches its result and whole history by id."""

import asyncio
import json
import subprocess
import sys

from observe import LONG_MESSAGE, ROOT, Recorder, expected_text
from openai_server import eventually
from processes import process_env
from runtimes import runtime_for

from shared.models import ChatRequest


async def test_a_job_outlives_the_messenger_that_submitted_it_and_another_replica_fetches_it_whole(
    redis_url, workers, clean_env
):
    workers.start(redis_url, MOCK_TOKEN_DELAY_MS="40")
    first = Recorder()
    async with asyncio.timeout(60):
        async with runtime_for(redis_url) as runtime:
            caller = asyncio.create_task(runtime.jobs.run(ChatRequest(message=LONG_MESSAGE), first))
            await eventually(lambda: first.words(1) >= 5, timeout=20)
            caller.cancel()  # the messenger stops mid-stream: its caller and its connections go
            await asyncio.gather(caller, return_exceptions=True)
        job_id = first.events[0][1].job_id
        assert first.text(1) != expected_text(LONG_MESSAGE), "the first messenger left mid-stream"

        history = Recorder()
        async with runtime_for(redis_url) as replica:
            result = await replica.jobs.wait(job_id, timeout=30)
            assert result.status == "completed", result.error
            assert result.ai_response == expected_text(LONG_MESSAGE)
            assert result.attempt == 1, "the job ran on, not again"
            again = await replica.jobs.wait(job_id, timeout=5, on_event=history)
            fetched = await replica.jobs.get(job_id)

    assert again.ai_response == fetched.ai_response == expected_text(LONG_MESSAGE)
    assert fetched.status == "completed"
    kinds = [e.type for _, e in history.events]
    assert kinds[0] == "start" and kinds[-1] == "done" and set(kinds[1:-1]) == {"token"}
    assert [e.seq for _, e in history.events] == list(range(len(kinds))), "the whole history, in order"
    assert history.text(1) == expected_text(LONG_MESSAGE)

    env = process_env(redis_url)
    shown = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "messenger.cli", "job", job_id],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    printed = json.loads(shown.stdout)
    assert printed["status"] == "completed"
    assert printed["aiResponse"] == expected_text(LONG_MESSAGE)
    assert printed["jobId"] == job_id
