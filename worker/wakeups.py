"""An arq Worker that is handed a job the moment it is enqueued, instead of polling for it.

A worker with free slots and an empty queue offers them (worker/claim.py); the messenger's enqueue
hands a new job to one such worker, leased, on the worker's own channel, and the worker starts it
from that message (shared/handoff.py). With no slot offered, the enqueue PUBLISHes on `mcpq:wakeup`
(as cancels do); each worker keeps one subscription to both channels and claims at once when a
wake-up arrives, or when one of its slots frees up. arq's poll (`poll_delay`) stays only as a slow
safety net, so an idle worker costs nothing.
Every claimed job is checked (worker/intake.py) before arq reads it; one that cannot run goes to the
dead-letter place, and nothing a queue entry does reaches the worker's main loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import math
import time
from typing import Any

from arq.constants import abort_job_max_age
from arq.cron import CronJob
from arq.jobs import serialize_result
from arq.utils import ms_to_datetime, timestamp_ms
from arq.worker import Function, JobExecutionFailed, RetryJob, Worker
from arq.worker import Retry as RetryLater  # a job asking to run again later (not redis-py's Retry)
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    NoPermissionError,
    NoScriptError,
    RedisError,
    ResponseError,
)

from shared import damaged, dead_letter, handoff, keys, turns
from shared.connection import (
    CLAIM,
    STUCK_SECONDS,
    connect,
    failed_within,
    note_failure,
    probe_access,
    redacted,
    subscribe_forever,
    tls_refusal,
)
from shared.errors import McpQueueError, QueueUnavailable, SettingsError
from shared.events import CancelledEvent, ErrorEvent, publish_events
from shared.sentinel import UnknownMaster
from shared.serializer import serialize_plain
from shared.settings import Settings
from worker import accounting, pause
from worker.claim import Claimed, claim_jobs, give_back, still_handed
from worker.deadlines import Deadlines
from worker.endings import Ending, Endings, end_one, ending
from worker.heartbeat import beat_interval, renew_leases
from worker.intake import VALIDATED, job_id_problem, read_job
from worker.publisher import why_not_written

log = logging.getLogger("worker")
arq_log = logging.getLogger("arq.worker")  # the lines arq's own run_job logs, under its name
NO_RESULT = object()  # arq's `no_result`: a job handed back to the queue stores nothing


STARTUP_BACKOFF = (0.5, 5.0)  # seconds: first and longest wait between start-up checks of Redis


async def redis_ready(settings: Settings) -> None:
    """Wait until Redis answers the commands a worker needs. A refusal that waiting cannot fix (the
    password or user, a missing permission, a command this server lacks, a TLS certificate) raises, so
    the `worker` exits with one line; a Redis not reachable yet is retried, one log line a step."""
    if settings.embedded:
        return
    wait = STARTUP_BACKOFF[0]
    while True:
        client = connect(
            settings.redis_url, socket_connect_timeout=5, socket_timeout=5, retry=Retry(NoBackoff(), 0)
        )
        try:
            await client.ping()
            await probe_access(client)
            await claim_jobs(
                client, queue=keys.QUEUE, abort_set=keys.ABORT_SET, idle=keys.IDLE_WORKERS, mine=keys.claim("probe"),
                now_ms=0, lease_ms=1, unreported=0, scan=0, offering=False, trust_offers=False, reset=False, me="",
                retry_ttl=keys.RETRY_KEPT_SECONDS, mine_ttl=1, lease_prefix=keys.IN_PROGRESS_PREFIX, job_prefix=keys.JOB_PREFIX,
                retry_prefix=keys.RETRY_PREFIX, owner_prefix=keys.OWNER_PREFIX, running_ids="", candidates=[],
            )  # fmt: skip
            return
        except UnknownMaster as e:
            raise QueueUnavailable(str(e)) from None
        except (AuthenticationError, AuthorizationError) as e:
            raise QueueUnavailable(
                f"Redis at {redacted(settings.redis_url)} refused the user or password in REDIS_URL ({type(e).__name__})"
            ) from None
        except NoPermissionError as e:
            raise QueueUnavailable(damaged.refused(e)) from None
        except ResponseError as e:
            if not str(e).lower().startswith("unknown command"):
                raise QueueUnavailable(f"Redis refused the worker's start-up check: {str(e)[:200]}") from None
            raise QueueUnavailable(
                f"the server at {redacted(settings.redis_url)} lacks a command the worker needs ({str(e)[:120]}); "
                "it needs Redis 6.2 or later with scripting, streams and pub/sub"
            ) from None
        except (RedisError, OSError) as e:
            if (refused := tls_refusal(e, settings.redis_url)) is not None:
                raise SettingsError(refused) from None  # a certificate does not get better by waiting
            log.warning(
                "Redis at %s is not reachable yet (%s); retrying in %.1fs",
                redacted(settings.redis_url), _why(e), wait,
            )  # fmt: skip
        finally:
            await client.aclose()
        await asyncio.sleep(wait)
        wait = min(wait * 2, STARTUP_BACKOFF[1])


def _why(e: BaseException) -> str:
    """The error's type; with Sentinel, also which case it is (none answered, or the primary is down)."""
    return f"{type(e).__name__}: {e}" if isinstance(e, MasterNotFoundError) else type(e).__name__


