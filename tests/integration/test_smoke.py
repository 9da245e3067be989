import json

from messenger.runtime import open_runtime
from shared.models import ChatRequest
from shared.settings import load_settings


async def test_two_workers_answer_through_real_redis(redis_url, workers, redis_server, clean_env):
    workers.start(redis_url, count=2)
    async with open_runtime(load_settings(redis_url=redis_url)) as runtime:
        result = await runtime.jobs.run(ChatRequest(message="smoke test"))
    assert result.status == "completed"
    assert result.ai_response.startswith("Mock answer to: smoke test")
    stored = json.loads(redis_server.client().get(f"arq:result:{result.job_id}"))
    assert stored["r"]["aiResponse"] == result.ai_response


async def test_embedded_mode_answers(embedded_runtime):
    result = await embedded_runtime.jobs.run(ChatRequest(message="embedded"))
    assert result.status == "completed" and "embedded" in result.ai_response
