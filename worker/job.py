"""The arq jobs: `chat` (one model call, streamed, with tool use when asked) and `call_tool` (one
downstream MCP tool call); every event published, the result returned to arq.

A tool loop journals each finished step (worker/journal.py): a re-run goes on from its last one.

Every way out of a job goes through its JobRun's one `end()` (worker/run.py): exactly one terminal
event, after every event before it is in Redis, counted once, and a JobResult (as JSON) for arq,
whether the call succeeded, failed or was cancelled. A CancelledError that is not a user's cancel
(worker shutdown) is re-raised so arq runs the job again.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from opentelemetry.trace import INVALID_SPAN, SpanKind
from pydantic import BaseModel, ValidationError

from shared import approvals, damaged, keys, prices, tracing
from shared.errors import JobStopped, McpQueueError, ReservationSpent, ToolRoundsExceeded, validation_message
from shared.events import TokenUsage
from shared.logs import redact
from shared.models import ChatRequest, ModelDefaults, ToolCallRequest, effective
from shared.settings import OPERATOR, UNOWNED, Settings
from shared.tokens import estimate_tokens, well_formed
from shared.tool_client import ToolServers
from worker import accounting, fallbacks, journal, pause
from worker.capacity import Capacity
from worker.deadlines import Deadlines
from worker.history import earlier_turns
from worker.intake import VALIDATED
from worker.metrics import WorkerMetrics
from worker.providers import ModelCall, Provider, ProviderError, StreamEnd, ToolCall
from worker.providers.base import estimate_usage
from worker.publisher import EventWriter
from worker.run import JobRun
from worker.tool_use import Toolbox, TurnLog, open_toolbox, run_tool_calls

log = logging.getLogger("worker.job")

DEFAULTS_MAX_AGE = 1.0  # seconds a worker trusts its copy of configure_ai_model's defaults


@dataclass
class WorkerState:
    """What every job of this worker shares; lives in arq's ctx under "mcpq"."""

    settings: Settings
    provider: Provider
    worker_id: str
    writer: EventWriter
    running: dict[str, int] = field(default_factory=dict)  # job id -> attempt
    jobs_done: int = 0
    provider_error: str | None = None  # the last call's outcome: down until a call succeeds
    provider_seen_at: float = 0.0  # unix time of that outcome (health trusts the newest across workers)
    defaults: dict[str, ModelDefaults] = field(default_factory=dict)  # tenant -> its defaults over the global
    defaults_read_at: float = float("-inf")  # monotonic; -inf: read before the next job
    _defaults_reads: dict[str, asyncio.Future[ModelDefaults]] = field(
        default_factory=dict
    )  # tenant -> its read
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)
    tool_servers: ToolServers = field(default_factory=lambda: ToolServers({}))
    paused: dict[str, pause.Park] = field(default_factory=dict)  # job id -> how to park it (worker/pause.py)
    capacity: Capacity = field(init=False)  # MODEL_LIMITS and 429 cool-downs, shared by every worker
    leases_renewed_at: float = float("-inf")  # monotonic: the heartbeat's last renewal of our leases
    tasks: dict[str, asyncio.Task] = field(default_factory=dict)  # job id -> the task running its attempt
    taken: set[str] = field(default_factory=set)  # jobs another worker took from us: no ending of ours
    look_now: asyncio.Event = field(default_factory=asyncio.Event)  # set: the heartbeat beats at once
    _looked: asyncio.Event = field(default_factory=asyncio.Event)  # set by the heartbeat's next look
    _look_began: float = float("-inf")  # monotonic: when the heartbeat's last look began
    deadlines: Deadlines = field(default_factory=Deadlines)  # the jobs' JOB_TIMEOUT_SECONDS

    def __post_init__(self) -> None:
        self.metrics.watch_running(lambda: len(self.running))
        self.capacity = Capacity(self.settings)

    def stale(self) -> bool:
        """The heartbeat has not renewed our leases for a whole lease (this process was stopped, its
        loop blocked, or Redis away): a job of ours may be another worker's by now."""
        return time.monotonic() - self.leases_renewed_at > self.settings.worker_lease_seconds

    async def leases_looked_at(self) -> None:
        """Wait for a look of the heartbeat's at our leases begun after this ask (renewed, the jobs
        taken meanwhile lost; or failed, Redis away), asking it to look now. Not the look under way: its
        renewal may have run before the stall (the job ours then, another worker's since)."""
        asked = time.monotonic()
        while self._look_began < asked:
            looked = self._looked
            self.look_now.set()
            await looked.wait()

    def looked(self, began: float = float("inf")) -> None:
        """The heartbeat's look at our leases that began at `began` is over (worker/heartbeat.py); inf:
        no heartbeat looks any more (shutdown), waiting writes go on."""
        self._look_began = began
        self._looked.set()
        self._looked = asyncio.Event()

    def lost(self, job_id: str) -> bool:
        """Another worker took this job from us: our run of it publishes nothing more."""
        return job_id in self.taken

    def lose(self, job_id: str) -> None:
        """Another worker took this job while we were stalled past its lease (worker/heartbeat.py):
        stop our run; it stores no ending, the other run is the job's now."""
        if job_id in self.taken or job_id not in self.running:
            return
        log.warning(
            "job %s: another worker took it while this one was stalled past its lease; stopping this run",
            job_id,
        )
        self._stop_run(job_id)

    def heart_stopped(self) -> None:
        """The heartbeat died (worker/wakeups.py): every run stops as if its job were taken (it stores
        nothing; its lease lapses to another worker), and no write waits for a look that never comes."""
        for job_id in list(self.running):
            if job_id not in self.taken:
                self._stop_run(job_id)
        self.looked()

    def _stop_run(self, job_id: str) -> None:
        self.taken.add(job_id)
        if (task := self.tasks.get(job_id)) is not None:
            task.cancel()

    def provider_said(self, error: str | None) -> None:
        self.provider_error, self.provider_seen_at = error, time.time()

    async def model_defaults(self, redis, tenant: str = OPERATOR) -> ModelDefaults:
        """configure_ai_model's defaults for this tenant: its own over the global ones. The jobs that
        start while they are read share that one read: each its own, a claim's 25 jobs made 25 reads
        each time the copy aged out, and the jobs claimed meanwhile more."""
        if time.monotonic() - self.defaults_read_at > DEFAULTS_MAX_AGE:
            self.defaults.clear()
            self._defaults_reads.clear()  # (a read begun before is not joined: it may be older)
            self.defaults_read_at = time.monotonic()
        if (found := self.defaults.get(tenant)) is not None:
            return found
        read = self._defaults_reads.get(tenant)
        if read is None:
            read = self._defaults_reads[tenant] = asyncio.ensure_future(self._read_defaults(redis, tenant))
            read.add_done_callback(functools.partial(self._defaults_read, tenant))
        return await asyncio.shield(read)  # (a job cancelled while it waits leaves the read to the others)

    def _defaults_read(self, tenant: str, read: asyncio.Future[ModelDefaults]) -> None:
        if self._defaults_reads.get(tenant) is read:
            del self._defaults_reads[tenant]
        if not read.cancelled():
            read.exception()  # (seen: every job that waited for it may have gone)

    async def _read_defaults(self, redis, tenant: str) -> ModelDefaults:
        found = ModelDefaults()
        names = [keys.MODEL_DEFAULTS, keys.model_defaults(tenant)]
        async with redis.pipeline(transaction=False) as pipe:  # one round trip: a job waits for it
            for key in names:
                pipe.get(key)
            stored = damaged.replies(await pipe.execute(raise_on_error=False), names, [None, None])
        for key, raw in zip(names, stored, strict=True):  # not a string: as if unset
            try:
                found = (ModelDefaults.model_validate_json(raw) if raw else ModelDefaults()).over(found)
            except ValidationError:
                log.warning("ignoring invalid %s: %.200r", key, raw)
        self.defaults[tenant] = found
        return found


