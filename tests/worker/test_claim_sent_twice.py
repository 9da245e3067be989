"""A worker's claim that redis-py sent again (its connection dropped with the script's reply on the
way: a failover, a network blip; shared.connection.CLAIM allows that one retry) answers the jobs its
first run leased: none is left leased to a worker that never heard of it (to wait for its lease to
lapse), counted as started twice, or offered slots counted twice."""

from __future__ import annotations

import time

from relays import losing_one_reply

from shared import keys
from shared.connection import CLAIM, connect
from shared.handoff import offer
from worker.claim import Claimed, claim_jobs

ME = offer("worker-MARKED", 60_000)


async def claim(redis, nonce: str, unreported: int, candidates: list[str], me: str = ME) -> list:
    return await claim_jobs(
        redis, queue=keys.QUEUE, abort_set=keys.ABORT_SET, idle=keys.IDLE_WORKERS, mine=keys.claim(nonce),
        now_ms=int(time.time() * 1000), lease_ms=60_000, unreported=unreported, scan=10 if not candidates else 0,
        offering=True, trust_offers=False, reset=False, me=me, retry_ttl=60, mine_ttl=60, lease_prefix=keys.IN_PROGRESS_PREFIX,
        job_prefix=keys.JOB_PREFIX, retry_prefix=keys.RETRY_PREFIX, owner_prefix=keys.OWNER_PREFIX,
        running_ids="", candidates=candidates,
    )  # fmt: skip


async def test_a_claim_sent_again_after_its_reply_was_lost_answers_the_jobs_it_leased(
    redis_url, redis_server
):
    client = redis_server.client()
    junk_id = 'job-\xff-\x00-"x\\'  # (an id the queue may hold, which the worker dead-letters)
    for job_id in ("job-1", "job-2", junk_id):
        client.zadd(keys.QUEUE, {job_id: 1000})
        client.set(keys.JOB_PREFIX + job_id, f"value of {job_id}")
        client.set(keys.OWNER_PREFIX + job_id, "alice")
    client.zadd(keys.ABORT_SET, {"job-2": 1})  # cancelled before it started
    async with losing_one_reply(redis_server.port, b"worker-MARKED") as port:
        redis = connect(f"redis://127.0.0.1:{port}/0", CLAIM)
        try:
            await claim(
                redis, "earlier", 0, ["nothing"], offer("another", 1)
            )  # (a script Redis knows: EVALSHA runs it)
            reply = await claim(redis, "MARKED", 5, [])  # its reply is lost: sent again
        finally:
            await redis.aclose()
    jobs = Claimed.batch(reply[2:])
    assert [(j.raw_id, j.job_try, j.aborted) for j in jobs] == [
        (b"job-1", 1, False), (b"job-2", 1, True), (junk_id.encode(), 1, False)
    ], "the claim sent again answered none of the jobs it leased"  # fmt: skip
    assert [(j.raw_job, j.owner) for j in jobs[:1]] == [(b"value of job-1", b"alice")]
    assert reply[:2] == [0, 2]  # (own slots left, offered): 5 free, 3 taken, 2 offered
    assert client.zscore(keys.IDLE_WORKERS, ME) == 2, "the offer counted twice"
    assert [client.get(keys.RETRY_PREFIX + j) for j in ("job-1", "job-2", junk_id)] == [b"1"] * 3
