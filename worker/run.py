"""One attempt of one job, and its single ending.

Every way a job attempt ends (answered, failed, stopped, cancelled, a bug) goes through
`JobRun.end()`, which does the same things in the same order, once:

1. if an event before the ending could not be written by the job's deadline (`publisher.stopped()`),
   the job has failed, whatever it was about to say;
2. build the result (text, usage, cost);
3. write the one terminal event (`done`, `error` or `cancelled`), with the events still on their way
   before it, in order, and wait until all of them are in Redis; a `done` that cannot be written (or
   an event before it) turns the ending into `failed`, so a job never completes while its own events
   are unwritten;
4. count it (usage, cost, budget, the dashboard's history, a lost owner record written again:
   `accounting`, one script, idempotent per job), metrics, the log line; then the result goes back
   to the worker, which stores it as the answer. Run by our worker, the count goes with the result
   in one MULTI (worker/wakeups.py): one round trip, and whoever reads the answer finds it counted.

The terminal event is written before the job is counted so that it is counted with the status it
truly ended with; a caller of the messenger waits for the stored result, which comes after both.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from shared import keys, prices, timeseries, tracing
from shared.errors import JobStopped
from shared.events import TokenUsage
from shared.models import ToolCallRecord
from shared.settings import OPERATOR
from worker import accounting, journal

log = logging.getLogger("worker.job")

PUBLISH_GRACE_SECONDS = 10.0  # past JOB_TIMEOUT_SECONDS, for the last events (arq's backstop is +30 s)


class JobRun:
    """What one job attempt has produced so far, and the one way it ends."""

    def __init__(
        self,
        ctx: dict,
        request: dict,
        *,
        model: str,
        span=None,
        counted: bool = True,
        started_at: float | None = None,
    ):
        # when the job's function began (its start event's ts, as a peer queue's job stamps its first
        # line: the reads and checks before the event is queued are the job's, not the queue's)
        self.started_at = time.time() if started_at is None else started_at
        self.state = ctx["mcpq"]
        self.settings = self.state.settings
        self.redis = ctx["redis"]
        self.job_id: str = ctx["job_id"]
        self.job_try: int = ctx["job_try"]  # arq's count, reset when the job pauses
        self.attempt: int = self.job_try  # the job's: rebase() adds the attempts before its last pause
        self.request = request if isinstance(request, dict) else {}
        self.span = span
        self.counted = counted  # False: no model ran (a tool call job), nothing to count
        self.publisher = self.state.writer.publisher(
            self.job_id, self.attempt, patience=self.settings.job_timeout_seconds + PUBLISH_GRACE_SECONDS
        )
        self.started = time.monotonic()
        self.first_token_s: float | None = None  # from the start to the model's first token
        self.tenant = OPERATOR
        self.model = model
        self.fallback_from: str | None = None  # the model first asked, when another one answered
        self.text: list[str] = []
        self.finish_reason: str | None = None
        self.tool_calls: list[ToolCallRecord] = []
        self.usage: Callable[[str], TokenUsage] = _no_usage  # by the ending status
        self.result: dict | None = None
        self.journaled = False  # True: a tool loop, whose journal goes once the job has its ending
        # given by the worker (worker/wakeups.py): what it writes with the job's result, in one transaction
        self.ending: dict | None = ctx.get("ending")
        self.state.running[self.job_id] = self.attempt
        self.task: asyncio.Task = ctx.get("task") or asyncio.current_task()  # type: ignore[assignment]
        if self.task is not None:  # (the worker's ctx names it)
            self.state.tasks[self.job_id] = self.task  # (the heartbeat stops a run another worker took)

    def rebase(self, base: int) -> None:
        """The job paused `base` attempts in (worker/pause.py): this attempt is numbered after them."""
        if base:
            self.attempt = self.publisher.attempt = base + self.job_try
            self.state.running[self.job_id] = self.attempt

    def close(self) -> None:
        """This worker no longer runs the attempt (once: a paused job closes before it returns)."""
        if self.state.running.get(self.job_id) == self.attempt:  # not a later attempt of the same job
            del self.state.running[self.job_id]
            self.state.tasks.pop(self.job_id, None)
            self.state.jobs_done += 1

    def first_token(self) -> None:
        """The model's first token came now: its delay goes to the metrics and the dashboard's history."""
        self.first_token_s = time.monotonic() - self.started
        self.state.metrics.first_token.observe(self.first_token_s)

    async def end(self, status: str, error: str | None = None) -> dict:
        """The job's one ending (see the module's docstring); never raises, answers the result."""
        if self.result is not None:
            return self.result
        if (stopped := self.publisher.stopped()) is not None:
            status, error = "failed", stopped.message
        # the events still on their way go in the terminal event's write, which waits for all of them
        # (waiting for them first cost every job one more round trip)
        usage = self.usage(status)
        result = self._result(status, error, usage)
        try:
            # (a cancel does not stop its write: it cancels only this wait, the write is the writer's
            # task's; asyncio.shield did the same with a future and two callbacks more)
            await self._terminal(result, usage)
        except JobStopped as e:
            if status == "completed":
                result = self._result("failed", e.message, usage)
        self.result = result
        if self.journaled:
            await journal.ended(self.redis, self.job_id)
        await self._count()
        return self.result

    def _result(self, status: str, error: str | None, usage: TokenUsage) -> dict:
        """The job's JobResult as JSON (`JobResult(...).model_dump(mode="json")`, made as a dict: the
        model and its dump were ~10 µs of a no-op job; tests/worker/test_job.py checks they agree)."""
        return result_json(
            job_id=self.job_id, status=status, ai_response="".join(self.text), model=self.model,
            fallback_from=self.fallback_from, usage=usage,
            estimated_cost=prices.cost(self.model, usage.prompt_tokens, usage.completion_tokens),
            processing_time=round(time.monotonic() - self.started, 4),
            finish_reason=self.finish_reason if status == "completed" else None, error=error,
            worker_id=self.state.worker_id, attempt=self.attempt, tool_calls=self.tool_calls,
        )  # fmt: skip

    def _terminal(self, result: dict, usage: TokenUsage) -> asyncio.Future[None]:
        """The terminal event, queued now; its write's future (raises JobStopped: it never can be)."""
        cost = result["usage"]["estimatedCost"]
        if result["status"] == "completed":
            return self.publisher.done(
                usage=usage,
                cost=cost,
                finish_reason=result["finishReason"],
                model=self.model,
                fallback_from=self.fallback_from,
            )
        if result["status"] == "cancelled":
            return self.publisher.cancelled(usage=usage, cost=cost)
        return self.publisher.error(result["error"] or "failed", usage=usage, cost=cost)

    async def _count(self) -> None:
        result = self.result
        assert result is not None
        status, usage = result["status"], result["usage"]
        if self.counted:  # with its minute of the dashboard's history, once; and a lost owner record again
            try:
                prepared = accounting.prepare(self.redis, result, self.request, tenant=self.tenant,
                    history_ttl=self.settings.history_ttl_seconds, first_token_s=self.first_token_s)  # fmt: skip
                # a first attempt's count reads nothing (no dead attempts): prepare returns without a
                # pause, where no cancel can reach it, so it needs no shield (a task, two loop turns)
                count = await (prepared if accounting.reads_nothing(result) else asyncio.shield(prepared))
                if self.ending is not None:  # the worker counts it in the transaction that stores the result
                    self.ending["count"] = count
                else:
                    await asyncio.shield(accounting.write(self.redis, count))
            except Exception as e:  # the answer still goes out; only the totals and the chart miss it
                log.warning("could not count the usage of job %s: %s", self.job_id, type(e).__name__)
        else:
            await self._history(result)
        self.state.metrics.job_ended(result)
        if self.span is not None:
            self.span.set_attributes({"gen_ai.request.model": self.model, "mcpq.outcome": status})
        if not log.isEnabledFor(logging.INFO):  # (LOG_LEVEL=WARNING: its fields are not even gathered)
            return
        log.info(
            "job %s %s", self.job_id, status,
            extra={"job_id": self.job_id, "worker_id": self.state.worker_id, "model": self.model,
                   "outcome": status, "attempt": self.attempt, "prompt_tokens": usage["promptTokens"],
                   "completion_tokens": usage["completionTokens"], "total_tokens": usage["totalTokens"],
                   "cost_usd": usage["estimatedCost"], "duration_s": result["processingTime"],
                   "error": result["error"], "trace_id": tracing.trace_id(self.span) if self.span else None},
        )  # fmt: skip

    async def _history(self, result: dict) -> None:
        usage = result["usage"]
        try:
            await asyncio.shield(
                timeseries.record_job(
                    self.redis, status=result["status"], model=result.get("model") or "?",
                    prompt_tokens=usage["promptTokens"], completion_tokens=usage["completionTokens"],
                    cost=usage.get("estimatedCost"), first_token_s=self.first_token_s,
                    counted=keys.usage_counted(self.job_id), counted_ttl=accounting.COUNTED_TTL_SECONDS,
                )
            )  # fmt: skip
        except Exception as e:  # only the dashboard's chart misses it
            log.warning("could not add job %s to the history: %s", self.job_id, type(e).__name__)


def _no_usage(status: str) -> TokenUsage:
    return TokenUsage()


def result_json(
    *, job_id: str, status: str, ai_response: str, model: str, fallback_from: str | None, usage: TokenUsage,
    estimated_cost: float | None, processing_time: float, finish_reason: str | None, error: str | None,
    worker_id: str, attempt: int, tool_calls: list[ToolCallRecord],
) -> dict:  # fmt: skip
    """`JobResult(...).model_dump(mode="json")` of an ending, the same keys in the same order."""
    return {
        "jobId": job_id, "status": status, "aiResponse": ai_response, "model": model,
        "fallbackFrom": fallback_from,
        "usage": {"promptTokens": usage.prompt_tokens, "completionTokens": usage.completion_tokens,
                  "totalTokens": usage.total_tokens, "estimatedCost": estimated_cost, "estimated": usage.estimated},
        "processingTime": processing_time, "finishReason": finish_reason, "error": error, "workerId": worker_id,
        "attempt": attempt, "toolCalls": [call.model_dump(mode="json") for call in tool_calls],
        "queuePosition": None, "waitingFor": None, "inputRequest": None,
    }  # fmt: skip