async def _check_reservation(
    redis, job_id: str, model: str, spent: TokenUsage | None, call: ModelCall
) -> None:
    """With budgets on, the messenger reserved this job's worst case; stop before a turn that could
    cost more than what is left of it (the same byte-a-token rule the reservation used)."""
    raw = await redis.hget(keys.BUDGET_RESERVED, job_id)
    try:
        reserved = float(raw) if raw is not None else None
    except ValueError:
        log.warning("ignoring a reservation for job %s that is not a number", job_id)
        return
    if reserved is None:
        return  # no budgets, or the reservation lapsed (BUDGET_RESERVATION_SECONDS)
    so_far = prices.cost(model, spent.prompt_tokens, spent.completion_tokens) if spent else 0.0
    prompt = (
        sum(estimate_tokens(json.dumps(m, ensure_ascii=False), worst_case=True) for m in call.messages) + 32
    )
    turn = prices.cost(model, prompt, call.max_tokens)
    if so_far is not None and turn is not None and so_far + turn > reserved:
        raise ReservationSpent(
            f"stopped before another model turn: it could cost up to ${turn:.6f}, and ${so_far:.6f} of the "
            f"${reserved:.6f} reserved for this job (BUDGET_* settings) is spent; ask for fewer "
            "max_tokens or lower TOOL_MAX_ROUNDS"
        )


