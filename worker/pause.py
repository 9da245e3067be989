"""Human in the loop: a tool loop pauses before a tool call that needs its caller's approval
(TOOL_APPROVAL), and the paused job holds no worker slot, no lease and no provider connection.

Pausing, in order: the model turn and its tool_call events are journaled already (worker/journal.py);
the question goes into `mcpq:input:<job_id>` (shared/approvals.py), the `input_required` event is
published, and the job function returns without an ending. arq's ending for it (`park`, called from
the worker's finish_job) stores no result: it drops the lease and the retry count, and unless an
answer came meanwhile takes the job off the queue into `mcpq:input:waiting`, its keys kept until
the question expires. An answer (messenger/approvals.py) puts the job back on the queue and wakes
the workers: any of them resumes it from its journal, with the answer in hand. A question nobody
answers within INPUT_WAIT_SECONDS wakes the job too (`wake_expired`, from every worker's
heartbeat), and it fails, saying so.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from shared import keys
from shared.approvals import RESUME_SCORE, WAITING_LUA
from shared.handoff import HOLDER_LUA
from shared.models import Question
from shared.scripts import Arg, Key, script
from shared.settings import Settings

KEEP_MARGIN_SECONDS = 3600  # a paused job's keys outlive its question by this much


class InputRequired(Exception):
    """Raised by the tool loop at a call that needs an answer it does not have."""

    def __init__(self, question: Question):
        super().__init__(question.key)
        self.question = question


@dataclass(frozen=True)
class Park:
    """What the worker's finish_job needs to park a job whose function paused it."""

    job_try: int  # arq's try of the attempt that paused: the next attempt's number goes on from it
    expires_at: float  # unix seconds


def needs_approval(rule: str, read_only: bool | None, destructive: bool | None) -> bool:
    """TOOL_APPROVAL for one tool: `all`, or `destructive` unless the tool's MCP annotations say it is
    read-only or not destructive (the MCP spec's defaults: a tool may be destructive unless it says)."""
    if rule == "all":
        return True
    return rule == "destructive" and not read_only and destructive is not False


# Keeps a key alive for at least `ms` (never shortens a longer life, never revives a missing key).
_KEEP_LUA = """
local function keep(k, ms)
  local t = redis.call('PTTL', k)
  if t >= 0 and t < ms then redis.call('PEXPIRE', k, ms) end
end
"""


@script(
    _KEEP_LUA
    + WAITING_LUA
    + HOLDER_LUA
    + """
if redis.pcall('HGET', record, 'resumed') == pause then return 0 end  -- (this park sent again, below)
local holder = holder_of(lease, me)
if holder and holder ~= me or not holder and redis.call('EXISTS', result) == 1 then return -1 end
if not holder and redis.pcall('HGET', record, 'parked') == 'true' then return 1 end  -- (this park sent again)
redis.call('DEL', lease, retry)
redis.call('HINCRBY', record, 'base', job_try)
if redis.call('HEXISTS', record, 'question') == 1 and redis.call('EXISTS', cancel) == 0 then
  redis.call('HSET', record, 'parked', 'true')
  redis.call('ZREM', queue, job_id)
  redis.call('ZADD', waiting, expires_ms, job_id)
  keep(job, keep_ms) keep(journal, keep_ms) keep(stream, keep_ms) keep(owner, owner_ms)
  redis.call('PEXPIRE', record, keep_ms)
  return 1
end
-- answered (or cancelled) before it was parked: on with it now, and this park marked done (`pause`:
-- its own text), where its second run would find no lease nor park and add its attempts again
redis.call('HSET', record, 'resumed', pause)
redis.call('PUBLISH', wakeup, job_id)
return 0
"""
)
async def _park(
    redis, *, lease: Key, retry: Key, record: Key, cancel: Key, queue: Key, waiting: Key, job: Key,
    journal: Key, stream: Key, owner: Key, wakeup: Key, result: Key, job_id: Arg[str], job_try: Arg[int],
    expires_ms: Arg[int], keep_ms: Arg[int], owner_ms: Arg[int], me: Arg[str], pause: Arg[str],
) -> int:  # fmt: skip
    """1: parked until an answer; 0: an answer (or a cancel) came first, the job is due again; -1: the
    job is another run's (another worker took it while this one was stalled: nothing touched).
    `pause`: this park's own text, so that the park sent again (redis-py, after a lost reply) answers
    as it did and adds the run's attempts once."""
    ...


async def park(redis, job_id: str, how: Park, settings: Settings, me: str) -> int:
    """Park the job if it is still the run of `me` (the worker's offer: its leases' value)."""
    keep = how.expires_at - time.time() + settings.job_timeout_seconds + KEEP_MARGIN_SECONDS
    return await _park(
        redis, lease=keys.in_progress(job_id), retry=keys.retry(job_id), record=keys.input_request(job_id),
        cancel=keys.cancel(job_id), queue=keys.QUEUE, waiting=keys.INPUT_WAITING, job=keys.job(job_id),
        journal=keys.journal(job_id), stream=keys.stream(job_id), owner=keys.owner(job_id),
        wakeup=keys.WAKEUP_CHANNEL, result=keys.result(job_id), job_id=job_id, job_try=how.job_try,
        expires_ms=int(how.expires_at * 1000), keep_ms=int(keep * 1000),
        owner_ms=int((keep + keys.KEEP_RESULT_SECONDS) * 1000), me=me, pause=uuid.uuid4().hex,
    )  # fmt: skip


@script(
    WAITING_LUA
    + """
local due = redis.call('ZRANGEBYSCORE', waiting, '-inf', now_ms, 'LIMIT', 0, 100)
for _, id in ipairs(due) do
  redis.call('HDEL', record_prefix .. id, 'parked')
  requeue(id)
end
return #due
"""
)
async def _wake_expired(
    redis,
    *,
    waiting: Key,
    queue: Key,
    wakeup: Key,
    now_ms: Arg[int],
    score: Arg[int],
    record_prefix: Arg[str],
) -> int:
    """Put the parked jobs whose question expired back on the queue: each fails when it runs."""
    ...


async def wake_expired(redis) -> int:
    return await _wake_expired(
        redis, waiting=keys.INPUT_WAITING, queue=keys.QUEUE, wakeup=keys.WAKEUP_CHANNEL,
        now_ms=int(time.time() * 1000), score=RESUME_SCORE, record_prefix=keys.INPUT_PREFIX,
    )  # fmt: skip


async def ask(run, question: Question) -> dict:
    """Pause `run` (a worker.run.JobRun) on `question`: the question in its record, then the event;
    the worker's finish_job parks the job (`park`). Answers what arq is handed (never stored)."""
    await run.publisher.settle()  # every event before the question is in Redis
    record = keys.input_request(run.job_id)
    async with run.redis.pipeline(transaction=True) as pipe:
        pipe.hset(record, "question", question.model_dump_json())
        pipe.expire(record, int(question.expires_at - time.time() + KEEP_MARGIN_SECONDS))
        await pipe.execute()
    run.state.paused[run.job_id] = Park(run.job_try, question.expires_at)
    run.close()  # no longer this worker's: its heartbeat stops renewing the lease
    await run.publisher.input_required(question)
    return {"job_id": run.job_id, "status": "input_required", "key": question.key}
