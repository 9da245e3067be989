"""The messenger's reads of the queue: follow a job, read, cancel, retry and list jobs (submitting is
messenger/queue.py's).

Every read is built from what Redis holds (arq's keys plus the job's event stream), so any
messenger replica can answer for any job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import cast

from arq.jobs import deserialize_job_raw, deserialize_result, serialize_result
from redis.exceptions import RedisError, ResponseError, WatchError

from messenger.collector import IDLE_SECONDS, Holder, Transcript, follow_events, replay, retold
from messenger.hub import EventHub, Mailbox
from messenger.queue import ANONYMOUS, JobQueue, new_job_id
from messenger.stored import (
    ResultReads,
    held_by_worker,
    lost_answer,
    lost_message,
    not_found,
    read_job,
    stored_result,
)
from shared import approvals, damaged, dead_letter, keys
from shared.errors import InvalidRequest, JobLost, JobNotFound
from shared.events import CancelledEvent, Event, publish_events
from shared.models import FINAL_STATUSES, CapacityWait, ChatRequest, JobResult, JobStatus, ToolCallRequest
from shared.serializer import deserialize, serialize
from shared.settings import OPERATOR, TENANT_NAME, UNOWNED, Settings
from shared.turns import queue_position

_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")  # fullmatch: "$" would let a trailing newline in

# a followed job missing this long (keys, stream, and from every worker heartbeat) is lost: longer than
# a worker takes to write its heartbeat again after Redis comes back empty
LOST_AFTER_SECONDS = keys.HEARTBEAT_TTL_SECONDS
log = logging.getLogger("messenger.jobs")

OnEvent = Callable[[Event | None, Transcript], Awaitable[None]]


class JobClient:
    """Reads, follows, lists and cancels jobs; new ones come in through `queue` (messenger/queue.py)."""

    def __init__(self, redis, hub: EventHub, settings: Settings, queue: JobQueue):
        self.redis = redis
        self.hub = hub
        self.settings = settings
        self.queue = queue
        self.results = ResultReads(redis)  # followers waiting for stored results share one poll schedule

    async def run(
        self,
        request: ChatRequest | ToolCallRequest,
        on_event: OnEvent | None = None,
        timeout: float | None = None,
        caller: str = ANONYMOUS,
        cancel_when_dropped: bool = False,
    ) -> JobResult:
        """Submit and follow to the end, or until the job waits for its caller's answer (status
        input_required). Subscribes first, so not one token can be missed (what the job publishes
        before Redis confirms the subscription is read from its stream). `cancel_when_dropped`: a
        call cancelled at any time after the submit was sent (its client went away, or cancelled it)
        cancels the job too, once the submit is answered (a submit under way when the call is dropped
        still lands)."""
        job_id = new_job_id()
        submit: asyncio.Future[str] | None = None

        def enqueue() -> Awaitable[str]:
            nonlocal submit
            submitted = self.queue.submitting(request, caller=caller, job_id=job_id)
            submit = submitted.outcome  # a dropped call still learns whether its job was queued
            return submitted.answer

        try:
            async with self.hub.follow(job_id, meanwhile=enqueue) as live:  # enqueued while Redis confirms
                return await self._follow(job_id, live, on_event, timeout, until_input=True)
        except asyncio.CancelledError:
            if cancel_when_dropped and submit is not None:
                import anyio  # (only the MCP tools drop calls; the CLI's commands must not load it)

                with anyio.CancelScope(shield=True):
                    await self._cancel_dropped(job_id, submit)
            raise

    async def _cancel_dropped(self, job_id: str, submit: asyncio.Future[str]) -> None:
        """The caller gave up on job `job_id`: stop the work it no longer wants."""
        with contextlib.suppress(Exception):
            await submit  # (not queued: nothing to stop; the submit's own error is the caller's no more)
        if not submit.done() or submit.cancelled() or submit.exception() is not None:
            return
        try:
            await self.cancel(job_id)
        except Exception as e:  # the caller is gone: nobody to tell but the log
            log.warning("job %s: its call was dropped and the job could not be cancelled: %s",
                        job_id, type(e).__name__)  # fmt: skip

    async def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        on_event: OnEvent | None = None,
        reader: str | None = None,
        until_input: bool = True,
    ) -> JobResult:
        """Follow an existing job until it ends or `timeout` passes; returns its state either way.
        `until_input`: also return once the job waits for its caller's answer (input_required)."""
        _check_id(job_id)
        async with self.hub.follow(job_id) as live:
            snapshot, stored = await self._read(job_id, reader)
            if until_input and snapshot.status == "input_required":
                return snapshot
            if snapshot.status not in FINAL_STATUSES:
                return await self._follow(job_id, live, on_event, timeout, until_input)
            transcript = Transcript(job_id)
            if on_event:  # a late follower still sees the whole story
                told = (await replay(self.redis, transcript))[0]
                if not told and stored:  # the stream expired after the ending: from the result
                    told = retold(snapshot)
                    for event in told:
                        transcript.apply(event)
                for event in told:
                    await on_event(event, transcript)
            if stored:
                return snapshot
            async with asyncio.timeout(timeout):  # it ended a moment ago: its result is being stored
                return await self._stored(transcript, Vanished(job_id))

    async def get(self, job_id: str, reader: str | None = None) -> JobResult:
        """A job's state: its stored result once it has one. With a `reader`, a job another caller owns
        is as unknown as a missing one. A job whose keys Redis lost while a live worker still runs it
        reads as running (the worker stores its result when it ends)."""
        return (await self._read(job_id, reader))[0]

    async def _read(self, job_id: str, reader: str | None) -> tuple[JobResult, bool]:
        """get()'s answer, and whether it is the job's last word (its stored result, or why it has none)
        rather than a transcript that ended a moment before arq stored the result."""
        _check_id(job_id)
        stored = await read_job(self.redis, job_id)
        if reader is not None and stored.owner != reader:
            raise await not_found(self.redis, job_id)  # exactly as for a job that does not exist
        transcript = Transcript(job_id)
        await replay(self.redis, transcript)
        if stored.result is not None:
            return stored_result(job_id, stored.result, transcript), True
        if transcript.final and transcript.whole:
            return transcript.result(), False  # ended a moment ago; arq is storing the same result now
        if stored.question is not None and stored.queued:  # paused (worker/pause.py): waits for an answer
            paused = _pending(transcript, "input_required")
            paused.input_request = stored.question
            return paused, False
        if stored.running or stored.queued or await held_by_worker(self.redis, job_id):
            status = "queued" if stored.queued and not stored.running else "running"
            pending = _pending(transcript, status)
            if status == "queued":
                pending.queue_position = await queue_position(self.redis, job_id)
            else:
                pending.waiting_for = await _capacity_wait(self.redis, job_id)
            return pending, False
        if transcript.final:  # ended, but the stored result and some of its events are gone
            why = await lost_answer(self.redis, transcript.ended_ts or time.time())
            return JobResult(job_id=job_id, status="failed", attempt=transcript.attempt, error=why), True
        raise await not_found(self.redis, job_id)  # nothing left of it, and no worker runs it

    async def cancel(self, job_id: str, reader: str | None = None) -> JobResult:
        """Stop a job: a queued one is taken off the queue here; a running one is aborted by its worker."""
        snapshot = await self.get(job_id, reader)
        if snapshot.status in FINAL_STATUSES:
            return snapshot
        if await self._cancel_queued(job_id, snapshot.attempt + 1):
            return await self.get(job_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(keys.cancel(job_id), b"1", ex=int(self.settings.job_timeout_seconds) + 600)
            pipe.zadd(keys.ABORT_SET, {job_id: int(time.time() * 1000)})
            pipe.publish(keys.WAKEUP_CHANNEL, b"cancel")
            await pipe.execute()
        return await self.wait(job_id, timeout=10, until_input=False)

    async def list(
        self, status: JobStatus | None = None, limit: int = 50, reader: str | None = None
    ) -> list[JobResult]:
        """Recent jobs, newest first; with a `reader`, only the jobs it owns."""
        window = keys.RECENT_JOBS_KEPT if reader is not None else max(limit * 4, 200)
        jobs: list[JobResult] = []
        for job_id in await self.recent_ids(reader, window):
            try:
                job = await self.get(job_id)
            except JobNotFound:
                continue
            if status is None or job.status == status:
                jobs.append(job)
                if len(jobs) >= limit:
                    break
        return jobs

    async def recent_ids(self, reader: str | None, window: int = keys.RECENT_JOBS_KEPT) -> list[str]:
        """The newest `window` job ids, newest first; with a `reader`, only those it owns."""
        recent = await self._recent(window)
        if reader is not None and recent:
            owners = await self.redis.mget([keys.owner(job_id) for job_id in recent])
            recent = [
                job_id for job_id, owner in zip(recent, owners, strict=True) if owner == reader.encode()
            ]
        return recent

    async def _recent(self, window: int) -> list[str]:
        """The newest job ids of RECENT_JOBS; a member that is not a job id is logged and skipped."""
        try:
            members = await self.redis.zrevrange(keys.RECENT_JOBS, 0, window - 1)
        except ResponseError as e:
            log.warning("%s cannot be read (%s); no recent jobs listed", keys.RECENT_JOBS, e)
            return []
        ids = []
        for member in members:
            job_id = member.decode(errors="replace")
            if _JOB_ID.fullmatch(job_id):
                ids.append(job_id)
            else:
                log.warning("skipping a member of %s that is not a job id", keys.RECENT_JOBS)
        return ids

    async def timeline(self, job_id: str) -> tuple[int, int]:
        """When a job was enqueued and when its last event came, in ms (the enqueue time if none yet)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zscore(keys.RECENT_JOBS, job_id)
            pipe.xrevrange(keys.stream(job_id), count=1)
            enqueued, last = await pipe.execute(raise_on_error=False)
        for reply in (enqueued, last):
            if isinstance(reply, BaseException) and not isinstance(reply, ResponseError):
                raise reply  # a lost connection; a wrong-typed key (junk) only loses its time
        enqueued = enqueued if isinstance(enqueued, int | float) else None
        updated = int(last[0][0].split(b"-")[0]) if isinstance(last, list) and last else None
        created = int(enqueued) if enqueued is not None else updated or int(time.time() * 1000)
        return created, max(created, updated or created)

    async def _follow(
        self, job_id: str, live: Mailbox, on_event: OnEvent | None, timeout: float | None,
        until_input: bool = False,
    ) -> JobResult:  # fmt: skip
        """Follow a job to its end and answer with its stored result, never the streamed text (which
        may have holes); on timeout, its state now."""
        transcript = Transcript(job_id)
        vanished = Vanished(job_id)
        try:
            async with asyncio.timeout(timeout):
                if on_event:  # the caller hears of its job at once (its id), not at its first event
                    await on_event(None, transcript)
                # (a ProgressRelay; hasattr, not a runtime Protocol check: 3.5-7 µs a call)
                holder = cast("Holder", on_event) if hasattr(on_event, "takes") else None
                async for event in follow_events(self.redis, transcript, live, holder):
                    if on_event:
                        await on_event(event, transcript)
                    if until_input and event is not None and event.type == "input_required":
                        snapshot = await self.get(job_id)  # (an old pause, replayed, is answered already)
                        if snapshot.status == "input_required":
                            return snapshot  # its record has the question: the caller answers
                    if event is None:  # quiet for a while: did the job end (or vanish) unseen?
                        snapshot = await self._recheck(job_id, vanished)
                        if snapshot is not None and snapshot.status in FINAL_STATUSES:
                            await self._catch_up(transcript, on_event)
                            return snapshot
                return await self._stored(transcript, vanished)
        except TimeoutError:
            return await self.get(job_id)

    async def _catch_up(self, transcript: Transcript, on_event: OnEvent | None) -> None:
        """Hand the caller the events it missed (live messages lost in a Redis outage) before the
        answer, so its joined progress is the whole answer, not a prefix of it."""
        if on_event is None:
            return
        with contextlib.suppress(RedisError, OSError):
            for event in (await replay(self.redis, transcript))[0]:
                await on_event(event, transcript)

    async def _stored(self, transcript: Transcript, vanished: Vanished) -> JobResult:
        """The stored result of a job whose last event came: arq writes it a moment after that event.
        Should it not come (the worker died first), the job re-runs and stores one later; meanwhile
        the job is re-checked every IDLE_SECONDS, so a job Redis lost is reported as lost."""
        job_id = transcript.job_id
        while True:
            raw = await self.results.wait(job_id, IDLE_SECONDS)
            if raw is not None:
                return stored_result(job_id, raw, transcript)
            snapshot = await self._recheck(job_id, vanished)
            if snapshot is not None and snapshot.status in FINAL_STATUSES:
                return snapshot

    async def _recheck(self, job_id: str, vanished: Vanished) -> JobResult | None:
        """The job's state, or None while Redis is away; raises JobLost once the job has been gone,
        with no live worker holding it, for LOST_AFTER_SECONDS."""
        try:
            snapshot = await self.get(job_id)
        except (RedisError, OSError):
            return None  # Redis is restarting; the hub resubscribes and we re-read the stream
        except JobNotFound:
            if vanished.for_seconds() >= LOST_AFTER_SECONDS:
                raise JobLost(job_id, await lost_message(self.redis, job_id, vanished.followed_at)) from None
            return None
        vanished.seen()
        return snapshot

    async def _cancel_queued(self, job_id: str, attempt: int) -> bool:
        """Atomically take a job that no worker holds off the queue and record it as cancelled, with
        its `cancelled` event. Tried again when its WATCH fails: the job changed meanwhile, or the
        connection dropped, maybe with the EXEC's reply on the way (redis-py sends no WATCHed MULTI
        again); a try that finds the job cancelled so (by itself or another replica) writes the event,
        once (publish_events), and answers True."""
        for _ in range(CANCEL_TRIES):
            try:
                cancelled = await self._cancel_queued_once(job_id, attempt)
            except WatchError:
                continue
            if cancelled is None:
                return False
            event = CancelledEvent(job_id=job_id, seq=0, attempt=cancelled, ts=time.time())
            try:
                await publish_events(self.redis, [event])
            except ResponseError as e:  # its stream key holds junk: the job is cancelled all the same
                log.warning("job %s: cancelled; its event not written: %s", job_id, damaged.refused(e))
            return True
        return False

    async def _cancel_queued_once(self, job_id: str, attempt: int) -> int | None:
        """One try of _cancel_queued: the attempt of the job's cancel (this try's, or one's before it
        whose reply was lost), or None when a worker holds the job or it is gone.

        Writing the in-progress key makes a worker that is about to claim the job fail its WATCH.
        """
        async with self.redis.pipeline(transaction=True) as pipe:
            await pipe.watch(keys.in_progress(job_id), keys.job(job_id))
            # held: by a worker, or for a second by a queued cancel that just ended it (its reply lost)
            if await pipe.exists(keys.in_progress(job_id)):  # (MGET: a result of another type reads as none)
                return _cancelled_queued((await pipe.mget(keys.result(job_id)))[0])
            raw_result, raw_job = await pipe.mget(keys.result(job_id), keys.job(job_id))  # (one round trip)
            if (before := _cancelled_queued(raw_result)) is not None:
                return before
            if raw_job is None:
                return None
            function, args, kwargs, _, enqueue_ms = deserialize_job_raw(raw_job, deserializer=deserialize)
            now_ms = int(time.time() * 1000)
            result = JobResult(job_id=job_id, status="cancelled", error=CANCELLED_QUEUED)
            data = serialize_result(
                function, args, kwargs, attempt, enqueue_ms, True, result.model_dump(mode="json"),
                now_ms, now_ms, f"{job_id}:{function}", keys.QUEUE, job_id=job_id, serializer=serialize,
            )  # fmt: skip
            pipe.multi()
            pipe.psetex(keys.in_progress(job_id), 1000, b"cancelled")
            pipe.zrem(keys.QUEUE, job_id)
            pipe.delete(keys.job(job_id), keys.retry(job_id))
            pipe.set(keys.result(job_id), data, ex=keys.KEEP_RESULT_SECONDS)
            approvals.forget(pipe, job_id)  # paused: its question goes unanswered
            pipe.hdel(keys.BUDGET_RESERVED, job_id)  # it will never run: give back its budget
            pipe.hdel(keys.BUDGET_RESERVED_TENANT, job_id)
            pipe.zrem(keys.BUDGET_RESERVED_UNTIL, job_id)
            for reply in await pipe.execute(raise_on_error=False):  # EXEC ran every write
                if isinstance(reply, ResponseError) and damaged.wrong_type(reply):
                    log.warning("job %s: cancelled; %s", job_id, damaged.refused(reply))
                elif isinstance(reply, BaseException):
                    raise reply
        return attempt


CANCEL_TRIES = 3  # a queued job's cancel's WATCH: a job that keeps changing is left to the abort path
CANCELLED_QUEUED = "cancelled before it started"


def _cancelled_queued(raw: bytes | None) -> int | None:
    """The attempt of a stored result that is a queued job's cancel (_cancel_queued's), else None."""
    if raw is None:
        return None
    try:
        info = deserialize_result(raw, deserializer=deserialize)
        ours = isinstance(info.result, dict) and info.result.get("error") == CANCELLED_QUEUED
        return info.job_try if ours and info.result.get("status") == "cancelled" else None
    except Exception:  # junk, or not arq's: not ours
        return None


RETRIABLE = frozenset({"failed", "cancelled"})


async def retry_job(jobs: JobClient, job_id: str, reader: str | None = None) -> str:
    """Queue a failed, cancelled or dead-lettered job's request again as a new job of the same
    tenant; answers the new id. The one retry behind the dashboard's button and `messenger retry`;
    `reader` as for get()."""
    job = await jobs.get(job_id, reader)
    if job.status not in RETRIABLE:
        raise InvalidRequest(f"job {job_id} is {job.status}: only a failed or cancelled job can be retried")
    stored = await read_job(jobs.redis, job_id)  # its result record and owner, read once
    try:
        function, args = await _queued_with(jobs.redis, job_id, stored.result)
        request = {"chat": ChatRequest, "call_tool": ToolCallRequest}[function].model_validate(args[0])
    except Exception:  # no result record, or one without a runnable request
        raise InvalidRequest(
            f"job {job_id}'s request is not kept in a form that can run again (see `messenger dead`)"
        ) from None
    owner = stored.owner or OPERATOR
    owner = owner if TENANT_NAME.fullmatch(owner) and owner != UNOWNED else reader or OPERATOR
    return await jobs.queue.submit(request, caller=owner)


async def _queued_with(redis, job_id: str, result: bytes | None) -> tuple[str, list]:
    """The function and arguments a job was queued with: from arq's result record (`result`, raw), or
    for a dead-lettered job (whose record keeps none) from its dead-letter entry, when kept whole."""
    if result is None:
        raise LookupError(job_id)
    info = deserialize_result(result, deserializer=deserialize)
    if info.args:
        return info.function, list(info.args)
    for entry in await dead_letter.list_dead(redis, keys.DEAD_LETTER_KEPT):
        if entry.job_id == job_id and not entry.raw_truncated:
            function, args, *_ = deserialize_job_raw(entry.raw.encode(), deserializer=deserialize)
            return function, list(args)
    raise LookupError(job_id)


async def _capacity_wait(redis, job_id: str) -> CapacityWait | None:
    """The capacity a running job waits for (worker/capacity.py writes it); junk reads as none."""
    try:
        raw = await redis.get(keys.capacity_waiting(job_id))
        return CapacityWait.model_validate_json(raw) if raw else None
    except (ResponseError, ValueError):  # another type, not JSON, or values no worker writes
        return None


def _pending(transcript: Transcript, status: JobStatus) -> JobResult:
    """A job not ended yet (or ended a moment ago with holes in its text: not an answer, wait on)."""
    snapshot = transcript.result()
    snapshot.status = status
    snapshot.finish_reason = snapshot.error = None
    return snapshot


class Vanished:
    """How long a followed job has been missing from Redis (keys, stream and worker heartbeats)."""

    def __init__(self, job_id: str):
        self.job_id = job_id
        self.followed_at = time.time()
        self.missing_since: float | None = None

    def seen(self) -> None:
        self.missing_since = None

    def for_seconds(self) -> float:
        now = time.monotonic()
        if self.missing_since is None:
            self.missing_since = now
        return now - self.missing_since


def _check_id(job_id: str) -> None:
    if not _JOB_ID.fullmatch(job_id):
        raise JobNotFound(job_id)