def _add(total: TokenUsage | None, more: TokenUsage | None) -> TokenUsage | None:
    if more is None or total is None:
        return more or total
    return TokenUsage(
        prompt_tokens=total.prompt_tokens + more.prompt_tokens,
        completion_tokens=total.completion_tokens + more.completion_tokens,
        total_tokens=total.total_tokens + more.total_tokens,
        estimated=total.estimated or more.estimated,
    )


def estimated_usage(request: dict, text: list[str]) -> TokenUsage:
    """About four characters a token: for calls that ended before the provider reported usage."""
    prompt = (
        estimate_tokens("".join(str(request.get(k) or "") for k in ("message", "context")))
        if isinstance(request, dict)
        else 0
    )
    return TokenUsage(
        prompt_tokens=prompt, completion_tokens=len(text), total_tokens=prompt + len(text), estimated=True
    )


def build_messages(request: ChatRequest, history: list[dict[str, str]]) -> list[dict[str, Any]]:
    messages = [{"role": "system", "content": request.context}] if request.context else []
    return [*messages, *history, {"role": "user", "content": request.message}]


INVALID = "invalid request in the queue: "
_Request = TypeVar("_Request", bound=BaseModel)


def validated(ctx: dict, request: dict, model: type[_Request]) -> _Request:
    """The job's request as `model`: as the worker's intake validated it (worker/intake.py), else now."""
    if type(found := ctx.get(VALIDATED)) is model:
        return found  # type: ignore[return-value]
    return model.model_validate(request)


NOTHING_ASKED = approvals.InputRecord()  # a job without tools: never read, never changed (2.4 µs a job made)


async def chat(ctx: dict, request: dict, trace: dict | None = None) -> dict:
    """`trace`: the caller's W3C trace context (traceparent, tracestate), when it sent one."""
    started = time.time()  # the job's start (its start event's ts: JobRun.started_at)
    if tracing.needless(trace):
        return await _chat(ctx, request, INVALID_SPAN, started)
    attributes = {"messaging.message.id": ctx["job_id"], "mcpq.attempt": ctx["job_try"]}
    with tracing.span("mcp-queue.worker", "chat", trace, SpanKind.CONSUMER, attributes) as span:
        return await _chat(ctx, request, span, started)