# (why_not_written's wrong type names the job's stream: an event write's only key, not the ending's)
_ending_refused = (
    "a key the ending writes holds another type: the job's lease, result, retry counter or value, "
    f"{keys.ABORT_SET} or {keys.QUEUE} (damaged or written by hand?)"
)


class QueueWorker(Worker):
    """arq's Worker with a hand-off and a wake-up path; keys, retries and aborts stay arq's.

    A job handed to this worker starts from its message, with no round trip. A wake-up message
    carries a job's id, so a worker with a free slot claims that job directly (one script call)
    instead of scanning the queue; a freed slot claims from the head of the queue, or offers itself
    when nothing waits (one script call too: a backlog drains lowest score first without a poll per
    job); every other message, or a second without a full poll, runs arq's full poll (queue scan,
    aborts, health). Every free slot is this worker's own or offered (`_own_slots`, `_offered`):
    one that is neither belongs to a job handed to it and not yet received.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.in_progress_timeout_s = self.ctx["settings"].worker_lease_seconds  # the heartbeat renews it
        self._wake = asyncio.Event()
        self._woken: list[bytes] = []  # job ids as published
        self._full_poll_due = True
        self._slot_freed = False
        self._refused = False
        self._endings: Endings | None = None  # made on the first ending, on the worker's pool
        self._own_slots = self.max_jobs  # free slots not offered (shared/handoff.py)
        self._offered = 0  # free slots offered in mcpq:workers:idle, as the last claim left them
        self._reset = True  # (re)subscribed: what we offered before may be gone; start afresh
        self._retake = False  # (re)subscribed: a job handed to us meanwhile was never heard (claim.py)
        # a job both handed to us and retaken (its hand-off published just before the retake's script)
        # runs once, even when its first start has ended by the second: the jobs started since the
        # (re)subscribe, kept until the retake is answered (None: no retake due), and those it retook
        self._heard: set[str] | None = None
        self._retaken: set[str] = set()
        self._me = ""  # our member of mcpq:workers:idle (shared.handoff.offer), known once started
        self._handed = 0  # hand-offs received
        self._missing_since: int | None = None  # _handed when slots were last seen missing (a poll)
        self._errands: set[asyncio.Task] = set()  # hand-offs given back or dead-lettered, held until done
        self._claimer = None  # the connection claims go on (shared.connection.CLAIM), made in main()
        self._claims = itertools.count()  # each claim's own key (keys.claim): a claim sent again knows it
        self._heartless: str | None = None  # why the heartbeat stopped while we run: main() ends with it
        self._abort_set_junk = False  # arq:abort holds another type (said once)
        # arq's job timeout, the backstop (the job enforces its own, worker/job.py): one timer for all
        # running jobs, where an asyncio.timeout a job was a timer of its own to set and cancel
        self._deadlines = Deadlines()

    async def main(self) -> None:
        self.ctx["redis"] = self.pool
        try:
            await redis_ready(self.ctx["settings"])
        except McpQueueError:
            self._refused = True  # close() must not hide why with an error of its own
            raise
        if self.on_startup:
            await self.on_startup(self.ctx)
        self._me = handoff.offer(self._worker_id(), int(self.in_progress_timeout_s * 1000))
        if (beating := self.ctx.get("heartbeat")) is not None:
            beating.add_done_callback(self._heart_stopped)
        self._claimer = connect(self.ctx["settings"].redis_url, CLAIM)
        listener = asyncio.create_task(self._listen_for_wakeups())
        loop = asyncio.get_running_loop()
        last_poll = 0.0
        try:
            while True:
                if self._heartless is not None:
                    raise RuntimeError(self._heartless)
                self._wake.clear()
                woken, self._woken = self._woken, []
                freed, self._slot_freed = self._slot_freed and not self.burst, False
                try:
                    if (
                        (woken or freed)
                        and not self._full_poll_due
                        and loop.time() - last_poll < self.poll_delay_s
                    ):
                        if self.allow_pick_jobs:
                            # (woken ids too: the scan reads them, so it cannot skip the queue then)
                            await (
                                self.claim_queued(not woken)
                                if freed
                                else self._claim(await self._job_ids(woken))
                            )
                    else:
                        self._full_poll_due = False
                        last_poll = loop.time()
                        await self._poll_iteration()
                        if self.burst and await self._burst_done():
                            return
                    if not self.allow_pick_jobs and self._offered:
                        await self._withdraw()  # stopping: hand-offs come back to the queue from now on
                except (RedisError, OSError) as e:  # Redis away: keep the jobs we hold, try again
                    log.warning(
                        "queue poll failed (%s); retrying in %.1fs", type(e).__name__, self.poll_delay_s
                    )
                    self._full_poll_due = True
                    note_failure()  # (_claim waits: leases may have lapsed while Redis was away)
                    await asyncio.sleep(self.poll_delay_s)
                    continue
                if not (self._woken or self._slot_freed or self._full_poll_due):
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.poll_delay_s):  # (3.11's wait_for can lose a cancel)
                            await self._wake.wait()
        finally:
            listener.cancel()

    def _worker_id(self) -> str:
        return self.ctx["mcpq"].worker_id  # (set by on_startup: worker/runner.py)

    def _heart_stopped(self, beating: asyncio.Task) -> None:
        """The heartbeat task ended while the worker runs (a stray cancellation, which its `except
        Exception` lets through; a bug): nothing renews our leases or looks at them any more, so an
        event write that waits for a look would wait for ever, and every job we hold lapses to another
        worker. Say so, stop our runs (they store nothing: another worker runs each job once its lease
        lapses), take no more jobs, and end main() with the reason. (Shutdown takes it out of ctx first.)"""
        if self.ctx.get("heartbeat") is not beating:
            return
        why = "cancelled" if beating.cancelled() else repr(beating.exception())
        self._heartless = (
            f"the heartbeat stopped ({why}): this worker cannot keep its jobs' leases; restart it"
        )
        log.error(
            "%s; its runs are stopped (another worker runs their jobs) and it takes no more jobs",
            self._heartless,
        )
        self.allow_pick_jobs = False
        self.ctx["mcpq"].heart_stopped()
        self._wake.set()

    async def start_jobs(self, job_ids: list) -> None:
        """arq's poll: the head of the queue (as the script reads it, which may offer what is left)."""
        self._find_lost_slots()
        await self._claim([], scan=self.queue_read_limit)

    def _find_lost_slots(self) -> None:
        """A slot neither running, our own nor offered belongs to a hand-off on its way; one that has
        not come in a whole poll interval never will (the offer went with a flushed Redis, the message
        with a dropped connection): then start afresh, or the slot is lost for good."""
        missing = self.max_jobs - self.job_counter - self._own_slots - self._offered
        if missing > 0 and self._missing_since == self._handed:
            self._reset = True
        self._missing_since = self._handed if missing > 0 else None

    async def claim_queued(self, trust_offers: bool = True) -> None:
        """A slot is free: the jobs at the head of the queue, as arq's poll would pick them; none
        read while some worker offers slots (nothing waits then, unless we were just woken for
        one): the slot is offered."""
        await self._claim([], scan=self.queue_read_limit, trust_offers=trust_offers)

    async def _claim(self, candidates: list[bytes], scan: int = 0, *, trust_offers: bool = False) -> None:
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
        reset = self._reset
        if reset:  # what we offered may be gone: our free slots are all our own again
            self._own_slots = self.max_jobs - self.job_counter
        own = self._own_slots
        if not (own or self._offered or reset) or not (candidates or scan):
            return
        if failed_within(2 * beat_interval(self.in_progress_timeout_s)):
            # Redis was away just now (a claim never rides it out: shared.connection.CLAIM): the
            # leases of running jobs may have lapsed meanwhile, so their live holders renew theirs
            # first; the safety poll looks again
            return
        if self._stalled() and self.ctx["mcpq"].running:
            # stalled past a lease (stopped, loop blocked): a job we run may have lapsed, and a claim
            # now would start it again beside our run (same lease value: our heartbeat would not tell);
            # the heartbeat takes its lease back first (worker/heartbeat.py), the safety poll looks again
            return
        retake = self._retake and scan > 0  # (a scan finds them)
        self._reset, self._retake = False, self._retake and not retake
        try:
            claimed = await claim_jobs(
                self._claimer or self.pool, queue=self.queue_name, abort_set=keys.ABORT_SET, idle=keys.IDLE_WORKERS,
                mine=keys.claim(f"{self._worker_id()}:{next(self._claims)}"),
                now_ms=int(time.time() * 1000), lease_ms=int(self.in_progress_timeout_s * 1000), unreported=own,
                scan=scan, offering=not self.burst, trust_offers=trust_offers, reset=reset, me=self._me,
                retry_ttl=keys.RETRY_KEPT_SECONDS, mine_ttl=keys.CLAIM_KEPT_SECONDS, lease_prefix=keys.IN_PROGRESS_PREFIX, job_prefix=keys.JOB_PREFIX,
                retry_prefix=keys.RETRY_PREFIX, owner_prefix=keys.OWNER_PREFIX,
                running_ids=json.dumps(list(self.tasks)) if retake else "", candidates=candidates,
            )  # fmt: skip
        except BaseException:
            self._reset, self._retake = self._reset or reset, self._retake or retake
            raise
        self._own_slots -= own - int(claimed[0])
        self._offered = int(claimed[1])
        for job in Claimed.batch(claimed[2:]):
            problem, details, value = self._problem(job)
            if problem is None:
                self._start(job, value, retaken=retake)
            else:  # in order: what was queued before a job is dead-lettered before it starts
                await self._bury(job.raw_id, job.raw_job, problem, **details)
                self._slot_free()
        if retake and not self._retake:
            self._heard = None

    def _start(
        self, job: Claimed, value: dict | None, *, retaken: bool = False, handed: bool = False
    ) -> None:
        """Run a job leased for this worker (`value`: its job value, read by `_problem`) in a slot of its
        own; one it has no slot for (more was handed to it than it offered, after a lost offer; or it is
        stopping) goes back to the queue; one it runs already (handed over again on the new connection
        of a stuck subscription, and retaken by the claim after it) is run once."""
        job_id = job.raw_id.decode(errors="backslashreplace")
        if (running := self.tasks.get(job_id)) is not None and not running.done():
            return self._slot_free()
        if (retaken and self._heard is not None and job_id in self._heard) or (
            handed and job_id in self._retaken
        ):
            self._retaken.discard(job_id)  # started once already since the (re)subscribe (it may have ended)
            return self._slot_free()
        if self.job_counter >= self.max_jobs or not self.allow_pick_jobs:
            return self._errand(self._give_back(job))
        if self._heard is not None:
            self._heard.add(job_id)
        if retaken:
            self._retaken.add(job_id)
        self.job_counter += 1
        task = self.loop.create_task(self._begin(job, job_id, value))
        task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
        self.tasks[job_id] = task

    def _errand(self, coroutine) -> None:
        task = self.loop.create_task(coroutine)
        self._errands.add(task)
        task.add_done_callback(self._errands.discard)

    async def _begin(self, job: Claimed, job_id: str, value: dict | None) -> None:
        await self.sem.acquire()  # never waits: job_counter counted this slot
        due = float(job.score)
        # a turn (shared/turns.py) is not a time: arq would log it as a delay of decades
        due = due if math.isfinite(due) and not turns.is_turn(due) else time.time() * 1000
        await self.run_claimed(job, job_id, int(due), value)

    async def _give_back(self, job: Claimed) -> None:
        job_id = job.raw_id.decode(errors="replace")
        try:
            await give_back(
                self.pool, lease=keys.in_progress(job_id), retry=keys.retry(job_id), wakeup=keys.WAKEUP_CHANNEL,
                job_id=job_id,
            )  # fmt: skip
        except (RedisError, OSError) as e:
            log.warning(
                "job %s: could not hand it back (%s); its lease lapses and a poll finds it",
                job_id,
                type(e).__name__,
            )

    def _stalled(self) -> bool:
        """The heartbeat has not renewed our leases for a whole lease (this process was stopped, its
        loop blocked, or Redis away): a hand-off read now may be older than its lease."""
        return self.ctx["mcpq"].stale()

    async def _start_if_still_handed(self, job: Claimed, value: dict | None) -> None:
        """Start a job handed over while we were stalled only if no other start took it meanwhile (its
        lease lapsed, a poll ran it, maybe to its end): it must not run twice."""
        job_id = job.raw_id.decode(errors="replace")
        try:
            held = await still_handed(
                self.pool, lease=keys.in_progress(job_id), retry=keys.retry(job_id), queue=self.queue_name,
                job_id=job_id, tries=str(job.job_try), lease_ms=int(self.in_progress_timeout_s * 1000), me=self._me,
            )  # fmt: skip
        except (RedisError, OSError):
            held = 0  # its lease lapses and a poll finds it
        if held:
            return self._start(job, value)
        log.info("job %s: handed over while this worker was stalled; another start has it", job_id)
        self._slot_free()

    async def _withdraw(self) -> None:
        """Take back the slots we offer: a job handed to us from now on goes back to the queue."""
        self._offered = 0
        await self.pool.zrem(keys.IDLE_WORKERS, self._me)

    def handle_sig_wait_for_completion(self, signum) -> None:
        super().handle_sig_wait_for_completion(signum)
        self._wake.set()  # withdraw our offer now, not at the next poll

    async def _job_ids(self, raw_ids: list) -> list[bytes]:
        """The ids worth claiming; a queue member that can never be a job id is dead-lettered."""
        candidates = []
        for raw_id in raw_ids:
            raw_id = raw_id.encode() if isinstance(raw_id, str) else raw_id
            problem = job_id_problem(raw_id)
            if problem is None:
                candidates.append(raw_id)
            elif await self.pool.zscore(self.queue_name, raw_id) is not None:
                await self._bury(raw_id, None, problem)
            else:  # a wake-up message pushed by hand: nothing to run, nothing to keep
                log.warning("ignoring a wake-up that is not a job id: %.100r", raw_id)
        return candidates

    def _problem(self, job: Claimed) -> tuple[str | None, dict, dict | None]:
        """Why a leased job cannot run (None: it can), what its dead-letter entry says of it, and its
        job value read (None unless it can run)."""
        if (problem := job_id_problem(job.raw_id)) is not None:  # a queue member read by the scan
            return problem, {}, None
        if job.note:
            log.warning("job %s: its retry counter was reset (%s)", job.raw_id.decode(), job.note)
        problem, function, value = read_job(job.raw_job, self.functions.keys())
        return problem, {"function": function, "attempt": job.job_try}, value

    async def _bury_handed(self, job: Claimed, problem: str, details: dict) -> None:
        await self._bury(job.raw_id, job.raw_job, problem, **details)
        self._slot_free()

    def _slot_free(self) -> None:
        self._own_slots += 1
        self._slot_freed = True  # look for queued work now (or offer the slot), not at the next poll
        self._wake.set()

    async def _bury(self, raw_id: bytes, raw_job: bytes | None, problem: str, **details) -> None:
        shown = raw_id.decode(errors="backslashreplace")
        try:
            if await dead_letter.bury(self.pool, raw_id, raw_job, problem, **details):
                log.warning("dead-lettered queue entry %.100s: %s", shown, problem)
        except (RedisError, OSError) as e:  # its lease lapses and the next claim tries again
            log.warning("could not dead-letter queue entry %.100s (%s)", shown, type(e).__name__)

    async def run_claimed(self, job: Claimed, job_id: str, score: int, value: dict | None) -> None:
        """Run a claimed job, with nothing it raises reaching the main loop (which would stop the worker)."""
        try:
            await self._run_claimed(job, job_id, score, value)
        except (RedisError, OSError) as e:  # Redis went away around the job: its lease lapses, it runs again
            # (never str(e): a pipeline's error quotes its commands, the job's result among them)
            log.warning(
                "job %s: its ending was not stored (%s); it will run again",
                job_id,
                _ending_refused
                if isinstance(e, ResponseError) and "WRONGTYPE" in str(e)
                else why_not_written(e, job_id)[0],
            )
        except Exception:
            log.exception("job %s: arq failed around the job; it will run again", job_id)

    async def _run_claimed(self, job: Claimed, job_id: str, score: int, value: dict | None) -> None:
        """arq 0.28's `run_job` from where its pipeline has read the job (the claim read it, and
        intake.py checked it and read its `value`): the same abort, retry and timeout rules, counters
        and stored result."""
        d = value if value is not None else self.job_deserializer(job.raw_job)  # type: ignore[misc]
        name, args, kwargs, job_try, enqueued_ms = d["f"], tuple(d["a"]), d["k"], job.job_try, d["et"]
        function = self.functions[name]
        ref = f"{job_id}:{name}"
        ending = functools.partial(self._ending, job_id, ref, function, args, kwargs, enqueued_ms)
        if job.aborted:
            arq_log.info("%6.2fs ⊘ %s aborted before start", (timestamp_ms() - enqueued_ms) / 1000, ref)
            self.jobs_failed += 1
            start_ms = timestamp_ms()
            await self._ended_unrun(job_id, job_try, None)
            return await ending(job_try, start_ms, failed=asyncio.CancelledError())
        if d["t"] and d["t"] > job_try:  # enqueued as a later try than its counter says
            job_try = d["t"]
            await self.pool.setex(keys.retry(job_id), keys.RETRY_KEPT_SECONDS, str(job_try))
        max_tries = self.max_tries if function.max_tries is None else function.max_tries
        if job_try > max_tries:
            arq_log.warning(
                "%6.2fs ! %s max retries %d exceeded", (timestamp_ms() - enqueued_ms) / 1000, ref, max_tries
            )
            self.jobs_failed += 1
            start_ms = timestamp_ms()
            why = f"max {max_tries} retries exceeded"
            await self._ended_unrun(
                job_id,
                job_try,
                f"{why}: started {max_tries} times, it never ended (its workers died or stopped under it)",
            )
            return await ending(job_try, start_ms, failed=JobExecutionFailed(why))
        # (run from _begin: this task is the job's, as _start made it; asyncio.current_task is ~0.3 µs)
        task = self.tasks.get(job_id) or asyncio.current_task()
        assert task is not None
        ctx = {**self.ctx, "job_id": job_id, "job_try": job_try, "enqueue_time": ms_to_datetime(enqueued_ms),
               "score": score, "owner": job.owner, "ending": {}, "task": task, VALIDATED: d.get(VALIDATED)}  # fmt: skip
        if arq_log.isEnabledFor(logging.INFO):
            # said once the job's start event has gone out (a timer runs after the callbacks already
            # due: the job's first steps and its event write): a log line costs a cold worker about
            # 0.2 ms. The arguments hold a prompt: shared.logs drops them, so they are not formatted.
            self.loop.call_later(0, functools.partial(arq_log.info, "%6.2fs → %s(%s)%s",
                (timestamp_ms() - enqueued_ms) / 1000, ref, "…", f" try={job_try}" if job_try > 1 else ""))  # fmt: skip
        start_ms = timestamp_ms()
        # the function runs in this task (arq starts a task of its own: one more event-loop turn before
        # the job starts); an abort cancels this task, which the function sees as arq's would
        self.job_tasks[job_id] = task  # type: ignore[assignment]
        timeout_s = self.job_timeout_s if function.timeout_s is None else function.timeout_s
        aborted = False
        try:
            try:  # (arq's timeout, as asyncio.timeout's)
                result = await self._deadlines.within(
                    task, timeout_s, function.coroutine(ctx, *args, **kwargs)
                )
            finally:
                del self.job_tasks[job_id]
                # (a user's cancel mostly ends here: `chat` takes its CancelledError and returns the
                # 'cancelled' ending, so _outcome never sees it: the id went nowhere, one a cancel)
                aborted = job_id in self.aborting_tasks
                self.aborting_tasks.discard(job_id)
        except (Exception, asyncio.CancelledError) as e:
            await ending(job_try, start_ms, *self._outcome(ref, e, score, start_ms, aborted=aborted))
        else:
            self.jobs_complete += 1
            await ending(job_try, start_ms, result, success=True, count=ctx["ending"].get("count"))

    def _outcome(self, ref: str, e: BaseException, score: int, start_ms: int, *, aborted: bool) -> tuple:
        """arq's reading of a job that raised: (result to store or NO_RESULT, finish it?, retry delay)."""
        t = (timestamp_ms() - start_ms) / 1000
        if self.retry_jobs and isinstance(e, RetryLater):
            arq_log.info("%6.2fs ↻ %s retrying job in %0.2fs", t, ref, (e.defer_score or 0) / 1000)
            self.jobs_retried += 1
            return NO_RESULT, False, e.defer_score and e.defer_score + (timestamp_ms() - score)
        if aborted and isinstance(e, asyncio.CancelledError):
            arq_log.info("%6.2fs ⊘ %s aborted", t, ref)
            self.jobs_failed += 1
            return e, True, None
        if self.retry_jobs and isinstance(e, asyncio.CancelledError | RetryJob):
            arq_log.info("%6.2fs ↻ %s cancelled, will be run again", t, ref)
            self.jobs_retried += 1
            return NO_RESULT, False, None
        arq_log.exception("%6.2fs ! %s failed, %s: %s", t, ref, type(e).__name__, e)
        self.jobs_failed += 1
        return e, True, None

    async def _ended_unrun(self, job_id: str, job_try: int, error: str | None) -> None:
        """The terminal event of a job ended before it ran (aborted, or out of tries; `error`: None for
        cancelled), written before its result as a run's is: every job ends with one, and a follower
        hears it now, not at its idle re-check."""
        fields: dict[str, Any] = {"job_id": job_id, "seq": 0, "attempt": job_try, "ts": time.time()}
        event = CancelledEvent(**fields) if error is None else ErrorEvent(**fields, error=error)
        try:
            await publish_events(self.pool, [event])
        except ResponseError as e:  # its stream key holds junk: the job ends all the same, now (the
            # next claim would find the same junk)
            log.warning("job %s: its %s event not written: %s", job_id, event.type, damaged.refused(e))

    async def _ending(
        self, job_id: str, ref: str, function: Function | CronJob, args: tuple, kwargs: dict, enqueued_ms: int, job_try: int,
        start_ms: int, result=NO_RESULT, finish: bool = True, incr_score: int | None = None, *,
        success: bool = False, failed: BaseException | None = None, count: dict | None = None,
    ) -> None:  # fmt: skip
        """Store how the job ended as arq would (a job that failed before it ran: `failed`), with
        its usage `count` (worker/run.py) when it made one."""
        result = failed if failed is not None else result
        result_data = None
        forever = (
            self.keep_result_forever if function.keep_result_forever is None else function.keep_result_forever
        )
        keep_s = self.keep_result_s if function.keep_result_s is None else function.keep_result_s
        if result is not NO_RESULT and (forever or keep_s > 0):
            result_data = serialize_result(
                function.name, args, kwargs, job_try, enqueued_ms, success, result, start_ms, timestamp_ms(), ref,
                self.queue_name, job_id=job_id, serializer=serialize_plain,
            )  # fmt: skip
        if failed is not None:
            return await asyncio.shield(self.finish_failed_job(job_id, result_data))
        if self._at_once(job_id):  # (no task, as asyncio.shield makes: the write's future alone)
            return await self._store_ending(
                job_id, finish, result_data, None if forever else keep_s, incr_score, count, job_try
            )
        await asyncio.shield(
            self.finish_job(
                job_id, finish, result_data, keep_s, forever, incr_score, None, count=count, attempt=job_try
            )
        )

    async def _cancel_aborted_jobs(self) -> None:
        """arq's abort poll, minus its crash on an `arq:abort` member that is not text, and with an
        `arq:abort` of another type said once, not failing every poll (the rest of it claims)."""
        try:
            async with self.pool.pipeline(transaction=True) as pipe:
                pipe.zrange(keys.ABORT_SET, start=0, end=-1)
                pipe.zremrangebyscore(
                    keys.ABORT_SET, min=timestamp_ms() + abort_job_max_age, max=float("inf")
                )
                abort_job_ids, _ = await pipe.execute()
        except ResponseError as e:
            if "WRONGTYPE" not in str(e):
                raise
            if not self._abort_set_junk:
                log.warning(
                    "%s; running jobs cannot be cancelled until it is deleted",
                    damaged.wrong_type_message(keys.ABORT_SET),
                )
            self._abort_set_junk = True
            return
        self._abort_set_junk = False
        # the abort stays in the set until the job's ending is stored (worker/endings.py): an ending that
        # fails (Redis away) leaves the job to a later claim, which must see the abort too, not run it
        for raw_id in abort_job_ids:
            job_id = raw_id.decode(errors="replace")
            task = self.job_tasks.get(job_id)
            if task is not None and job_id not in self.aborting_tasks:  # (once: not its cancel's ending)
                self.aborting_tasks.add(job_id)
                task.cancel()

    async def close(self) -> None:
        if self._claimer is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._claimer.aclose()
        if self._offered and self._pool is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._withdraw()  # (without it too, the enqueue sees no subscriber and drops the offer)
        if not self._refused:
            return await super().close()
        # refused at start-up: nothing started, and arq's clean-up write would only be refused (or,
        # for a TLS certificate, retried for seconds) again
        if self._pool is not None:
            with contextlib.suppress(RedisError, OSError):
                await self.pool.aclose()
            self._pool = None

    async def finish_job(
        self, job_id: str, finish: bool, result_data: bytes | None, result_timeout_s: float | None,
        keep_result_forever: bool, incr_score: int | None, keep_in_progress: float | None,
        *, count: dict | None = None, attempt: int | None = None,
    ) -> None:  # fmt: skip
        """arq's, except that a job's first stored ending stays its only one: a result is written
        only if none is there (an attempt that overlapped another after a Redis outage cannot
        overwrite the answer a caller may already have read); and a job that paused for its
        caller's answer has no ending yet: it is parked (worker/pause.py), nothing stored; and a run
        whose job another worker took stores nothing, checked in the ending's own script (between a
        check and the MULTI, another worker could take it: worker/endings.py `end_jobs`). The job's
        usage `count` (worker/run.py), when it made one, goes first in the same MULTI, which the jobs
        that end meanwhile share, under the same check. `attempt`: the run's start number (a
        hand-back sent again after this worker started the job again leaves that start's run be)."""
        state = self.ctx.get("mcpq")
        if state is not None and await self._taken(state, job_id):
            return
        if state is not None and (how := state.paused.pop(job_id, None)) is not None:
            if await pause.park(self.pool, job_id, how, state.settings, self._me) < 0:
                self._stopped(state, job_id)  # taken between our check and the park: nothing parked
            return
        await self._store_ending(job_id, finish, result_data, None if keep_result_forever else result_timeout_s,
                                 incr_score, count, attempt)  # fmt: skip

    def _at_once(self, job_id: str) -> bool:
        """finish_job's checks before its write all pass without a pause: the job is not another
        worker's, not paused, and our leases are not stale (the usual ending)."""
        state = self.ctx.get("mcpq")
        return state is None or not (job_id in state.taken or job_id in state.paused or self._stalled())

    def _store_ending(
        self, job_id: str, finish: bool, result_data: bytes | None, expire: float | None, incr_score: int | None,
        count: dict | None, attempt: int | None,
    ) -> asyncio.Future[None]:  # fmt: skip
        """The job's ending in the next endings MULTI (its `count` first, see run.py), and what follows
        from its reply, without a task of its own: done once all of it is. The usual ending's
        follow-up runs in the write's callback; a rare one (a lost script cache, a hand-back's wake-up)
        goes on in a task. A cancel of whoever awaits it stops none of it (as asyncio.shield's task did)."""
        count = count if finish else None
        if count is not None:  # counted only while the job is ours (worker/accounting.py)
            count = {**count, "holder": self._me}  # (its lease, result and record: BATCH_LUA names them)
        one = ending(job_id, me=self._me, finish=finish, result_data=result_data, incr_score=incr_score,
                     px=None if expire is None else int(expire * 1000), tries=attempt)  # fmt: skip
        if self._endings is None:
            self._endings = Endings(self.pool, self.queue_name, accounting.command)
        done = self.loop.create_future()
        write = self._endings.store(one, count)
        write.add_done_callback(functools.partial(self._ending_stored, one, count, done))
        return done

    def _ending_stored(
        self, one: Ending, count: dict | None, done: asyncio.Future[None], write: asyncio.Future
    ) -> None:
        try:
            counted, stored = write.result()
            if isinstance(stored, BaseException) and not isinstance(stored, NoScriptError):
                raise stored  # as arq's MULTI would
            if isinstance(counted, NoScriptError) or isinstance(stored, NoScriptError) or one.finish != "1":
                return self._errand(self._ending_followed(one, count, counted, stored, done))
            if count is not None:
                accounting.heard(count, counted)
            if not stored:  # another worker took the job between our check and the write: nothing stored
                self._stopped(self.ctx.get("mcpq"), one.job_id)
        except BaseException as e:  # (the whole write failed, or this job's ending)
            if not done.done():
                done.set_exception(e)
            return
        if not done.done():
            done.set_result(None)

    async def _ending_followed(
        self, one: Ending, count: dict | None, counted: object, stored: object, done: asyncio.Future[None]
    ) -> None:
        """The rest of an ending whose reply asks for a round trip more."""
        try:
            if count is not None:
                await accounting.recorded(self.pool, count, counted)
            if isinstance(stored, NoScriptError):  # Redis lost its scripts (restarted, flushed): the
                stored = await end_one(self.pool, self.queue_name, one)  # usual way, after the count
                if isinstance(stored, BaseException):
                    raise stored
            if not stored:  # another worker took the job between our check and the write: nothing stored
                self._stopped(self.ctx.get("mcpq"), one.job_id)
            elif (
                one.finish != "1"
            ):  # handed back (shutdown): let an idle worker take it now, not at its next poll
                with contextlib.suppress(RedisError, OSError):
                    await self.pool.publish(keys.WAKEUP_CHANNEL, one.job_id)
        except BaseException as e:  # (told to whoever awaits the ending, not left in this task)
            if not done.done():
                done.set_exception(e)
            return
        if not done.done():
            done.set_result(None)

    async def _taken(self, state, job_id: str) -> bool:
        """Another worker took this job while we were stalled past its lease: our run stores nothing
        (no result, no lease or queue entry of the other run's touched). Checked at the ending too when
        the heartbeat has not renewed our leases since (a run that ends before the heartbeat sees it)."""
        if job_id not in state.taken and self._stalled():
            if await renew_leases(self.pool, state, [job_id]):
                state.taken.add(job_id)
        if job_id not in state.taken:
            return False
        self._stopped(state, job_id)
        return True

    @staticmethod
    def _stopped(state, job_id: str) -> None:
        if state is not None:
            state.writer.lose(job_id)  # (once it is not `taken`, a write would let its events through)
            state.taken.discard(job_id)
            state.paused.pop(job_id, None)
        log.warning("job %s: this worker's run of it stopped; its ending is the other worker's", job_id)

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        """arq's (a job that expired, could not be read, or ran out of tries), with the same rule."""
        await self.finish_job(
            job_id, True, result_data, self.keep_result_s, self.keep_result_forever, None, None
        )

    async def _burst_done(self) -> bool:
        if 0 <= self.max_burst_jobs <= self._jobs_started() or await self.pool.zcard(self.queue_name) == 0:
            await asyncio.gather(*self.tasks.values())
            return True
        return False

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        self._slot_free()

    async def _listen_for_wakeups(self) -> None:
        def subscribed() -> None:
            self._full_poll_due = True  # anything enqueued while we were not listening
            self._reset = True  # and what was handed to us meanwhile is gone: offer afresh, and
            self._retake = True  # start those jobs now, not once their leases lapse
            self._heard, self._retaken = set(), set()
            self._wake.set()

        def woken(data: bytes) -> None:
            if data == b"cancel":
                self._full_poll_due = True  # arq's poll handles aborts
            elif data == b"config":
                self.ctx["mcpq"].defaults_read_at = float("-inf")  # configure_ai_model: re-read
                return
            elif self._own_slots or self._offered or self._reset:
                self._woken.append(data)
            else:
                return  # every slot busy: a freed one looks at the queue anyway
            self._wake.set()

        def handed(data: bytes) -> None:
            self._handed += 1
            try:
                job = Claimed.from_message(data)
            except ValueError as e:  # published by hand: nothing leased, nothing to run
                log.warning("ignoring a hand-off message: %s: %.100r", e, data)
                return
            problem, details, value = self._problem(job)
            if problem is None and self._stalled():  # read late: the job may be another start's by now
                return self._errand(self._start_if_still_handed(job, value))
            if problem is None:
                return self._start(job, value, handed=True)
            self._errand(self._bury_handed(job, problem, details))

        async def stuck() -> None:
            # Redis still counts the stuck connection as our subscriber, so the enqueue would go on
            # handing jobs into it: our offer is taken back until subscribed() offers afresh (a job
            # enqueued meanwhile waits in the queue for the full poll that follows)
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(STUCK_SECONDS):  # (the pool's connection may be frozen too)
                    await self._withdraw()

        await subscribe_forever(
            self.pool, {keys.WAKEUP_CHANNEL: woken, keys.handoff(self._worker_id()): handed},
            on_subscribed=subscribed, what="wake-up", on_stuck=stuck,
        )  # fmt: skip
