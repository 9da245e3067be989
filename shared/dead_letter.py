"""The dead-letter place: queue entries no worker can run, kept where a person with `redis-cli` finds them.

A worker that claims a job it cannot decode or validate (not JSON, wrong types, unknown function,
missing fields, too big, an id that is not text) never hands it to arq; it `bury()`s it: the entry
leaves the queue with its arq keys, its budget hold is released, and the job ends with a `failed`
result and one terminal `error` event, so whoever follows it hears why. What stays is one JSON entry
per job in the hash `mcpq:dead` (job id -> {job_id, reason, raw, raw_truncated, function, at}), the
newest DEAD_LETTER_KEPT of them (ordered by `mcpq:dead:order`). After a fix, `requeue()` puts a job
back exactly as it was queued; `drop()` forgets one.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from shared import damaged, keys, turns
from shared.errors import InvalidRequest, JobNotFound, shown_id
from shared.events import ErrorEvent, dump_event
from shared.models import JobResult
from shared.scripts import Arg, Key, script
from shared.serializer import serialize

RAW_KEPT = 2048  # bytes of the raw job value kept with an entry (a longer one cannot be requeued)
JOB_EXPIRES_MS = 86_400_000  # as the messenger's enqueue: a requeued job not started within a day expires


@script("""
-- the job's own keys are named here, as the id may not be text (a Key is)
local job, retry, lease = 'arq:job:' .. raw_id, 'arq:retry:' .. raw_id, 'arq:in-progress:' .. raw_id
local result, stream, channel = 'arq:result:' .. raw_id, 'mcpq:stream:' .. raw_id, 'mcpq:events:' .. raw_id
-- only the worker that takes the entry off the queue records it: each bad entry is reported once
if redis.call('ZREM', queue, raw_id) == 0 then
  redis.call('DEL', lease)
  return 0
end
redis.call('DEL', job, retry, lease)
for _, k in ipairs({abort, order, reserved_until}) do
  if redis.call('TYPE', k)['ok'] == 'zset' then redis.call('ZREM', k, raw_id) end
end
for _, k in ipairs({reserved, reserved_tenant}) do
  if redis.call('TYPE', k)['ok'] == 'hash' then redis.call('HDEL', k, raw_id) end
end
if redis.call('TYPE', dead)['ok'] ~= 'hash' then redis.call('DEL', dead) end
if redis.call('TYPE', order)['ok'] ~= 'zset' then redis.call('DEL', order) end
redis.call('HSET', dead, raw_id, entry)
redis.call('ZADD', order, now_ms, raw_id)
local extra = redis.call('ZCARD', order) - kept
if extra > 0 then
  for _, old in ipairs(redis.call('ZRANGE', order, 0, extra - 1)) do redis.call('HDEL', dead, old) end
  redis.call('ZREMRANGEBYRANK', order, 0, extra - 1)
end
-- a job that already has a result ended before: this entry was a stray copy, its ending stays
if event and redis.call('EXISTS', result) == 0 then
  redis.call('SET', result, result_record, 'EX', result_ttl)
  local t = redis.call('TYPE', stream)['ok']
  if t == 'none' or t == 'stream' then
    redis.call('XADD', stream, 'MAXLEN', '~', stream_maxlen, '*', 'event', event)
    redis.call('EXPIRE', stream, stream_ttl)
  end
  redis.call('PUBLISH', channel, event)
end
return 1
""")
async def _bury(
    redis, *, queue: Key, abort: Key, dead: Key, order: Key, reserved: Key, reserved_tenant: Key, reserved_until: Key,
    raw_id: Arg[bytes], entry: Arg[str], now_ms: Arg[int], kept: Arg[int], event: Arg[bytes | None],
    result_record: Arg[bytes | None], result_ttl: Arg[int], stream_maxlen: Arg[int], stream_ttl: Arg[int],
) -> int:  # fmt: skip
    """Off the queue with its arq keys and budget hold, into the dead-letter hash, with its ending."""
    ...


# A requeued job takes its tenant's next turn at normal priority (shared/turns.py), like a new one.
@script(
    """
if redis.call('EXISTS', job) == 1 or redis.call('ZSCORE', queue, job_id) then return 0 end
redis.call('DEL', result, stream, retry)  -- the dead-letter ending and its events: a fresh start
redis.call('PSETEX', job, job_ttl_ms, raw)
local tenant = 'unowned'
if redis.call('TYPE', owner).ok == 'string' then tenant = redis.call('GET', owner) end
"""
    + turns.PLACE_LUA
    + """
