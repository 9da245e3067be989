"""A job no worker can run (issue 12: one such job killed every worker) is dead-lettered: both workers
keep running, whoever follows the job hears why it was not run, `messenger dead` lists it, and after
the cause is fixed `messenger dead requeue ID` runs it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

from observe import ROOT, expected_text, terminal_events
from processes import process_env
from readers import stream_events
from runtimes import runtime_for

from shared import keys
from shared.models import ChatRequest

WORKER_KILLER = b'{"f":"chat","a":[{"message":"hi"}],"k":{},"t":"abc","et":0}'


def messenger(redis_url: str, *args: str) -> subprocess.CompletedProcess:
    env = process_env(redis_url)
    env.pop("PYTHONUNBUFFERED", None)
    return subprocess.run(
        [sys.executable, "-m", "messenger.cli", *args],
        cwd=ROOT / "tests", env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_the_job_that_killed_every_worker_is_dead_lettered_and_the_workers_keep_serving(
    redis_url, workers, clean_env, redis_server
):
    procs = workers.start(redis_url, count=2)
    client = redis_server.client()
    async with runtime_for(redis_url) as runtime, asyncio.timeout(60):
        client.set(keys.job("x"), WORKER_KILLER)
        client.zadd(keys.QUEUE, {"x": 0})
        client.publish(keys.WAKEUP_CHANNEL, "x")
        followed = await runtime.jobs.wait("x", timeout=20)
        after = await runtime.jobs.run(ChatRequest(message="after the poison"), timeout=30)
        await asyncio.sleep(1.5)  # two safety polls: a worker that re-read the entry would exit now

    assert [p.poll() for p in procs] == [None, None], f"a worker exited:\n{workers.logs()[-2000:]}"
    assert followed.status == "failed"
    assert followed.error == "job not run: the job's tries (t) must be empty or a whole number 0-1000"
    assert after.status == "completed" and after.ai_response == expected_text("after the poison")
    assert [e["type"] for e in terminal_events(stream_events(client, "x"))] == ["error"]
    assert client.zscore(keys.QUEUE, "x") is None and not client.exists(keys.job("x"), keys.retry("x"))
    entry = json.loads(client.hget(keys.DEAD_LETTER, "x"))
    assert entry["raw"] == WORKER_KILLER.decode() and entry["function"] == "chat"
    assert workers.logs().count("dead-lettered queue entry x:") == 1


async def test_messenger_dead_lists_and_a_requeue_after_the_fix_runs_the_job(
    redis_url, workers, clean_env, redis_server
):
    (proc,) = workers.start(redis_url)
    client = redis_server.client()
    queued_by_a_newer_messenger = json.dumps(
        {"f": "chat", "a": [{"message": "requeued", "style": "terse"}], "k": {}, "t": None, "et": 0}
    )
    client.set(keys.job("newer"), queued_by_a_newer_messenger)
    client.zadd(keys.QUEUE, {"newer": 0})
    client.publish(keys.WAKEUP_CHANNEL, "newer")
    async with runtime_for(redis_url) as runtime, asyncio.timeout(60):
        failed = await runtime.jobs.wait("newer", timeout=20)
        assert failed.status == "failed" and "style" in failed.error, failed.error

        listed = messenger(redis_url, "dead", "--json")
        assert listed.returncode == 0, listed.stderr
        (entry,) = json.loads(listed.stdout)
        assert entry["job_id"] == "newer" and "style" in entry["reason"]
        assert entry["raw"] == queued_by_a_newer_messenger

        # the fix: the entry is edited by hand (here) or a worker that knows the field is deployed
        fixed = json.loads(client.hget(keys.DEAD_LETTER, "newer"))
        fixed["raw"] = fixed["raw"].replace(', "style": "terse"', "")
        client.hset(keys.DEAD_LETTER, "newer", json.dumps(fixed))
        requeued = messenger(redis_url, "dead", "requeue", "newer")
        assert requeued.returncode == 0, requeued.stderr
        done = await runtime.jobs.wait("newer", timeout=20)
        again = messenger(redis_url, "dead", "requeue", "newer")

    assert done.status == "completed", done.error
    assert done.ai_response == expected_text("requeued")
    assert [e["type"] for e in terminal_events(stream_events(client, "newer"))] == ["done"]
    assert client.hlen(keys.DEAD_LETTER) == 0
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "no dead-letter entry" in again.stderr
    assert proc.poll() is None
