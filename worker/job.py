"""The arq jobs: `chat` (one model call, streamed, with tool use when asked) and `call_tool` (one
downstream MCP tool call); every event published, the result returned to arq.

The job always ends with exactly one terminal event and returns a JobResult (as JSON), whether the
call succeeded, failed or was cancelled, so a caller never waits on a job that ended silently; the
ending is counted once (usage, cost, budget, history). A CancelledError that is not a user's cancel
(worker shutdown) is re-raised so arq runs the job again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any

from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from shared import keys, prices, tracing
from shared.errors import ToolServerError
from shared.events import TokenUsage
from shared.logs import redact
from shared.models import ChatRequest, JobResult, ModelDefaults, ResultUsage, ToolCallRecord, ToolCallRequest
from shared.settings import OPERATOR, Settings
from shared.tool_client import ToolServers
from worker import accounting
from worker.history import earlier_turns
from worker.metrics import WorkerMetrics
from worker.providers import ModelCall, Provider, ProviderError, StreamEnd, ToolCall
from worker.providers.base import estimate_usage
from worker.publisher import EventWriter
from worker.tool_use import Toolbox, open_toolbox, run_tool_calls

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
    provider_error: str | None = None
    defaults: dict[str, ModelDefaults] = field(default_factory=dict)  # tenant -> its defaults over the global
    defaults_read_at: float = float("-inf")  # monotonic; -inf: read before the next job
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)
    tool_servers: ToolServers = field(default_factory=lambda: ToolServers({}))

    def __post_init__(self) -> None:
        self.metrics.watch_running(lambda: len(self.running))

    async def model_defaults(self, redis, tenant: str = OPERATOR) -> ModelDefaults:
        """configure_ai_model's defaults for this tenant: its own over the global ones."""
        if time.monotonic() - self.defaults_read_at > DEFAULTS_MAX_AGE:
            self.defaults.clear()
            self.defaults_read_at = time.monotonic()
        if tenant not in self.defaults:
            found = ModelDefaults()
            for key in (keys.MODEL_DEFAULTS, keys.model_defaults(tenant)):
                raw = await redis.get(key)
                try:
                    found = (ModelDefaults.model_validate_json(raw) if raw else ModelDefaults()).over(found)
                except ValidationError:
                    log.warning("ignoring invalid %s: %.200r", key, raw)
            self.defaults[tenant] = found
        return self.defaults[tenant]


class ToolRoundsExceeded(Exception):
    def __init__(self, limit: int):
        super().__init__(
            f"the model was still asking for tools after TOOL_MAX_ROUNDS={limit} rounds; "
            "raise TOOL_MAX_ROUNDS or ask for less"
        )


class ReservationSpent(Exception):
    """The budget the messenger reserved for this job cannot pay for another model turn."""


async def _check_reservation(
    redis, job_id: str, model: str, spent: TokenUsage | None, call: ModelCall
) -> None:
    """With budgets on, the messenger reserved this job's worst case; stop before a turn that could
    cost more than what is left of it (the same byte-a-token rule the reservation used)."""
    reserved = await redis.hget(keys.BUDGET_RESERVED, job_id)
    if reserved is None:
        return  # no budgets, or the reservation lapsed (BUDGET_RESERVATION_SECONDS)
    so_far = prices.cost(model, spent.prompt_tokens, spent.completion_tokens) if spent else 0.0
    prompt = sum(len(json.dumps(m, ensure_ascii=False).encode()) for m in call.messages) + 32
    turn = prices.cost(model, prompt, call.max_tokens)
    if so_far is not None and turn is not None and so_far + turn > float(reserved):
        raise ReservationSpent(
            f"stopped before another model turn: it could cost up to ${turn:.6f}, and ${so_far:.6f} of the "
            f"${float(reserved):.6f} reserved for this job (BUDGET_* settings) is spent; ask for fewer "
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
        sum(len(str(request.get(k) or "")) for k in ("message", "context")) // 4
        if isinstance(request, dict)
        else 0
    )
    return TokenUsage(
        prompt_tokens=prompt, completion_tokens=len(text), total_tokens=prompt + len(text), estimated=True
    )


def build_messages(request: ChatRequest, history: list[dict[str, str]]) -> list[dict[str, Any]]:
    messages = [{"role": "system", "content": request.context}] if request.context else []
    return [*messages, *history, {"role": "user", "content": request.message}]


def invalid_request_message(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(part) for part in err["loc"])
    detail = err["msg"].removeprefix("Value error, ")
    return f"invalid request in the queue: {where + ': ' if where else ''}{detail}"


async def chat(ctx: dict, request: dict, trace: dict | None = None) -> dict:
    """`trace`: the caller's W3C trace context (traceparent, tracestate), when it sent one."""
    attributes = {"messaging.message.id": ctx["job_id"], "mcpq.attempt": ctx["job_try"]}
    with tracing.span("mcp-queue.worker", "chat", trace, SpanKind.CONSUMER, attributes) as span:
        return await _chat(ctx, request, span)


