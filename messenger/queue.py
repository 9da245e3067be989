"""One way into the queue: `JobQueue.submit` admits a request (known MCP servers, budgets, rate
limit), writes the job with one atomic script and hands it to an idle worker (or wakes the workers).
The MCP tools, MCP tasks, forwarded `server/tool` calls, the dashboard and the CLI all submit through
it; reading, following, listing and cancelling are the JobClient's (messenger/jobs.py).
"""

from __future__ import annotations

import asyncio
import functools
import os
import time

from arq.jobs import serialize_job
from redis.exceptions import NoScriptError

from shared import handoff, keys, turns
from shared.connection import Batch
from shared.errors import InvalidRequest, QueueFull, QueueUnavailable, ToolServerError
from shared.models import ChatRequest, ToolCallRequest
from shared.scripts import Arg, Key, script
from shared.serializer import serialize_plain
from shared.settings import OPERATOR, Settings
from shared.tool_config import unknown_servers_message


# arq's enqueue (WATCH, EXISTS, MULTI PSETEX ZADD EXEC: three round trips) as one atomic script, which
# also records the owner and the job as recent, and hands the job, leased, to an idle worker
# (shared/handoff.py) or, with none, wakes the workers with its id: one round trip.
# A recent-jobs index of the wrong type (written by hand) cannot be read, so it is started afresh.
# Its score is the caller's next turn in its priority's band (shared/turns.py), not the time.
@script(
    handoff.LEASE_LUA
    + handoff.HAND_OFF_LUA
    + """
if redis.call('EXISTS', job, result) > 0 then
  -- this very submit, sent again (redis-py retries a command whose reply a dropped connection lost,
  -- e.g. in a failover): it is queued already, or ran to its end meanwhile (its result tells this
  -- enqueue's id and time); telling its caller no would leave the job to run unasked
  local queued = redis.pcall('GET', job)
  if queued == payload then return 1 end
  if not queued then
    local ok, ended = pcall(cjson.decode, text(result))
    if ok and type(ended) == 'table' and ended['id'] == job_id and ended['et'] == tonumber(now_ms) then
      return 1
    end
  end
  return 0
end
local depth = redis.call('ZCARD', queue)
if depth >= max_depth then return -depth end
redis.call('SET', owner, caller, 'EX', owner_ttl_s)
redis.call('PSETEX', job, job_ttl_ms, payload)
local tenant = caller
"""
    + turns.PLACE_LUA
    + """
redis.call('ZADD', queue, turn_score, job_id)
local newest = redis.pcall('ZREVRANGE', recent, '0', '0', 'WITHSCORES')
if newest['err'] then redis.call('DEL', recent) newest = {} end  -- damaged: an unreadable index
newest = newest[2]
local at = now_ms  -- a job enqueued in the same ms (or by a replica whose clock lags) sorts after the last
if newest and tonumber(newest) >= at then at = tonumber(newest) + 0.001 end
redis.call('ZADD', recent, at, job_id)
redis.call('ZREMRANGEBYRANK', recent, '0', -recent_kept - 1)
-- (the job's value and owner record, just written: handed as they are, not read again)
if not hand_off(job_id, turn_text, payload, caller) then redis.call('PUBLISH', wakeup, job_id) end
return 1
"""
)
async def enqueue_job(
    redis,
    *,
    job: Key,
    result: Key,
    queue: Key,
    recent: Key,
    wakeup: Key,
    owner: Key,
    turns: Key,
    idle: Key,
    abort_set: Key,
    job_id: Arg[str],
    payload: Arg[bytes],
    now_ms: Arg[int],
    job_ttl_ms: Arg[int],
    recent_kept: Arg[int],
    max_depth: Arg[int],
    caller: Arg[str],
    owner_ttl_s: Arg[int],
    band: Arg[int],
    band_width: Arg[int],
    handoff_prefix: Arg[str],
    lease_prefix: Arg[str],
    retry_prefix: Arg[str],
    retry_ttl: Arg[int],
    job_prefix: Arg[str],
    owner_prefix: Arg[str],
) -> int:
    """1 once queued (also for this same submit sent again: its value is there already, or its result
    once it ran); 0 if the id is taken (queued, running or ended); -depth if the queue is full."""
    ...


async def _enqueue(redis, **given) -> int:
    """enqueue_job in the process's shared pipeline (shared.connection.Batch): the submits of one
    moment go to Redis together on one connection. Each its own command, 1,000 submits in half a
    second checked out (and opened) hundreds of pool connections: 39 % of the messenger's samples
    while bench/streams.py started 1,000 jobs."""
    try:
        return await Batch.of(redis).run(enqueue_job.command(given))  # type: ignore[attr-defined]
    except (NoScriptError, TimeoutError) as e:
        return await _enqueue_again(redis, e, given)


