"""What the dashboard shows, read from Redis only (any replica shows the same): the live picture
(`snapshot`), the job list with its filters (`job_rows`, one pipelined read for the whole list) and
one job whole (`job_detail`: text, request, events timeline, attempts, usage).

Junk under a job's keys reads as that job's field missing (messenger/stored.py does the same), never
as a broken page.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from arq.jobs import deserialize_job_raw, deserialize_result
from redis.exceptions import ResponseError

from messenger import usage
from messenger.collector import Transcript, replay, retold
from messenger.health import NO_WORKER, capacity, live_workers, queue_counts, worker_rows
from messenger.runtime import Runtime
from messenger.stored import stored_result
from shared import damaged, keys, timeseries
from shared.events import CancelledEvent, DoneEvent, ErrorEvent, Event
from shared.models import FINAL_STATUSES, JobResult
from shared.serializer import deserialize

IN_FLIGHT_SHOWN = 25  # jobs in flight sent with each snapshot, newest first
TEXT_SHOWN = 4000  # characters of a job in flight's text sent with a snapshot or a text event
PREVIEW_CHARS = 160  # of the message, in the job list
ROWS_MAX = 500  # a list request asks for at most this many


@dataclass(frozen=True)
class Filters:
    status: str = ""  # a JobStatus, "in-flight", or "" for any
    tenant: str = ""
    model: str = ""
    search: str = ""  # in the id, tenant, model, message and error, any case

    @property
    def any(self) -> bool:
        return bool(self.status or self.tenant or self.model or self.search)

    def keep(self, row: dict) -> bool:
        if self.status == "in-flight":
            if row["status"] in FINAL_STATUSES:
                return False
        elif self.status and row["status"] != self.status:
            return False
        if (self.tenant and row["tenant"] != self.tenant) or (self.model and row["model"] != self.model):
            return False
        fields = ("job_id", "tenant", "model", "message", "error")
        return not self.search or self.search.lower() in " ".join(str(row[f] or "") for f in fields).lower()


async def snapshot(runtime: Runtime) -> dict:
    """The live picture, once a second: queue, workers, jobs in flight, today's cost, capacity."""
    redis = runtime.redis
    beats = await live_workers(redis)
    workers = worker_rows(beats)
    waiting, running = await queue_counts(redis, beats)
    await timeseries.sample_depth(redis)  # a point on the queue chart even with no worker alive
    held = [job_id for w in workers for job_id in w["running_jobs"]]
    queued = [m.decode(errors="replace") for m in await damaged.read(
        redis.zrange(keys.QUEUE, 0, IN_FLIGHT_SHOWN - 1), keys.QUEUE, [])]  # fmt: skip
    flight = await rows(redis, list(dict.fromkeys(held + queued))[:IN_FLIGHT_SHOWN])
    stats = await usage.usage_stats(redis, days=1)
    return {
        "time": time.time(),
        "queue_depth": waiting,
        "running": running,
        "workers": workers,
        "no_worker": NO_WORKER,  # said when `workers` is empty, in the words every other surface uses
        "in_flight": [r for r in flight if r["status"] not in FINAL_STATUSES],  # ended: it leaves
        "cost": {"totals": stats["totals"], "models": stats["models"]},
        "capacity": await capacity(redis, runtime.settings, beats),
    }


async def job_rows(redis, filters: Filters, limit: int) -> list[dict]:
    """The newest jobs that pass `filters`, newest first: with a filter, every job the recent-jobs
    index keeps is looked at; without one, just the newest `limit`."""
    window = keys.RECENT_JOBS_KEPT if filters.any else limit
    recent = await damaged.read(redis.zrevrange(keys.RECENT_JOBS, 0, window - 1), keys.RECENT_JOBS, [])
    return [r for r in await rows(redis, [m.decode(errors="replace") for m in recent]) if filters.keep(r)][
        :limit
    ]


async def rows(redis, job_ids: list[str]) -> list[dict]:
    """Jobs as lines of a list, in one pipelined read; a job Redis keeps nothing of is left out."""
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.zscore(keys.RECENT_JOBS, job_id)
            pipe.get(keys.result(job_id))
            pipe.exists(keys.in_progress(job_id))
            pipe.get(keys.job(job_id))
            pipe.get(keys.owner(job_id))
            pipe.hexists(keys.input_request(job_id), "question")  # paused for its caller's answer
        replies = [
            None if isinstance(r, ResponseError) else r for r in await pipe.execute(raise_on_error=False)
        ]
    for reply in replies:
        if isinstance(reply, BaseException):
            raise reply  # a lost connection; a wrong-typed key (junk) only loses that field
    found = (_row(job_id, *replies[6 * i : 6 * i + 6]) for i, job_id in enumerate(job_ids))
    return [row for row in found if row is not None]


