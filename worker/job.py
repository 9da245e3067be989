"""The arq job: one model call, streamed, every event published, the result returned to arq.

The job always ends with exactly one terminal event and returns a JobResult (as JSON), whether the
call succeeded, failed or was cancelled, so a caller never waits on a job that ended silently; the
ending is counted once (usage, cost, budget, history). A CancelledError that is not a user's cancel
(worker shutdown) is re-raised so arq runs the job again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import aclosing
from dataclasses import dataclass, field

from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from shared import keys, prices, tracing
from shared.events import TokenUsage
from shared.models import ChatRequest, JobResult, ModelDefaults, ResultUsage
from shared.settings import Settings
from worker import accounting
from worker.history import earlier_turns
from worker.metrics import WorkerMetrics
from worker.providers import ModelCall, Provider, ProviderError, StreamEnd
from worker.publisher import EventWriter

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
    defaults: ModelDefaults = field(default_factory=ModelDefaults)
    defaults_read_at: float = float("-inf")  # monotonic; -inf: read before the next job
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)

    def __post_init__(self) -> None:
        self.metrics.watch_running(lambda: len(self.running))

    async def model_defaults(self, redis) -> ModelDefaults:
        if time.monotonic() - self.defaults_read_at > DEFAULTS_MAX_AGE:
            raw = await redis.get(keys.MODEL_DEFAULTS)
            try:
                self.defaults = ModelDefaults.model_validate_json(raw) if raw else ModelDefaults()
            except ValidationError:
                log.warning("ignoring invalid %s: %.200r", keys.MODEL_DEFAULTS, raw)
            self.defaults_read_at = time.monotonic()
        return self.defaults


def estimated_usage(request: dict, text: list[str]) -> TokenUsage:
    """About four characters a token: for calls that ended before the provider reported usage."""
    prompt = (
        sum(len(str(request.get(k) or "")) for k in ("message", "context")) // 4
        if isinstance(request, dict)
        else 0
    )
    return TokenUsage(prompt_tokens=prompt, completion_tokens=len(text), total_tokens=prompt + len(text))


def build_messages(request: ChatRequest, history: list[dict[str, str]]) -> list[dict[str, str]]:
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
    model = "?"

    async def finish(status: str, error: str | None = None) -> dict:
        """The job's result; counted once in the usage totals (and history, when completed)."""
        name = end.model if end else model
        if end and end.usage:
            usage = end.usage
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
        ).model_dump(mode="json")
        state.metrics.job_ended(result)
        span.set_attributes({"gen_ai.request.model": name, "mcpq.outcome": status})
        try:
            await asyncio.shield(
                accounting.record(redis, result, request if isinstance(request, dict) else {},
                                  history_ttl=settings.history_ttl_seconds)
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
    try:
        try:
            req = ChatRequest.model_validate(request)
        except ValidationError as e:
            msg = invalid_request_message(e)
            await publisher.start(state.worker_id, model)
            result = await finish("failed", msg)
            await publisher.error(msg)
            return result
        defaults = await state.model_defaults(redis)
        model = req.model or defaults.default_model or settings.default_model
        history = []
        if req.conversation_id:
            history = await earlier_turns(
                redis,
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
                async with aclosing(state.provider.stream(call)) as pieces:
                    async for piece in pieces:
                        if isinstance(piece, StreamEnd):
                            end = piece
                        else:
                            if not text:
                                state.metrics.first_token.observe(time.monotonic() - started)
                            text.append(piece)
                            publisher.token(piece)
        except ProviderError as e:
            state.provider_error = e.message if e.retryable else None
            result = await finish("failed", e.message)
            await publisher.error(e.message)
            return result
        except TimeoutError:
            msg = f"the model call took longer than JOB_TIMEOUT_SECONDS={settings.job_timeout_seconds:g}"
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
        usage = end.usage or estimated_usage(request, text)
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
        msg = f"internal error in the worker: {type(e).__name__}: {e}"
        try:
            await publisher.error(msg)
        except Exception:
            log.warning("could not publish the error event for job %s", job_id)
        return await finish("failed", msg)
    finally:
        state.running.pop(job_id, None)
        state.jobs_done += 1