async def _chat(ctx: dict, request: dict, span, started: float) -> dict:
    run = JobRun(ctx, request, model="?", span=span, started_at=started)
    state, settings = run.state, run.settings
    try:
        run.tenant = await accounting.job_tenant(run.redis, run.job_id, ctx)
        try:
            req = validated(ctx, request, ChatRequest)
        except ValidationError as e:
            await run.publisher.start(state.worker_id, run.model, at=run.started_at)
            return await run.end("failed", validation_message(e, INVALID))
        if run.tenant == UNOWNED and req.conversation_id:  # nobody's job: no one's conversation
            req = req.model_copy(update={"conversation_id": None})
            run.request = {k: v for k, v in run.request.items() if k != "conversation_id"}
        call = await _model_call(run, req)
        replay, asked = journal.Replay(), NOTHING_ASKED  # (only a job with tools can have paused)
        if req.mcp_servers:
            run.journaled = True
            asked = await approvals.read(run.redis, run.job_id)
            run.rebase(asked.base)  # attempts before its last pause, if it paused
            if run.attempt > 1:  # a re-run: go on from the last finished step of the attempts before
                replay = await journal.read(run.redis, run.job_id)
        # the model is asked while the start event is written, not a round trip after
        run.publisher.start_soon(state.worker_id, run.model, replay.last_step or None, at=run.started_at)
        if asked.base and await run.redis.exists(keys.cancel(run.job_id)):  # cancelled as it paused
            return await run.end("cancelled", "cancelled by request")
        if asked.question and asked.question.expires_at <= time.time():
            await run.redis.hdel(keys.input_request(run.job_id), "question")  # a late answer finds none
            return await run.end("failed", _unanswered(asked.question, settings))
        try:
            end = await state.deadlines.within(
                run.task, settings.job_timeout_seconds, _converse(run, req, call, replay, asked.answers)
            )
        except pause.InputRequired as e:  # no answer yet: the job waits without its worker
            return await pause.ask(run, e.question)
        except McpQueueError as e:  # the provider, a tool server, or a stop (rounds, budget, Redis)
            if isinstance(e, ProviderError):
                # (a job out of time for MODEL_LIMITS is no fault of the provider's: health stays clear)
                state.provider_said(e.message if e.retryable and getattr(e, "upstream", True) else None)
            return await run.end("failed", e.message)
        except TimeoutError:
            what = "the model call and its tool calls" if run.tool_calls else "the model call"
            return await run.end(
                "failed", f"{what} took longer than JOB_TIMEOUT_SECONDS={settings.job_timeout_seconds:g}"
            )
        except asyncio.CancelledError:
            if not await asyncio.shield(run.redis.exists(keys.cancel(run.job_id))):
                raise  # shutdown: arq puts the job back and another worker runs it again
            return await run.end("cancelled", "cancelled by request")
        state.provider_said(None)
        if end is None or not run.text:  # never report an empty answer as a success
            return await run.end(
                "failed", f"the provider returned an empty answer (finish_reason={run.finish_reason})"
            )
        return await run.end("completed")
    except Exception as e:  # a bug or Redis failure: say so in the stream instead of going silent
        log.exception("job %s failed", run.job_id)
        return await run.end("failed", redact(f"internal error in the worker: {type(e).__name__}: {e}"))
    finally:
        run.close()


def _unanswered(question, settings: Settings) -> str:
    return (
        f"nobody answered whether to run {question.server}/{question.tool} within "
        f"INPUT_WAIT_SECONDS={settings.input_wait_seconds:g}; the call was not run"
    )


async def _model_call(run: JobRun, req: ChatRequest) -> ModelCall:
    """The first model call: the request over the tenant's defaults and settings, after its history."""
    settings = run.settings
    chosen = effective(req, await run.state.model_defaults(run.redis, run.tenant), settings)
    run.model = chosen.model
    history = []
    if req.conversation_id:
        history = await earlier_turns(
            run.redis, run.tenant, req.conversation_id,
            max_turns=settings.history_max_turns, max_tokens=settings.history_max_tokens,
        )  # fmt: skip
    return ModelCall(
        model=chosen.model,
        messages=build_messages(req, history),
        temperature=chosen.temperature,
        max_tokens=chosen.max_tokens,
    )