redis.call('ZADD', queue, turn_score, job_id)
redis.call('ZADD', recent, now_ms, job_id)
redis.call('ZREMRANGEBYRANK', recent, 0, -recent_kept - 1)
redis.call('HDEL', dead, job_id)
redis.call('ZREM', order, job_id)
redis.call('PUBLISH', wakeup, job_id)
return 1
"""
)
async def _requeue(
    redis, *, dead: Key, order: Key, job: Key, queue: Key, result: Key, stream: Key, retry: Key,
    recent: Key, wakeup: Key, owner: Key, turns: Key, job_id: Arg[str], raw: Arg[bytes], now_ms: Arg[int],
    job_ttl_ms: Arg[int], recent_kept: Arg[int], band: Arg[int], band_width: Arg[int],
) -> int:  # fmt: skip
    """Back on the queue exactly as it was first queued, unless it is queued again already."""
    ...


@dataclass(frozen=True)
class DeadJob:
    job_id: str
    reason: str
    raw: str  # the job value as queued (decoded with backslash escapes), at most RAW_KEPT bytes
    raw_truncated: bool
    function: str | None
    at: float  # unix seconds, when a worker buried it

    def as_dict(self) -> dict:
        return {
            "job_id": self.job_id,
            "reason": self.reason,
            "raw": self.raw,
            "raw_truncated": self.raw_truncated,
            "function": self.function,
            "at": self.at,
        }


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="backslashreplace")


def _error_event(job_id: str, attempt: int, reason: str) -> bytes:
    return dump_event(
        ErrorEvent(job_id=job_id, seq=0, attempt=attempt, ts=time.time(), error=f"job not run: {reason}")
    )


def _failed_result(job_id: str, function: str | None, attempt: int, reason: str) -> bytes:
    """An arq result record (as arq writes one) holding our failed JobResult."""
    now_ms = int(time.time() * 1000)
    result = JobResult(job_id=job_id, status="failed", error=f"job not run: {reason}", attempt=attempt)
    return serialize(
        {"t": attempt, "f": function or "?", "a": [], "k": {}, "et": now_ms, "s": True,
         "r": result.model_dump(mode="json"), "st": now_ms, "ft": now_ms, "q": keys.QUEUE, "id": job_id}
    )  # fmt: skip


async def bury(
    redis, raw_id: bytes, raw: bytes | None, reason: str, *, function: str | None = None, attempt: int = 1
) -> bool:
    """Take a queue entry off the queue for good and record it (one atomic script); False if it was
    no longer queued (another worker took it first)."""
    job_id = _text(raw_id)
    readable = job_id == raw_id.decode("utf-8", errors="replace")
    raw = raw or b""
    entry = DeadJob(
        job_id, reason, _text(raw[:RAW_KEPT]), len(raw) > RAW_KEPT, function, round(time.time(), 3)
    )
    ending = readable and bool(job_id)  # an id that is not text has no stream anyone could follow
    done = await _bury(
        redis, queue=keys.QUEUE, abort=keys.ABORT_SET, dead=keys.DEAD_LETTER, order=keys.DEAD_LETTER_ORDER,
        reserved=keys.BUDGET_RESERVED, reserved_tenant=keys.BUDGET_RESERVED_TENANT,
        reserved_until=keys.BUDGET_RESERVED_UNTIL, raw_id=raw_id,
        entry=json.dumps(entry.as_dict(), ensure_ascii=False), now_ms=int(time.time() * 1000), kept=keys.DEAD_LETTER_KEPT,
        event=_error_event(job_id, attempt, reason) if ending else None,
        result_record=_failed_result(job_id, function, attempt, reason) if ending else None,
        result_ttl=keys.KEEP_RESULT_SECONDS, stream_maxlen=keys.STREAM_MAXLEN, stream_ttl=keys.STREAM_TTL_SECONDS,
    )  # fmt: skip
    return bool(done)


def _entry(raw_id: bytes, value: bytes) -> DeadJob:
    try:
        d = json.loads(value)
        return DeadJob(
            str(d["job_id"]), str(d["reason"]), str(d["raw"]), bool(d["raw_truncated"]),
            d.get("function"), float(d["at"]),
        )  # fmt: skip
    except (ValueError, KeyError, TypeError):  # hand-edited: still listed, never fatal
        return DeadJob(
            _text(raw_id), "unreadable dead-letter entry", _text(value[:RAW_KEPT]), False, None, 0.0
        )


async def list_dead(redis, limit: int = 100) -> list[DeadJob]:
    """The dead-letter entries, newest first."""
    if (await redis.type(keys.DEAD_LETTER)) not in (b"hash", "hash", b"none", "none"):
        damaged.warn(keys.DEAD_LETTER)
        return []
    entries = [_entry(k, v) for k, v in (await redis.hgetall(keys.DEAD_LETTER)).items()]
    return sorted(entries, key=lambda e: e.at, reverse=True)[:limit]


async def _find(redis, job_id: str) -> bytes:
    value = await redis.hget(keys.DEAD_LETTER, job_id.encode("utf-8", errors="surrogateescape"))
    if value is None:
        raise JobNotFound(job_id, f"no dead-letter entry for job {shown_id(job_id)} (see `messenger dead`)")
    return value


async def requeue(redis, job_id: str) -> None:
    """Put a dead job back on the queue as it was (after fixing what made it fail)."""
    entry = _entry(job_id.encode(), await _find(redis, job_id))
    if entry.raw_truncated:
        raise InvalidRequest(
            f"job {job_id} was larger than {RAW_KEPT} bytes and was not kept whole; it cannot be requeued"
        )
    now_ms = int(time.time() * 1000)
    done = await _requeue(
        redis, dead=keys.DEAD_LETTER, order=keys.DEAD_LETTER_ORDER, job=keys.job(job_id), queue=keys.QUEUE,
        result=keys.result(job_id), stream=keys.stream(job_id), retry=keys.retry(job_id),
        recent=keys.RECENT_JOBS, wakeup=keys.WAKEUP_CHANNEL, job_id=job_id, raw=entry.raw.encode(),
        now_ms=now_ms, job_ttl_ms=JOB_EXPIRES_MS, recent_kept=keys.RECENT_JOBS_KEPT, owner=keys.owner(job_id),
        turns=keys.TURNS, band=turns.band("normal"), band_width=turns.BAND_WIDTH,
    )  # fmt: skip
    if not done:
        raise InvalidRequest(f"job {job_id} is queued again already")


async def drop(redis, job_id: str) -> None:
    """Forget a dead-letter entry."""
    await _find(redis, job_id)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hdel(keys.DEAD_LETTER, job_id)
        pipe.zrem(keys.DEAD_LETTER_ORDER, job_id)
        await pipe.execute()