def _row(job_id: str, enqueued_ms, result, running, queued, owner, asking) -> dict | None:
    job: JobResult | None = None
    request = _request(result, queued)
    if isinstance(result, bytes):
        job = stored_result(job_id, result, Transcript(job_id))
    elif running or isinstance(queued, bytes):
        status = "input_required" if asking else "running" if running else "queued"
        job = JobResult(job_id=job_id, status=status)
    if job is None:
        return None
    return {
        "job_id": job_id,
        "enqueued": round(enqueued_ms / 1000, 3) if isinstance(enqueued_ms, int | float) else None,
        "tenant": owner.decode(errors="replace") if isinstance(owner, bytes) else None,
        "model": job.model or request.get("model"),
        "status": job.status,
        "prompt_tokens": job.usage.prompt_tokens,
        "completion_tokens": job.usage.completion_tokens,
        "cost": job.usage.estimated_cost,
        "duration": job.processing_time,
        "attempt": job.attempt,
        "worker_id": job.worker_id,
        "error": job.error,
        "message": str(request.get("message") or request.get("tool") or "")[:PREVIEW_CHARS],
        "text": job.ai_response[-TEXT_SHOWN:],
    }


def _request(result, queued) -> dict:
    """The request a job was queued with: arq keeps it in the job record, then in its result; {} if
    neither holds one (junk, or a dead-lettered job's ending)."""
    for raw, kept_in in ((result, "result"), (queued, "job")):
        if not isinstance(raw, bytes):
            continue
        try:
            if kept_in == "result":
                args = deserialize_result(raw, deserializer=deserialize).args
            else:
                args = deserialize_job_raw(raw, deserializer=deserialize)[1]
            if args and isinstance(args[0], dict):
                return dict(args[0])
        except Exception:  # written by hand, or by another version: the row just lacks it
            continue
    return {}


async def job_detail(runtime: Runtime, job_id: str) -> dict:
    """One job whole (as the operator: any tenant's): its state, request, tenant, events, attempts."""
    redis = runtime.redis
    job = await runtime.jobs.get(job_id)
    async with redis.pipeline(transaction=False) as pipe:
        for key in (keys.owner(job_id), keys.result(job_id), keys.job(job_id)):
            pipe.get(key)
        owner, result, queued = [
            r if isinstance(r, bytes) else None for r in await pipe.execute(raise_on_error=False)
        ]
    events, _ = await replay(redis, Transcript(job_id))
    told = not events and job.status in FINAL_STATUSES  # the stream is gone: the story from the result
    if told:
        events = retold(job)
    enqueued, updated = await runtime.jobs.timeline(job_id)
    return {
        "job": job.model_dump(mode="json"),
        "tenant": owner.decode(errors="replace") if owner else None,
        "request": _request(result, queued),
        "enqueued": enqueued / 1000,
        "updated": updated / 1000,
        "events": timeline(events),
        "events_retold": told,
        "attempts": attempts(events),
    }


def timeline(events: list[Event]) -> list[dict]:
    """Events in order, a run of token events folded into one line (`tokens`: how many events and
    characters; a busy worker merges the tokens that pile up into one event, so events are not tokens)."""
    out: list[dict] = []
    for event in events:
        if event.type == "token":
            last = out[-1] if out else None
            if last and last["type"] == "tokens" and last["attempt"] == event.attempt:
                last["events"] += 1
                last["chars"] += len(event.text)
                last["until"] = event.ts
                continue
            out.append({"type": "tokens", "attempt": event.attempt, "ts": event.ts, "until": event.ts,
                        "events": 1, "chars": len(event.text)})  # fmt: skip
            continue
        entry = event.model_dump(mode="json", exclude={"job_id", "seq", "text"})
        if event.type == "tool_result":
            entry["result"] = entry["result"][:500]
        out.append(entry)
    return out


def attempts(events: list[Event]) -> list[dict]:
    """Each attempt of the job: the worker and model that ran it, when, how it ended, and its tokens
    as the provider counted them (None until its ending reports usage)."""
    runs: dict[int, dict] = {}
    for event in events:
        run = runs.setdefault(
            event.attempt, {"attempt": event.attempt, "worker_id": None, "model": None, "started": event.ts,
                            "ended": None, "tokens": None, "outcome": "did not end (its worker stopped?)"},
        )  # fmt: skip
        if event.type == "start":
            run["worker_id"], run["model"] = event.worker_id, event.model
        elif isinstance(event, DoneEvent | ErrorEvent | CancelledEvent):
            run["ended"] = event.ts
            run["outcome"] = {"done": "completed", "error": "failed", "cancelled": "cancelled"}[event.type]
            if event.usage is not None:
                run["tokens"] = event.usage.completion_tokens
    return list(runs.values())
