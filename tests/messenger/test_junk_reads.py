"""Junk in one job's Redis keys never breaks a shared read: list_jobs, get_job, wait_for_job, the
`job://` resource and the dashboard's job list skip or flag the bad entry and answer for the rest.

Real redis-server (one of the test's own, so the junk touches no other test); no workers, so the
healthy jobs stay queued.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from mcp import Client
from readers import text_of
from redis_server import RedisServer
from test_answers import store_result

from messenger import dashboard
from messenger.queue import ANONYMOUS
from messenger.runtime import open_runtime
from messenger.server import build_server
from shared import keys
from shared.errors import JobNotFound
from shared.models import ChatRequest, JobResult
from shared.settings import load_settings


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


async def submit(runtime, n: int, caller: str = ANONYMOUS) -> list[str]:
    return [await runtime.queue.submit(ChatRequest(message=f"job {i}"), caller=caller) for i in range(n)]


async def test_junk_in_one_jobs_keys_leaves_every_read_answering(own_redis, clean_env):
    async with open_runtime(load_settings(redis_url=own_redis.url)) as runtime, asyncio.timeout(60):
        healthy = await submit(runtime, 2)
        bad_result, bad_stream, wrong_stream, bad_owner, foreign_result = await submit(runtime, 5)
        r = runtime.redis
        await r.set(keys.result(bad_result), b"\xff\x00 not a result")
        await r.xadd(keys.stream(bad_stream), {"event": "not json"})
        await r.xadd(keys.stream(bad_stream), {"other": "field"})
        await r.xadd(keys.stream(bad_stream), {"event": json.dumps({"type": "token", "seq": "x"})})
        await r.set(keys.stream(wrong_stream), b"a string, not a stream")
        await r.delete(keys.owner(bad_owner))
        await r.hset(keys.owner(bad_owner), "caller", "x")  # a hash where a string belongs
        await store_result(r, JobResult(job_id=healthy[0], status="completed"))  # a result naming another job
        await r.set(keys.result(foreign_result), await r.get(keys.result(healthy[0])))
        await r.delete(keys.result(healthy[0]))
        await r.zadd(keys.RECENT_JOBS, {b"\xff\xfe": 9e12, b"not a job id!": 9e12, b"0" * 32: 9e12})

        listed = await runtime.jobs.list()
        by_id = {job.job_id: job for job in listed}
        assert set(by_id) == {*healthy, bad_result, bad_stream, wrong_stream, bad_owner, foreign_result}
        assert by_id[bad_result].status == "failed"
        assert (
            by_id[bad_result].error == f"the stored result of job {bad_result} is damaged and cannot be read"
        )
        assert by_id[foreign_result].status == "failed"
        assert [by_id[j].status for j in (*healthy, bad_stream, wrong_stream, bad_owner)] == ["queued"] * 5
        assert await runtime.jobs.list(reader=ANONYMOUS), "the owner-filtered list answers too"

        assert (await runtime.jobs.wait(bad_result, timeout=5)).status == "failed"
        assert (await runtime.jobs.get(bad_stream)).status == "queued"
        rows = (await dashboard.snapshot(runtime))["in_flight"]
        assert {row["job_id"] for row in rows} == {*healthy, bad_stream, wrong_stream, bad_owner}

        async with Client(build_server(runtime)) as client:
            jobs = await client.call_tool("list_jobs", {})
            assert not jobs.is_error, text_of(jobs)
            assert len(jobs.structured_content["jobs"]) == 7
            one = await client.call_tool("get_job", {"job_id": bad_result})
            assert not one.is_error and one.structured_content["status"] == "failed"
            waited = await client.call_tool("wait_for_job", {"job_id": bad_result, "timeout_seconds": 5})
            assert not waited.is_error and waited.structured_content["error"].endswith("cannot be read")
            resource = await client.read_resource(f"job://{bad_result}")
            assert json.loads(resource.contents[0].text)["status"] == "failed"
            assert not (await client.call_tool("get_job", {"job_id": wrong_stream})).is_error


async def test_an_owner_record_of_the_wrong_type_hides_the_job_from_keyed_readers_only(own_redis, clean_env):
    async with open_runtime(load_settings(redis_url=own_redis.url)) as runtime, asyncio.timeout(30):
        (job_id,) = await submit(runtime, 1, caller="key-alice")
        await runtime.redis.delete(keys.owner(job_id))
        await runtime.redis.hset(keys.owner(job_id), "caller", "key-alice")
        assert (await runtime.jobs.get(job_id)).status == "queued"
        assert await runtime.jobs.list(reader="key-alice") == []
        with pytest.raises(LookupError, match="never existed"):
            await runtime.jobs.get(job_id, reader="key-alice")


async def test_an_unknown_job_may_have_been_lost_only_on_a_redis_without_persistence(own_redis, clean_env):
    async with open_runtime(load_settings(redis_url=own_redis.url)) as runtime:
        with pytest.raises(JobNotFound) as volatile:
            await runtime.jobs.get("0" * 32)
        own_redis.client().config_set("appendonly", "yes")
        try:
            with pytest.raises(JobNotFound) as persistent:
                await runtime.jobs.get("0" * 32)
        finally:
            own_redis.client().config_set("appendonly", "no")
    assert volatile.value.message.endswith(
        "or Redis lost it (Redis restarted less than a day ago, without persistence)"
    )
    assert persistent.value.message.endswith("ago and its result expired")