async def _converse(
    run: JobRun, req: ChatRequest, call: ModelCall, replay: journal.Replay, answers: dict
) -> StreamEnd | None:
    """Model turns, with tool calls between them when the request names MCP servers; answers how
    the last turn ended (None: the stream stopped without saying). Turns and results in `replay`
    (the journal of earlier attempts) are taken from it, not asked or run again, and not told again."""
    state, settings = run.state, run.settings
    spent: TokenUsage | None = None  # summed over the model turns that ended
    turn: list[str] = []  # the text of the model turn in progress
    # (the run's request and text, not the run: a closure the run holds that held the run made every
    # job a reference cycle, its run, task and coroutines left to the cyclic collector, ~8 µs a job;
    # the run's text only grows in place, and its request is set before)
    request, text = run.request, run.text

    def usage(status: str) -> TokenUsage:
        if spent:  # plus a later turn cut short: its prompt and what it streamed were paid for too
            cut = estimate_usage(call.messages, len(turn)) if turn and status != "completed" else None
            return _add(spent, cut) or spent
        # ended early: the prompt was paid for only if the model started answering
        return estimated_usage(request, text) if text else TokenUsage()

    run.usage = usage
    toolbox = (
        await open_toolbox(state.tool_servers, req.mcp_servers, settings.tool_approval)
        if req.mcp_servers
        else None
    )
    if toolbox:
        call = replace(call, tools=toolbox.specs)
    step = 1  # the journal step of each turn; its tool calls take the steps after it
    for round_no in range(1, settings.tool_max_rounds + 2):
        turn = []
        if done := replay.turns.get(step):  # finished before: not asked again
            end, call, turn_text = done.end, replace(call, model=done.model), done.text
            run.fallback_from = done.fallback_from
            run.text += [turn_text] if turn_text else []
        else:
            if round_no > 1:
                await _check_reservation(run.redis, run.job_id, run.model, spent, call)
            end, call = await _ask(run, call, turn, round_no)
            turn_text = "".join(turn)
        spent = _add(spent, end.usage if end else None)
        run.model, run.finish_reason = (end.model, end.finish_reason) if end else (run.model, None)
        turn = []
        if toolbox is None or end is None or not end.tool_calls:
            return end
        if round_no > settings.tool_max_rounds:
            raise ToolRoundsExceeded(settings.tool_max_rounds)
        entry = None if done else journal.turn_entry(turn_text, end, call.model, run.fallback_from)
        turn_messages = await run_tool_calls(
            toolbox, state.tool_servers, end.tool_calls, text=turn_text,
            round_no=round_no, publisher=run.publisher, records=run.tool_calls,
            log=TurnLog(run.job_id, step, entry, replayed=bool(done), results=replay.results,
                        answers=answers, wait_seconds=settings.input_wait_seconds),
        )  # fmt: skip
        call = replace(call, messages=[*call.messages, *turn_messages])
        step += 1 + len(end.tool_calls)


async def _ask(
    run: JobRun, call: ModelCall, turn: list[str], round_no: int
) -> tuple[StreamEnd | None, ModelCall]:
    """One model turn, streamed into `turn`; answers how it ended and the call as it ran."""
    if round_no == 1:  # MODEL_FALLBACKS: the first turn may go on with another model
        end, call, run.fallback_from = await fallbacks.first_turn(
            run.settings, run.job_id, call, turn, lambda c, fallback: _model_turn(run, c, turn, fallback)
        )
        return end, call
    return await _model_turn(run, call, turn), call


async def _model_turn(
    run: JobRun, call: ModelCall, turn: list[str], fallback: bool = False
) -> StreamEnd | None:
    """One model turn within the model's capacity (worker/capacity.py: it may wait, and go again
    after a 429); raises RateLimited when the job's deadline (or, with a `fallback`, its patience)
    comes first."""
    deadline = run.started + run.settings.job_timeout_seconds
    return await run.state.capacity.turn(
        run.redis, run.job_id, call, deadline=deadline, fallback=fallback,
        stream=lambda: _stream_turn(run, call, turn), streamed=lambda: bool(turn),
    )  # fmt: skip