async def _enqueue_again(redis, error: Exception, given: dict) -> int:
    """The submit once more, after its pipeline's `error`: its script unknown to Redis (first use on
    this server, or its script cache was flushed), or the pipeline gave up waiting
    (BATCH_STUCK_SECONDS: a frozen or stalled Redis may still run it once it thaws): asked again, on
    a connection of its own, the script answers this same submit as queued if the first try ran, and
    queues it if not; never "failed" for a job that runs."""
    if isinstance(error, NoScriptError):
        return await enqueue_job(redis, **given)
    try:
        async with asyncio.timeout(SUBMIT_PATIENCE_SECONDS):
            return await enqueue_job(redis, **given)
    except TimeoutError:  # (a dead connection too: no socket timeout)
        job_id = given["job_id"]
        raise QueueUnavailable(
            f"Redis has not answered the submit of job {job_id} for {SUBMIT_PATIENCE_SECONDS:g} s: "
            f"it may still queue and run it (see get_job {job_id})"
        ) from None


SUBMIT_PATIENCE_SECONDS = 60.0  # a submit asked again after its pipeline gave up: how long it waits then


# the enqueue script's keys and arguments that are the same for every job (JobQueue._given)
_SHARED_SLOTS = dict(
    queue=keys.QUEUE, recent=keys.RECENT_JOBS, wakeup=keys.WAKEUP_CHANNEL, job_ttl_ms=keys.JOB_EXPIRES_MS,
    recent_kept=keys.RECENT_JOBS_KEPT, turns=keys.TURNS, band_width=turns.BAND_WIDTH, idle=keys.IDLE_WORKERS,
    abort_set=keys.ABORT_SET, handoff_prefix=keys.HANDOFF_PREFIX, lease_prefix=keys.IN_PROGRESS_PREFIX,
    retry_prefix=keys.RETRY_PREFIX, retry_ttl=keys.RETRY_KEPT_SECONDS, job_prefix=keys.JOB_PREFIX,
    owner_prefix=keys.OWNER_PREFIX,
)  # fmt: skip

ANONYMOUS = OPERATOR  # a request without an API key (stdio, the CLI) is the local operator's


def new_job_id() -> str:
    """122 random bits: unguessable, so a job id is also a handle only its holder knows. uuid4().hex
    without making the UUID (its checks: 2.0 -> 0.9 µs), its version and variant bits set the same."""
    return f"{int.from_bytes(os.urandom(16), 'big') & _RANDOM_BITS | _UUID4_BITS:032x}"


_UUID4_BITS = (0x8000 << 48) | (4 << 76)  # the variant (RFC 4122) and version (4) fields' values
_RANDOM_BITS = ~((0xC000 << 48) | (0xF000 << 64)) & ((1 << 128) - 1)  # every bit but those fields'


class Submitted:
    """A submit on its way (JobQueue.submitting): `outcome`, the job id or the submit's error, for
    whoever must know whether the job was queued; `answer`, the same, for the caller to await: its
    cancellation (a dropped call) leaves the submit and its outcome be."""

    __slots__ = ("answer", "outcome")

    def __init__(self, outcome: asyncio.Future[str], answer: asyncio.Future[str]):
        self.outcome = outcome
        self.answer = answer

    def tell(self, job_id: str, error: BaseException | None) -> None:
        for future in (self.outcome, self.answer):
            if future.done():  # (the answer: its caller went away)
                continue
            if isinstance(error, asyncio.CancelledError):
                future.cancel()
            elif error is not None:
                future.set_exception(error)
            else:
                future.set_result(job_id)
        if error is not None and not self.outcome.cancelled():
            self.outcome.exception()  # (the answer tells it: the outcome's copy is not "never retrieved")


_AGAIN: set[asyncio.Task[None]] = set()  # submits being sent again (kept referenced until done)


