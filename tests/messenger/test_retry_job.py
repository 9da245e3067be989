"""retry_job: a failed or cancelled job's request runs again as a new job of the same tenant."""

from __future__ import annotations

import pytest

from messenger.jobs import retry_job
from shared import keys
from shared.errors import InvalidRequest, JobNotFound
from shared.models import ChatRequest


async def test_a_cancelled_job_runs_again_as_a_new_job_with_the_same_answer(slow_runtime):
    request = ChatRequest(message="Tell me about queues", model="mock-1")
    job_id = await slow_runtime.queue.submit(request, caller="alice")
    assert (await slow_runtime.jobs.cancel(job_id)).status == "cancelled"

    again = await retry_job(slow_runtime.jobs, job_id, reader="alice")
    assert again != job_id
    assert await slow_runtime.redis.get(keys.owner(again)) == b"alice"  # the tenant's job, not the operator's
    first_run = await slow_runtime.jobs.run(request)
    retried = await slow_runtime.jobs.wait(again, timeout=60)
    assert retried.status == "completed" and retried.ai_response == first_run.ai_response
    with pytest.raises(InvalidRequest, match="only a failed or cancelled job"):
        await retry_job(slow_runtime.jobs, again)


async def test_another_tenants_job_cannot_be_retried(embedded_runtime):
    job_id = await embedded_runtime.queue.submit(ChatRequest(message="mine"), caller="alice")
    await embedded_runtime.jobs.cancel(job_id)
    with pytest.raises(JobNotFound):
        await retry_job(embedded_runtime.jobs, job_id, reader="bob")


async def test_a_job_without_a_kept_request_says_so(embedded_runtime):
    job_id = await embedded_runtime.queue.submit(ChatRequest(message="hi"), caller="alice")
    await embedded_runtime.jobs.cancel(job_id)
    await embedded_runtime.redis.set(
        keys.result(job_id),
        b'{"t":1,"f":"chat","a":[],"k":{},"s":true,'
        b'"r":{"jobId":"' + job_id.encode() + b'","status":"failed"}}',
    )
    with pytest.raises(InvalidRequest, match="not kept in a form that can run again"):
        await retry_job(embedded_runtime.jobs, job_id)
