"""The arq job: one model call, streamed, every event published, the result returned to arq.

The job always ends with exactly one terminal event and returns a JobResult (as JSON), whether the
call succeeded, failed or was cancelled, so a caller never waits on a job that ended silently.
A CancelledError that is not a user's cancel (worker shutdown) is re-raised so arq runs the job again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import aclosing
from dataclasses import dataclass, field

from pydantic import ValidationError

from shared import keys, prices
from shared.events import TokenUsage
from shared.models import ChatRequest, JobResult, ResultUsage
from shared.settings import Settings
from worker.providers import ModelCall, Provider, ProviderError, StreamEnd
from worker.publisher import EventWriter

log = logging.getLogger("worker.job")


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


def estimated_usage(request: dict, text: list[str]) -> TokenUsage:
    """About four characters a token: for calls that ended before the provider reported usage."""
    prompt = (
        sum(len(str(v)) for k, v in request.items() if k in ("message", "context")) // 4
        if isinstance(request, dict)
        else 0
    )
    return TokenUsage(prompt_tokens=prompt, completion_tokens=len(text), total_tokens=prompt + len(text))


def build_messages(request: ChatRequest) -> list[dict[str, str]]:
    messages = []
    if request.context:
        messages.append({"role": "system", "content": request.context})
    messages.append({"role": "user", "content": request.message})
    return messages


async def chat(ctx: dict, request: dict) -> dict:
    state: WorkerState = ctx["mcpq"]
    job_id, attempt = ctx["job_id"], ctx["job_try"]
    redis = ctx["redis"]
    publisher = state.writer.publisher(job_id, attempt)
    started = time.monotonic()
    text: list[str] = []
    end: StreamEnd | None = None
    model = "?"

    def result(status: str, error: str | None = None) -> dict:
        usage = end.usage if end and end.usage else estimated_usage(request, text)
        return JobResult(
            job_id=job_id,
            status=status,  # type: ignore[arg-type]
            ai_response="".join(text),
            model=end.model if end else model,
            usage=ResultUsage(
                **usage.model_dump(),
                estimated_cost=prices.cost(
                    end.model if end else model, usage.prompt_tokens, usage.completion_tokens
                ),
            ),
            processing_time=round(time.monotonic() - started, 4),
            finish_reason=end.finish_reason if end else None,
            error=error,
            worker_id=state.worker_id,
            attempt=attempt,
        ).model_dump(mode="json")

    state.running[job_id] = attempt
    try:
        try:
            req = ChatRequest.model_validate(request)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(part) for part in err["loc"])
            detail = err["msg"].removeprefix("Value error, ")
            msg = f"invalid request in the queue: {where + ': ' if where else ''}{detail}"
            await publisher.start(state.worker_id, model)
            await publisher.error(msg)
            return result("failed", msg)
        model = req.model or state.settings.default_model
        call = ModelCall(
            model=model,
            messages=build_messages(req),
            temperature=req.temperature if req.temperature is not None else state.settings.openai_temperature,
            max_tokens=req.max_tokens or state.settings.openai_max_tokens,
        )
        await publisher.start(state.worker_id, model)
        try:
            async with asyncio.timeout(state.settings.job_timeout_seconds):
                async with aclosing(state.provider.stream(call)) as pieces:
                    async for piece in pieces:
                        if isinstance(piece, StreamEnd):
                            end = piece
                        else:
                            text.append(piece)
                            publisher.token(piece)
        except ProviderError as e:
            state.provider_error = e.message if e.retryable else None
            await publisher.error(e.message)
            return result("failed", e.message)
        except TimeoutError:
            msg = (
                f"the model call took longer than JOB_TIMEOUT_SECONDS={state.settings.job_timeout_seconds:g}"
            )
            await publisher.error(msg)
            return result("failed", msg)
        except asyncio.CancelledError:
            if not await asyncio.shield(redis.exists(keys.cancel(job_id))):
                raise  # shutdown: arq puts the job back and another worker runs it again
            await asyncio.shield(publisher.cancelled())
            return result("cancelled", "cancelled by request")
        state.provider_error = None
        if end is None or not text:  # never report an empty answer as a success
            msg = (
                f"the provider returned an empty answer (finish_reason={end.finish_reason if end else None})"
            )
            await publisher.error(msg)
            return result("failed", msg)
        usage = end.usage or estimated_usage(request, text)
        await publisher.done(
            usage=usage,
            cost=prices.cost(end.model, usage.prompt_tokens, usage.completion_tokens),
            finish_reason=end.finish_reason,
            model=end.model,
        )
        return result("completed")
    except Exception as e:  # a bug or Redis failure: say so in the stream instead of going silent
        log.exception("job %s failed", job_id)
        msg = f"internal error in the worker: {type(e).__name__}: {e}"
        try:
            await publisher.error(msg)
        except Exception:
            log.warning("could not publish the error event for job %s", job_id)
        return result("failed", msg)
    finally:
        state.running.pop(job_id, None)
        state.jobs_done += 1
