"""What an operator does to jobs by hand (the CLI, the dashboard): name a job by a unique prefix of
its id, as shown cut short in tables, and run a failed, cancelled or dead job again under a new id.

Both act as the operator: every tenant's jobs are visible, and a job run again belongs to the tenant
whose job it was (its budget pays, its caller can read the answer)."""

from __future__ import annotations

from arq.jobs import deserialize_job_raw, deserialize_result

from messenger.jobs import JobClient
from shared import damaged, dead_letter, keys
from shared.errors import InvalidRequest, shown_id
from shared.models import ChatRequest, ToolCallRequest
from shared.serializer import deserialize
from shared.settings import OPERATOR

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


async def resubmit(jobs: JobClient, job_id: str) -> str:
    """Queue a failed, cancelled or dead job's request again, for the tenant who sent it; the new
    job's id. A job queued, running or completed is refused (cancel a running one first)."""
    status = (await jobs.get(job_id)).status  # JobNotFound when there is no such job
    if status not in ("failed", "cancelled"):
        raise InvalidRequest(f"job {job_id} is {status}: only a failed, cancelled or dead job runs again")
    function, args = await _request_of(jobs.redis, job_id)
    if not args or not isinstance(args[0], dict) or function not in ("chat", "call_tool"):
        raise InvalidRequest(f"job {job_id}'s request was not kept whole, so it cannot run again")
    owner = await jobs.redis.get(keys.owner(job_id))
    caller = owner.decode(errors="replace") if isinstance(owner, bytes) else OPERATOR
    model = ChatRequest if function == "chat" else ToolCallRequest
    return await jobs.queue.submit(model.model_validate(args[0]), caller=caller)


async def _request_of(redis, job_id: str) -> tuple[str | None, tuple]:
    """The function and arguments a job was queued with: in arq's result record, or for a dead
    job (whose record keeps none) in its dead-letter entry."""
    raw = await damaged.read(redis.get(keys.result(job_id)), keys.result(job_id), None)
    if raw is not None:
        info = deserialize_result(raw, deserializer=deserialize)
        if info.args:
            return info.function, tuple(info.args)
    for entry in await dead_letter.list_dead(redis, keys.DEAD_LETTER_KEPT):
        if entry.job_id == job_id and not entry.raw_truncated:
            function, args, *_ = deserialize_job_raw(entry.raw.encode(), deserializer=deserialize)
            return function, tuple(args)
    return None, ()