async def _stream_turn(run: JobRun, call: ModelCall, turn: list[str]) -> StreamEnd | None:
    """Stream one model turn into the job's text and events; answers how it ended."""
    end = None
    text, token = run.text, run.publisher.token  # (per token: ~17 a no-op job, each lookup counts)
    pieces = run.state.provider.stream(call)
    try:
        async for piece in pieces:
            if type(piece) is not str:  # (a StreamEnd; a str subclass from a provider is rare)
                if isinstance(piece, StreamEnd):
                    end = piece if not piece.tool_calls else replace(piece, tool_calls=tuple(
                        replace(c, name=well_formed(c.name), arguments=well_formed(c.arguments))
                        for c in piece.tool_calls
                    ))  # fmt: skip
                    continue
            if not piece.isascii():  # (ASCII has no lone surrogate; isascii is a flag's read)
                piece = well_formed(piece)
            if not turn:  # the turn's first piece
                if not text:
                    run.first_token()
                elif not text[-1][-1:].isspace():
                    piece = "\n\n" + piece  # a new turn's text starts a new paragraph
            text.append(piece)
            turn.append(piece)
            token(piece)
    except BaseException:  # a stream left midway: its cleanup (a connection's release) runs now
        await pieces.aclose()  # (aclosing's await of it, ~1 µs, was spent on every finished stream too)
        raise
    return end


async def call_tool(ctx: dict, request: dict, trace: dict | None = None) -> dict:
    """One call of a downstream MCP server's tool, for the messenger's `server/tool` tools.

    The tool's answer, error or not, is the job's completed result (its `toolCalls[0]`); a request
    that is not valid, or a call past JOB_TIMEOUT_SECONDS, fails the job. No model runs, so nothing
    is counted in usage. Like `chat`, it always ends with exactly one terminal event.
    """
    attributes = {"messaging.message.id": ctx["job_id"], "mcpq.attempt": ctx["job_try"]}
    with tracing.span("mcp-queue.worker", "call_tool", trace, SpanKind.CONSUMER, attributes):
        return await _call_tool(ctx, request)


async def _call_tool(ctx: dict, request: dict) -> dict:
    run = JobRun(ctx, request, model="mcp", counted=False)
    state, settings = run.state, run.settings
    try:
        try:
            req = validated(ctx, request, ToolCallRequest)
        except ValidationError as e:
            await run.publisher.start(state.worker_id, run.model, at=run.started_at)
            return await run.end("failed", validation_message(e, INVALID))
        run.model, run.journaled = f"mcp:{req.server}", True
        replay = await journal.read(run.redis, run.job_id) if run.attempt > 1 else journal.Replay()
        await run.publisher.start(
            state.worker_id, run.model, resumed=replay.last_step or None, at=run.started_at
        )
        toolbox = Toolbox(specs=(), routes={"call": (req.server, req.tool)})
        call = ToolCall(id=f"{run.job_id}-1", name="call", arguments=json.dumps(req.arguments))
        turn = TurnLog(run.job_id, 0, None, replayed=bool(replay.results), results=replay.results)
        try:
            async with asyncio.timeout(settings.job_timeout_seconds):
                await run_tool_calls(
                    toolbox, state.tool_servers, (call,), text="", round_no=1, publisher=run.publisher,
                    records=run.tool_calls, log=turn,
                )  # fmt: skip
        except TimeoutError:
            return await run.end(
                "failed",
                f"the tool call took longer than JOB_TIMEOUT_SECONDS={settings.job_timeout_seconds:g}",
            )
        except JobStopped as e:
            return await run.end("failed", e.message)
        except asyncio.CancelledError:
            if not await asyncio.shield(run.redis.exists(keys.cancel(run.job_id))):
                raise  # shutdown: another worker runs it again
            return await run.end("cancelled", "cancelled by request")
        record = run.tool_calls[0]
        run.text, run.finish_reason = [record.result or ""], "tool_error" if record.is_error else "stop"
        return await run.end("completed")
    except Exception as e:  # a bug or Redis failure: say so in the stream instead of going silent
        log.exception("tool job %s failed", run.job_id)
        return await run.end("failed", redact(f"internal error in the worker: {type(e).__name__}: {e}"))
    finally:
        run.close()