class JobQueue:
    def __init__(self, redis, settings: Settings):
        self.redis = redis
        self.settings = settings

    async def submit(
        self, request: ChatRequest | ToolCallRequest, *, caller: str, job_id: str | None = None
    ) -> str:
        """Queue `request` for `caller` and return its job id (`job_id` when the caller chose one, to
        subscribe to its events first). A ToolCallRequest (one downstream tool call) becomes a
        `call_tool` job: no model, no budget. Raises QueueFull, Refused, ToolServerError."""
        job_id = job_id or new_job_id()
        if isinstance(request, ToolCallRequest) or self._admitting():
            return await self._submit_slowly(request, caller, job_id)
        return await self._sending(request, caller, job_id).answer

    def submitting(
        self, request: ChatRequest | ToolCallRequest, *, caller: str, job_id: str | None = None
    ) -> Submitted:
        """`submit`, under way once this returns: a chat request's enqueue is in the next Batch
        pipeline and one callback tells its outcome (a call's submit was a task, a shield and four
        loop callbacks); a ToolCallRequest, or any submit when budgets or rate limits are set (reads
        first), runs in a task. Raises ToolServerError at once."""
        job_id = job_id or new_job_id()
        if isinstance(request, ToolCallRequest) or self._admitting():
            task = asyncio.ensure_future(self._submit_slowly(request, caller, job_id))
            return Submitted(task, asyncio.shield(task))
        return self._sending(request, caller, job_id)

    def _sending(self, request: ChatRequest, caller: str, job_id: str) -> Submitted:
        """A chat request's enqueue put in the next Batch pipeline, no admission (its caller checked
        that: once a submit, where `submit` asked it and then `submitting` again); the pipeline's
        flush hands its reply to `_landed` (Batch.send_to), without a future and a loop callback."""
        if request.mcp_servers:
            _check_servers(request.mcp_servers, self.settings)
        payload = request.model_dump(exclude_none=True, exclude={"priority"})  # (priority: the queue's)
        given = self._given(job_id, "chat", payload, caller, priority=request.priority)
        loop = asyncio.get_running_loop()
        submitted = Submitted(loop.create_future(), loop.create_future())
        landed = functools.partial(self._landed, given, submitted)
        Batch.of(self.redis).send_to(landed, enqueue_job.command(given))  # type: ignore[attr-defined]
        return submitted

    def _admitting(self) -> bool:
        """Whether budgets or rate limits are set (a submit reads first)."""
        from messenger import admission  # only a submit needs it, not `messenger jobs`

        return admission.enabled(self.settings)

    def _landed(self, given: dict, submitted: Submitted, reply: int | BaseException) -> None:
        job_id = given["job_id"]
        if isinstance(reply, NoScriptError | TimeoutError):
            task = asyncio.create_task(self._again(reply, given, submitted))
            _AGAIN.add(task)
            task.add_done_callback(_AGAIN.discard)
            return
        if isinstance(reply, BaseException):
            submitted.tell(job_id, reply)
        else:
            submitted.tell(job_id, self._refusal(reply, job_id))

    async def _again(self, error: Exception, given: dict, submitted: Submitted) -> None:
        job_id = given["job_id"]
        try:
            added = await _enqueue_again(self.redis, error, given)
        except asyncio.CancelledError:  # (the process is stopping)
            submitted.tell(job_id, asyncio.CancelledError())
            raise
        except Exception as e:
            submitted.tell(job_id, e)
            return
        submitted.tell(job_id, self._refusal(added, job_id))

    async def _submit_slowly(self, request: ChatRequest | ToolCallRequest, caller: str, job_id: str) -> str:
        """A ToolCallRequest's submit, or a chat request's with admission (budgets, rate limits)."""
        if isinstance(request, ToolCallRequest):
            await self._write(job_id, "call_tool", request.model_dump(), caller, priority=None)
            return job_id
        if request.mcp_servers:
            _check_servers(request.mcp_servers, self.settings)
        from messenger import admission, usage  # only a submit needs them, not `messenger jobs`

        request = admission.pinned(request, await usage.model_defaults(self.redis, caller), self.settings)
        await admission.admit(self.redis, self.settings, request, job_id=job_id, caller=caller)
        try:
            payload = request.model_dump(
                exclude_none=True, exclude={"priority"}
            )  # the queue's, not the model's
            await self._write(job_id, "chat", payload, caller, priority=request.priority)
        except BaseException:
            await admission.release(self.redis, job_id)
            raise
        return job_id

    async def _write(
        self, job_id: str, function: str, request: dict, caller: str, *, priority: str | None
    ) -> None:
        given = self._given(job_id, function, request, caller, priority=priority)
        refused = self._refusal(await _enqueue(self.redis, **given), job_id)
        if refused is not None:
            raise refused

    def _given(self, job_id: str, function: str, request: dict, caller: str, *, priority: str | None) -> dict:
        """The enqueue script's keys and arguments for this job."""
        from shared import tracing  # only a submit needs it (OpenTelemetry), not `messenger jobs`

        now_ms = int(time.time() * 1000)
        trace = tracing.current_carrier()  # the caller's trace, when there is one, goes with the job
        payload = serialize_job(  # (pydantic-core's encoder: a submit's job value 4.4 -> 1.1 µs)
            function, (request,), {"trace": trace} if trace else {}, None, now_ms, serializer=serialize_plain
        )
        # the owner record lives as long as the job can: a day in the queue, its run, its kept result
        owner_ttl = (
            keys.JOB_EXPIRES_MS // 1000 + int(self.settings.job_timeout_seconds) + keys.KEEP_RESULT_SECONDS
        )
        return dict(  # (the slots every job shares copied in one go: 26 keywords were 1.4 of 4.2 µs)
            _SHARED_SLOTS, job=keys.job(job_id), result=keys.result(job_id), owner=keys.owner(job_id),
            job_id=job_id, payload=payload, now_ms=now_ms, max_depth=self.settings.max_queue_depth,
            caller=caller, owner_ttl_s=owner_ttl, band=turns.band(priority),
        )  # fmt: skip

    def _refusal(self, added: int, job_id: str) -> Exception | None:
        if added < 0:
            return QueueFull(-added, self.settings.max_queue_depth)
        if not added:  # the same id twice: never run a job twice
            return InvalidRequest(f"job {job_id} already exists")
        return None


def _check_servers(names: list[str], settings: Settings) -> None:
    unknown = [n for n in names if n not in settings.mcp_servers]
    if unknown:
        raise ToolServerError(unknown_servers_message(unknown, settings.mcp_servers))
