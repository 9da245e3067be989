"""Giving back a job's budget reservation (see messenger/admission.py), for whichever side sees the
job end without being counted: the messenger for a job never enqueued or cancelled in the queue, the
worker for a job it dead-letters."""

from __future__ import annotations

from shared import keys


async def release(redis, job_id: str) -> None:
    """Drop the job's hold; safe to call more than once, or for a job that held nothing."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hdel(keys.BUDGET_RESERVED, job_id)
        pipe.hdel(keys.BUDGET_RESERVED_TENANT, job_id)
        pipe.zrem(keys.BUDGET_RESERVED_UNTIL, job_id)
        await pipe.execute()
