"""Answers to a paused job's question (human in the loop, worker/pause.py): `tasks/update` (2026-07-28)
and the `respond_to_job` tool (2025 eras) both come here.

An answer is stored in the job's record and, if no worker holds the job any more (it is parked),
puts it back at the head of the queue and wakes the workers, in one script: any worker resumes it
within a wake-up's time. An answer that comes while the pausing worker is still letting go is kept,
and that worker's park finds it and wakes the job instead of parking it.
"""

from __future__ import annotations

import time

from pydantic import ValidationError

from messenger.jobs import JobClient
from shared import keys
from shared.approvals import NOTE_MAX_CHARS, RESUME_SCORE, WAITING_LUA, Answer
from shared.errors import InvalidRequest, validation_message
from shared.scripts import Arg, Key, script


@script(
    WAITING_LUA
    + """
if redis.call('TYPE', record).ok ~= 'hash' then return {'none'} end  -- none, or junk written by hand
local raw = redis.call('HGET', record, 'question')
local ok, q = false, nil
if raw then ok, q = pcall(cjson.decode, raw) end
if not ok or type(q) ~= 'table' or type(q.step) ~= 'number' then
  if redis.call('HEXISTS', record, 'parked') == 1 and redis.call('EXISTS', job) == 1 then
    -- parked on a question nobody can read (damaged by hand): back on the queue, its re-run asks again
    redis.call('HDEL', record, 'parked', 'question')
    requeue(job_id)
    return {'asked_again'}
  end
  return {'none'}
end
if key ~= '' and q.key ~= key then return {'wrong', tostring(q.key)} end
if redis.call('EXISTS', job) == 0 then return {'none'} end
redis.call('HSET', record, 'answer:' .. string.format('%d', q.step), answer)
redis.call('HDEL', record, 'question')
if redis.call('HDEL', record, 'parked') == 1 then requeue(job_id) end
return {'ok', tostring(q.key)}
"""
)
async def _answer(
    redis, *, record: Key, job: Key, waiting: Key, queue: Key, wakeup: Key, job_id: Arg[str], key: Arg[str],
    answer: Arg[str], score: Arg[int],
) -> list[bytes]:  # fmt: skip
    """['ok', key] once stored (and the job queued again if parked); ['none'] if the job waits for no
    answer; ['wrong', its key] if `key` is not the question's; ['asked_again'] if it was parked on a
    question that cannot be read (queued again: its re-run asks anew)."""
    ...


async def respond(
    jobs: JobClient, job_id: str, *, approve: bool, note: str | None = None, key: str | None = None,
    reader: str | None = None,
) -> str:  # fmt: skip
    """Answer the question job `job_id` waits on (`key`: the question's; None: whichever it is now);
    answers the key answered. Raises JobNotFound for a job `reader` may not see, InvalidRequest for a
    job that waits for no answer or a key that is not its question's."""
    await jobs.get(job_id, reader)  # the caller's own job, or as unknown as a missing one
    if note is not None and len(note) > NOTE_MAX_CHARS:
        raise InvalidRequest(f"the note takes {len(note)} characters; at most {NOTE_MAX_CHARS}")
    try:  # a note with a lone surrogate (from JSON's \ud800 or a shell's undecodable bytes) is no text
        answer = Answer(approved=approve, note=note or None, answered_at=round(time.time(), 3))
    except ValidationError as e:
        raise InvalidRequest(validation_message(e)) from None
    replied = await _answer(
        jobs.redis, record=keys.input_request(job_id), job=keys.job(job_id), waiting=keys.INPUT_WAITING,
        queue=keys.QUEUE, wakeup=keys.WAKEUP_CHANNEL, job_id=job_id, key=key or "",
        answer=answer.model_dump_json(), score=RESUME_SCORE,
    )  # fmt: skip
    outcome = [r.decode(errors="replace") if isinstance(r, bytes) else str(r) for r in replied]
    if outcome[0] == "wrong":
        yours = key or ""  # (only a given key is wrong)
        yours = yours if len(yours) <= 100 else f"{yours[:40]}…"  # a caller's huge key is not echoed whole
        raise InvalidRequest(f"job {job_id} waits for an answer to {outcome[1]}, not to {yours}")
    if outcome[0] == "asked_again":
        raise InvalidRequest(
            f"job {job_id}'s question could not be read (damaged in Redis); the job runs again to ask it"
            " anew: answer the new question"
        )
    if outcome[0] != "ok":  # its state now: another answer may have come since it was read above
        raise InvalidRequest(f"job {job_id} is {(await jobs.get(job_id)).status}: it waits for no answer")
    return outcome[1]
