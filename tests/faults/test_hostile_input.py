"""Garbage pushed into Redis by hand (as with redis-cli) and a flood of requests: each bad job ends
with a readable error instead of staying queued or running, and worker, messenger and the jobs
running meanwhile carry on."""

import asyncio
import json
import time

from observe import LONG_MESSAGE, ended, expected_text, terminal_events
from openai_server import eventually
from readers import stream_events
from runtimes import runtime_for

from messenger.health import health
from messenger.queue import ANONYMOUS
from shared import keys
from shared.models import ChatRequest

UNDECODABLE = b"\xff\xfe"  # a queue entry that is not even UTF-8


def push_job(client, job_id: str, payload: bytes, score: int | None = None) -> None:
    client.set(keys.job(job_id), payload)
    client.zadd(keys.QUEUE, {job_id: int(time.time() * 1000) if score is None else score})
    client.publish(keys.WAKEUP_CHANNEL, job_id)


def job_json(function: str, args: list) -> bytes:
    return json.dumps({"f": function, "a": args, "k": {}, "t": None, "et": int(time.time() * 1000)}).encode()


async def test_garbage_in_redis_ends_each_bad_job_readably_and_everything_keeps_serving(
    redis_url, workers, clean_env, redis_server
):
    (proc,) = workers.start(redis_url, MOCK_TOKEN_DELAY_MS="60", WORKER_CONCURRENCY="20")
    client = redis_server.client()
    async with runtime_for(redis_url) as runtime, asyncio.timeout(90):
        live = asyncio.create_task(runtime.jobs.run(ChatRequest(message=LONG_MESSAGE), timeout=60))
        running = await eventually(lambda: runtime.jobs.list(status="running"), timeout=20)
        live_id = running[0].job_id

        for garbage in (b"not json", b"[1, 2]", b'{"job_id": "x"}', b"\xff\xfe"):
            client.publish(keys.events(live_id), garbage)
            client.xadd(keys.stream(live_id), {"event": garbage})
        client.xadd(keys.stream(live_id), {"something": "else"})
        for _ in range(3):  # wake-ups that are no job id, while the worker is busy (its fast path)
            client.publish(keys.WAKEUP_CHANNEL, b"\x00garbage\xff")
            await asyncio.sleep(0.2)
        client.zadd(keys.QUEUE, {UNDECODABLE: int(time.time() * 1000)})
        client.zadd(keys.QUEUE, {"ghost": 0})  # a queue entry with no job behind it
        client.publish(keys.WAKEUP_CHANNEL, "ghost")
        push_job(client, "bad", b"not json")
        push_job(client, "wrongargs", job_json("chat", ["hello"]))
        push_job(client, "nofunction", job_json("no_such_function", [{"message": "hi"}]))
        client.set(keys.worker("x"), b"not json")
        client.set(keys.worker("y"), b"[1, 2]")

        flood = await asyncio.gather(
            *(
                runtime.queue.submit(ChatRequest(message=f"flood {i}", max_tokens=2), caller=ANONYMOUS)
                for i in range(200)
            )
        )

        answer = await live
        assert answer.status == "completed", answer.error
        assert answer.ai_response == expected_text(LONG_MESSAGE), "the live job's answer is whole"
        await asyncio.sleep(1.5)  # a worker that crashed on the garbage exits once its running job is done
        assert proc.poll() is None, f"the worker crashed on garbage:\n{workers.logs()[-2000:]}"

        bad = {}
        for job_id in ("ghost", "bad", "wrongargs", "nofunction"):
            try:
                bad[job_id] = await ended(runtime.jobs, job_id, timeout=10)
            except TimeoutError:
                bad[job_id] = f"not ended after 10 s; its queue score: {client.zscore(keys.QUEUE, job_id)}"
        for job_id in flood:
            assert (await ended(runtime.jobs, job_id, timeout=30)).status == "completed"
        after = await runtime.jobs.run(ChatRequest(message="still serving?"), timeout=30)
        report = await health(runtime)

    for job_id, job in bad.items():
        assert job.status == "failed", f"{job_id}: {job}"
        assert job.error and len(job.error) < 500, f"{job_id}: {job.error!r}"
    assert "message" in bad["wrongargs"].error or "invalid request" in bad["wrongargs"].error
    assert "no_such_function" in bad["nofunction"].error
    assert after.status == "completed" and after.ai_response == expected_text("still serving?")
    assert proc.poll() is None, "the worker did not crash"
    assert report["redis"]["ok"] and report["status"] == "ok", report
    assert [w["worker_id"] for w in report["workers"]] == [answer.worker_id]
    left = client.zrange(keys.QUEUE, 0, -1)
    assert not left, f"nothing stays in the queue (where it would count towards MAX_QUEUE_DEPTH): {left}"


async def test_a_job_ends_whole_and_once_over_a_damaged_abort_set(
    redis_url, workers, clean_env, redis_server
):
    """arq:abort of another type (junk written by hand): a job still ends once. Its ending takes it off
    the queue (the abort request's ZREM over junk is moot), where the ending's script stopped at that
    ZREM with the result stored and the job value deleted, the job left queued: a later claim
    dead-lettered it ("no job definition"), a second terminal event, `error`, after its `done`."""
    client = redis_server.client()
    client.set(keys.ABORT_SET, b"junk")
    workers.start(redis_url)
    async with runtime_for(redis_url) as runtime, asyncio.timeout(30):
        result = await runtime.jobs.run(ChatRequest(message="over a damaged abort set"), timeout=20)
        await eventually(lambda: client.zscore(keys.QUEUE, result.job_id) is None, timeout=10)
        await runtime.jobs.run(ChatRequest(message="one more, to free a slot and claim"), timeout=20)
    assert result.status == "completed"
    assert [e["type"] for e in terminal_events(stream_events(client, result.job_id))] == ["done"]
    assert not client.hexists(keys.DEAD_LETTER, result.job_id)
    assert "its ending was not stored" not in workers.logs()
    # the abort poll (arq's safety poll's first step) names the key once and the poll goes on, where
    # every poll failed ('queue poll failed (ResponseError)', each second) and claimed nothing
    polls = zranges(client)
    await eventually(lambda: zranges(client) >= polls + 3, timeout=10)  # (three more abort polls)
    logs = workers.logs()
    assert logs.count(f"Redis key {keys.ABORT_SET} holds the wrong type") == 1, logs[-2000:]
    assert "queue poll failed" not in logs, logs[-2000:]


def zranges(client) -> int:
    """ZRANGEs Redis ran so far: the worker's abort poll (its 1-second safety poll's first step) is one."""
    return int(client.info("commandstats").get("cmdstat_zrange", {}).get("calls", 0))


def test_an_ending_refused_over_a_key_of_another_type_does_not_blame_the_jobs_stream(caplog):
    """A WRONGTYPE around a run (its ending's script) names the keys the ending writes, not the job's
    stream (publisher.why_not_written's words, for an event write, whose only key it is)."""
    from redis.exceptions import ResponseError

    from worker.wakeups import QueueWorker

    async def refused(*_args) -> None:
        raise ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")

    worker = type("Fake", (), {"_run_claimed": staticmethod(refused)})()
    asyncio.run(QueueWorker.run_claimed(worker, None, "j1", 0, None))  # type: ignore[arg-type]
    said = [r.getMessage() for r in caplog.records if "its ending was not stored" in r.getMessage()]
    assert said and "not a stream" not in said[0] and keys.ABORT_SET in said[0], said