async def _chat(ctx: dict, request: dict, span) -> dict:
    state: WorkerState = ctx["mcpq"]
    settings = state.settings
    job_id, attempt = ctx["job_id"], ctx["job_try"]
    redis = ctx["redis"]
    publisher = state.writer.publisher(job_id, attempt)
    started = time.monotonic()
    text: list[str] = []
    end: StreamEnd | None = None
    spent: TokenUsage | None = None  # summed over the model turns that ended
    tool_calls: list[ToolCallRecord] = []
    turn: list[str] = []  # the text of the model turn in progress
    model = "?"

    async def finish(status: str, error: str | None = None) -> dict:
        """The job's result; counted once in the usage totals (and history, when completed)."""
        name = end.model if end else model
        if spent:  # plus a later turn cut short: its prompt and what it streamed were paid for too
            usage = (
                _add(
                    spent,
                    estimate_usage(call.messages, len(turn)) if turn and status != "completed" else None,
                )
                or TokenUsage()
            )  # never empty: `spent` is not None here (a closure is not narrowed)
        else:  # ended early: the prompt was paid for only if the model started answering
            usage = estimated_usage(request, text) if text else TokenUsage()
        result = JobResult(
            job_id=job_id,
            status=status,  # type: ignore[arg-type]
            ai_response="".join(text),
            model=name,
            usage=ResultUsage(
                **usage.model_dump(),
                estimated_cost=prices.cost(name, usage.prompt_tokens, usage.completion_tokens),
            ),
            processing_time=round(time.monotonic() - started, 4),
            finish_reason=end.finish_reason if end else None,
            error=error,
            worker_id=state.worker_id,
            attempt=attempt,
            tool_calls=tool_calls,
        ).model_dump(mode="json")
        state.metrics.job_ended(result)
        span.set_attributes({"gen_ai.request.model": name, "mcpq.outcome": status})
        try:
            await asyncio.shield(
                accounting.record(redis, result, request if isinstance(request, dict) else {},
                                  history_ttl=settings.history_ttl_seconds, tenant=tenant)
            )  # fmt: skip
        except Exception as e:  # the answer still goes out; only the totals miss it
            log.warning("could not count the usage of job %s: %s", job_id, e)
        log.info(
            "job %s %s", job_id, status,
            extra={"job_id": job_id, "worker_id": state.worker_id, "model": name, "outcome": status,
                   "attempt": attempt, "prompt_tokens": usage.prompt_tokens,
                   "completion_tokens": usage.completion_tokens, "total_tokens": usage.total_tokens,
                   "cost_usd": result["usage"]["estimatedCost"], "duration_s": result["processingTime"],
                   "error": error, "trace_id": tracing.trace_id(span)},
        )  # fmt: skip
        return result

    state.running[job_id] = attempt
    tenant = OPERATOR
    try:
        tenant = await accounting.job_tenant(redis, job_id)
        try:
            req = ChatRequest.model_validate(request)
        except ValidationError as e:
            msg = invalid_request_message(e)
            await publisher.start(state.worker_id, model)
            result = await finish("failed", msg)
            await publisher.error(msg)
            return result
        defaults = await state.model_defaults(redis, tenant)
        model = req.model or defaults.default_model or settings.default_model
        history = []
        if req.conversation_id:
            history = await earlier_turns(
                redis,
                tenant,
                req.conversation_id,
                max_turns=settings.history_max_turns,
                max_tokens=settings.history_max_tokens,
            )
        call = ModelCall(
            model=model,
            messages=build_messages(req, history),
            temperature=next(
                t
                for t in (req.temperature, defaults.temperature, settings.openai_temperature)
                if t is not None
            ),
            max_tokens=req.max_tokens or defaults.max_tokens or settings.openai_max_tokens,
        )
        await publisher.start(state.worker_id, model)
        try:
            async with asyncio.timeout(settings.job_timeout_seconds):
                toolbox = await open_toolbox(state.tool_servers, req.mcp_servers) if req.mcp_servers else None
                if toolbox:
                    call = replace(call, tools=toolbox.specs)
                for round_no in range(1, settings.tool_max_rounds + 2):
                    if round_no > 1:
                        await _check_reservation(redis, job_id, model, spent, call)
                    turn = []
                    end = None
                    async with aclosing(state.provider.stream(call)) as pieces:
                        async for piece in pieces:
                            if isinstance(piece, StreamEnd):
                                end = piece
                                continue
                            if not text:
                                state.metrics.first_token.observe(time.monotonic() - started)
                            elif not turn and not text[-1][-1:].isspace():
                                piece = "\n\n" + piece  # a new turn's text starts a new paragraph
                            text.append(piece)
                            turn.append(piece)
                            publisher.token(piece)
                    spent = _add(spent, end.usage if end else None)
                    turn_text, turn = "".join(turn), []
                    if toolbox is None or end is None or not end.tool_calls:
                        break
                    if round_no > settings.tool_max_rounds:
                        raise ToolRoundsExceeded(settings.tool_max_rounds)
                    turn_messages = await run_tool_calls(
                        toolbox, state.tool_servers, end.tool_calls, text=turn_text,
                        round_no=round_no, publisher=publisher, records=tool_calls,
                    )  # fmt: skip
                    call = replace(call, messages=[*call.messages, *turn_messages])
        except (ProviderError, ToolServerError, ToolRoundsExceeded, ReservationSpent) as e:
            message = e.message if isinstance(e, ProviderError) else str(e)
            if isinstance(e, ProviderError):
                state.provider_error = message if e.retryable else None
            result = await finish("failed", message)
            await publisher.error(message)
            return result
        except TimeoutError:
            what = "the model call and its tool calls" if tool_calls else "the model call"
            msg = f"{what} took longer than JOB_TIMEOUT_SECONDS={settings.job_timeout_seconds:g}"
            result = await finish("failed", msg)
            await publisher.error(msg)
            return result
        except asyncio.CancelledError:
            if not await asyncio.shield(redis.exists(keys.cancel(job_id))):
                raise  # shutdown: arq puts the job back and another worker runs it again
            result = await finish("cancelled", "cancelled by request")
            await asyncio.shield(publisher.cancelled())
            return result
        state.provider_error = None
        if end is None or not text:  # never report an empty answer as a success
            msg = (
                f"the provider returned an empty answer (finish_reason={end.finish_reason if end else None})"
            )
            result = await finish("failed", msg)
            await publisher.error(msg)
            return result
        usage = spent or estimated_usage(request, text)
        result = await finish("completed")  # counted (usage, history) before the caller hears "done"
        await publisher.done(
            usage=usage,
            cost=result["usage"]["estimatedCost"],
            finish_reason=end.finish_reason,
            model=end.model,
        )
        return result
    except Exception as e:  # a bug or Redis failure: say so in the stream instead of going silent
        log.exception("job %s failed", job_id)
        msg = redact(f"internal error in the worker: {type(e).__name__}: {e}")
        try:
            await publisher.error(msg)
        except Exception:
            log.warning("could not publish the error event for job %s", job_id)
        return await finish("failed", msg)
    finally:
        state.running.pop(job_id, None)
        state.jobs_done += 1


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
    state: WorkerState = ctx["mcpq"]
    settings = state.settings
    job_id, attempt = ctx["job_id"], ctx["job_try"]
    publisher = state.writer.publisher(job_id, attempt)
    started = time.monotonic()
    records: list[ToolCallRecord] = []
    label = "mcp"

    def finish(status: str, error: str | None = None) -> dict:
        record = records[0] if records else None
        result = JobResult(
            job_id=job_id,
            status=status,  # type: ignore[arg-type]
            ai_response=(record.result or "") if record else "",
            model=label,
            processing_time=round(time.monotonic() - started, 4),
            finish_reason=("tool_error" if record.is_error else "stop")
            if record and status == "completed"
            else None,
            error=error,
            worker_id=state.worker_id,
            attempt=attempt,
            tool_calls=records,
        ).model_dump(mode="json")
        state.metrics.job_ended(result)
        log.info(
            "tool job %s %s", job_id, status, extra={"job_id": job_id, "outcome": status, "error": error}
        )
        return result

    state.running[job_id] = attempt
    try:
        try:
            req = ToolCallRequest.model_validate(request)
        except ValidationError as e:
            msg = invalid_request_message(e)
            await publisher.start(state.worker_id, label)
            await publisher.error(msg)
            return finish("failed", msg)
        label = f"mcp:{req.server}"
        await publisher.start(state.worker_id, label)
        toolbox = Toolbox(specs=(), routes={"call": (req.server, req.tool)})
        call = ToolCall(id=f"{job_id}-1", name="call", arguments=json.dumps(req.arguments))
        try:
            async with asyncio.timeout(settings.job_timeout_seconds):
                await run_tool_calls(
                    toolbox, state.tool_servers, (call,), text="", round_no=1, publisher=publisher,
                    records=records,
                )  # fmt: skip
        except TimeoutError:
            msg = f"the tool call took longer than JOB_TIMEOUT_SECONDS={settings.job_timeout_seconds:g}"
            await publisher.error(msg)
            return finish("failed", msg)
        except asyncio.CancelledError:
            if not await asyncio.shield(ctx["redis"].exists(keys.cancel(job_id))):
                raise  # shutdown: another worker runs it again
            await asyncio.shield(publisher.cancelled())
            return finish("cancelled", "cancelled by request")
        result = finish("completed")
        await publisher.done(usage=TokenUsage(), cost=None, finish_reason=result["finishReason"], model=label)
        return result
    except Exception as e:  # a bug or Redis failure: say so in the stream instead of going silent
        log.exception("tool job %s failed", job_id)
        msg = redact(f"internal error in the worker: {type(e).__name__}: {e}")
        with contextlib.suppress(Exception):
            await publisher.error(msg)
        return finish("failed", msg)
    finally:
        state.running.pop(job_id, None)
        state.jobs_done += 1
