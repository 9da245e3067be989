"""A job named by a unique prefix of its id, as tables show it cut short: the operator's CLI takes
one wherever it takes a job id (the operator sees every tenant's jobs, so every recent and
dead-lettered id is a candidate)."""

from __future__ import annotations

from messenger.jobs import JobClient
from shared import dead_letter, keys
from shared.errors import InvalidRequest, shown_id

MIN_PREFIX = 6  # 16 million possibilities: a prefix this long rarely names two of 1,000 recent jobs


async def full_id(jobs: JobClient, given: str) -> str:
    """The job id `given` names: itself when a job has that id, else the one recent or dead job
    whose id starts with it. Refuses a prefix shorter than MIN_PREFIX or naming several jobs."""
    redis = jobs.redis
    recent = await jobs.recent_ids(None)
    if given in recent or await redis.exists(keys.job(given), keys.result(given)):
        return given
    dead = [entry.job_id for entry in await dead_letter.list_dead(redis, keys.DEAD_LETTER_KEPT)]
    if given in dead:
        return given
    known = dict.fromkeys([*recent, *dead])
    if len(given) < MIN_PREFIX:
        raise InvalidRequest(
            f"job id {shown_id(given)} is too short: give the whole id or at least {MIN_PREFIX} characters"
        )
    found = [job_id for job_id in known if job_id.startswith(given)]
    if len(found) > 1:
        raise InvalidRequest(
            f"job id prefix {shown_id(given)} matches {len(found)} jobs: give more characters"
        )
    return found[0] if found else given  # no match: the caller's lookup says "no such job"
