"""Redis stopped for a second and started again on the same port (with its data kept, as a production
Redis with persistence would): messenger and workers reconnect by themselves, tokens published while
the messenger was cut off come back from the job's stream, and the job in flight completes."""

import asyncio

import pytest
from observe import LONG_MESSAGE, Recorder, expected_text, terminal_events
from openai_server import eventually
from readers import stream_events
from runtimes import runtime_for

from messenger.health import health
from shared.models import ChatRequest

OUTAGE_SECONDS = 1.5


@pytest.fixture
def persistent_redis(make_redis):
    return make_redis(True)


async def test_redis_restarted_mid_stream_the_job_completes_whole_and_everyone_keeps_serving(
    persistent_redis, workers, clean_env
):
    url = persistent_redis.url
    (proc,) = workers.start(url, MOCK_TOKEN_DELAY_MS="60")
    seen = Recorder()
    async with runtime_for(url) as runtime, asyncio.timeout(90):
        in_flight = asyncio.create_task(runtime.jobs.run(ChatRequest(message=LONG_MESSAGE), seen, timeout=60))
        await eventually(lambda: seen.words(1) >= 5, timeout=20)
        await asyncio.to_thread(persistent_redis.stop)
        words_before_outage = seen.words(1)
        await asyncio.sleep(OUTAGE_SECONDS)
        await asyncio.to_thread(persistent_redis.start)

        result = await in_flight
        assert words_before_outage < len(expected_text(LONG_MESSAGE).split()), "the outage was mid-stream"
        assert result.status == "completed", result.error
        assert result.ai_response == expected_text(LONG_MESSAGE)
        assert result.attempt == 1, "the worker rode out the restart: the job was not dropped and run again"
        assert seen.text(result.attempt) == result.ai_response, "no token lost or repeated at the caller"
        events = stream_events(persistent_redis.client(), result.job_id)
        assert [e["type"] for e in terminal_events(events)] == ["done"]

        after = await runtime.jobs.run(ChatRequest(message="after the restart"), timeout=30)
        assert after.status == "completed", after.error
        assert after.ai_response == expected_text("after the restart")
        assert after.worker_id == result.worker_id, "the same worker process kept serving"
        report = await health(runtime)
    assert proc.poll() is None
    assert report["redis"]["ok"] is True
    assert [w["worker_id"] for w in report["workers"]] == [result.worker_id]
