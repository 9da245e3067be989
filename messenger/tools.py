"""The MCP tools, one method each on `QueueTools`, so each can be called and tested without a server.

Tools are thin: they validate, call the queue (messenger/queue.py) or the JobClient, and turn every
McpQueueError into a one-line ToolError (calls.guarded). Who is calling comes from the request's
headers in one place, `QueueTools.identity`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from messenger import usage
from messenger.approvals import respond
from messenger.calls import chat_request, final_answer, guarded, tenant_from
from messenger.client_log import LevelStore, job_log
from messenger.health import health, mcp_server_rows, models, queue_counts, seen_by_tenant
from messenger.progress import ProgressRelay
from messenger.runtime import Runtime
from messenger.tenants import TENANT_NAME, Tenant
from shared import dead_letter
from shared.approvals import NOTE_MAX_CHARS
from shared.errors import validation_message
from shared.models import (
    ContextText,
    ConversationId,
    JobResult,
    MaxTokens,
    McpServers,
    MessageText,
    ModelDefaults,
    ModelName,
    QueuePriority,
    Temperature,
    effective,
)

JobId = Annotated[str, Field(description="The job id returned by submit_message or send_message_to_ai.")]
StatusFilter = Literal["queued", "running", "input_required", "completed", "failed", "cancelled"]
WaitSeconds = Annotated[float, Field(gt=0, le=3600, description="Give up waiting after this.")]


class JobList(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True)

    queue_depth: int = Field(description="Jobs queued and not yet started, of every caller.")
    running: int = Field(description="Jobs a live worker is running now, of every caller.")
    jobs: list[JobResult]


class QueueTools:
    """Every MCP tool of the messenger; `build_server` registers each public coroutine method."""

    NAMES = (
        "send_message_to_ai", "submit_message", "get_job", "wait_for_job", "cancel_job", "list_jobs",
        "list_mcp_servers", "list_models", "check_health", "get_ai_usage_stats",
        "get_conversation_history", "get_received_messages", "configure_ai_model", "list_dead_jobs",
        "requeue_dead_job", "respond_to_job",
    )  # fmt: skip

    def __init__(self, runtime: Runtime, log_levels: LevelStore | None = None):
        self.runtime = runtime
        self.log_levels = log_levels  # the callers' MCP log levels (None: no lifecycle log messages)
        self.settings = runtime.settings
        self.jobs = runtime.jobs

    def identity(self, ctx: Context) -> Tenant:
        """The caller's tenant: `.name` owns the jobs it submits, `.reader` limits which jobs it may
        see (None for the operator: stdio, no keys configured, or MCP_ADMIN_KEY)."""
        return tenant_from(ctx.headers, self.settings)

    async def _guard(self, coro):
        return await guarded(coro, self.settings)

    async def send_message_to_ai(
        self,
        message: MessageText,
        ctx: Context,
        context: ContextText = None,
        model: ModelName = None,
        temperature: Temperature = None,
        max_tokens: MaxTokens = None,
        conversation_id: ConversationId = None,
        mcp_servers: McpServers = None,
        priority: QueuePriority = None,
    ) -> JobResult:
        """Ask the model and wait for the whole answer; tokens stream as progress notifications.

        The call runs as a queued job. If the wait is cut short the job goes on: fetch it later with
        get_job or wait_for_job (its id is in every result). A job that waits for approval of a tool
        call returns at once with status input_required and the question: answer with respond_to_job."""
        request = chat_request(
            message=message, context=context, model=model, temperature=temperature,
            max_tokens=max_tokens, conversation_id=conversation_id, mcp_servers=mcp_servers,
            priority=priority,
        )  # fmt: skip
        total = request.max_tokens or self.settings.openai_max_tokens
        relay = ProgressRelay(ctx, total, job_log(ctx, self.log_levels))
        timeout = self.settings.job_timeout_seconds + 60
        caller = self.identity(ctx).name
        # the caller gave up (dropped the stream, or cancelled the call): stop the work it no longer wants
        result = await self._guard(
            self.jobs.run(request, relay, timeout=timeout, caller=caller, cancel_when_dropped=True)
        )
        return final_answer(result)

    async def submit_message(
        self,
        message: MessageText,
        ctx: Context,
        context: ContextText = None,
        model: ModelName = None,
        temperature: Temperature = None,
        max_tokens: MaxTokens = None,
        conversation_id: ConversationId = None,
        mcp_servers: McpServers = None,
        priority: QueuePriority = None,
    ) -> JobResult:
        """Queue a model call and return its job id at once; poll with get_job or wait_for_job."""
        request = chat_request(
            message=message, context=context, model=model, temperature=temperature,
            max_tokens=max_tokens, conversation_id=conversation_id, mcp_servers=mcp_servers,
            priority=priority,
        )  # fmt: skip
        job_id = await self._guard(self.runtime.queue.submit(request, caller=self.identity(ctx).name))
        return JobResult(job_id=job_id, status="queued")

    async def get_job(self, job_id: JobId, ctx: Context) -> JobResult:
        """A job's status, its text so far, and its result once it has ended."""
        return await self._guard(self.jobs.get(job_id, self.identity(ctx).reader))

    async def wait_for_job(self, job_id: JobId, ctx: Context, timeout_seconds: WaitSeconds = 60) -> JobResult:
        """Wait until a job ends (or the timeout passes) and return it; tokens stream as progress."""
        relay = ProgressRelay(ctx, None, job_log(ctx, self.log_levels))
        reader = self.identity(ctx).reader
        return await self._guard(self.jobs.wait(job_id, timeout_seconds, on_event=relay, reader=reader))

    async def cancel_job(self, job_id: JobId, ctx: Context) -> JobResult:
        """Stop a job. A queued job never starts; a running one stops calling the model."""
        return await self._guard(self.jobs.cancel(job_id, self.identity(ctx).reader))

    async def respond_to_job(
        self,
        job_id: JobId,
        approve: Annotated[
            bool, Field(description="true: run the tool call; false: the model is told you declined.")
        ],
        ctx: Context,
        note: Annotated[
            str | None, Field(max_length=NOTE_MAX_CHARS, description="Said to the model with the answer.")
        ] = None,
        key: Annotated[
            str | None, Field(description="The question's key (inputRequest.key); omit: the one it waits on.")
        ] = None,
    ) -> JobResult:
        """Answer a job that waits for your approval of a tool call (status input_required); it goes on
        at once on any worker. Follow it with wait_for_job."""
        caller = self.identity(ctx).reader
        await self._guard(respond(self.jobs, job_id, approve=approve, note=note, key=key, reader=caller))
        return await self._guard(self.jobs.get(job_id, caller))

    async def list_jobs(
        self,
        ctx: Context,
        status: Annotated[StatusFilter | None, Field(description="Only jobs in this state.")] = None,
        limit: Annotated[int, Field(ge=1, le=500)] = 50,
    ) -> JobList:
        """Recent jobs, newest first: queued, running and finished."""
        found = await self._guard(self.jobs.list(status, limit, self.identity(ctx).reader))
        waiting, running = await self._guard(queue_counts(self.runtime.redis))
        return JobList(queue_depth=waiting, running=running, jobs=found)

    async def list_mcp_servers(self) -> dict[str, Any]:
        """The MCP servers a request may name in `mcp_servers` (MCP_SERVERS), and which of them this
        endpoint also serves as `server/tool`."""
        return {"servers": mcp_server_rows(self.runtime)}

    async def list_models(self) -> dict[str, Any]:
        """The configured provider's models, with prices in USD per million tokens and where each price
        came from (price_source: MODEL_PRICES, genai-prices x.y, built-in; None: unpriced)."""
        return models(self.settings)

    async def check_health(self, ctx: Context) -> dict[str, Any]:
        """Redis, live workers, jobs waiting (queued, not started) and running, and whether the provider
        can be reached."""
        report = await health(self.runtime)
        return report if self.identity(ctx).operator else seen_by_tenant(report)

    async def get_ai_usage_stats(self, ctx: Context) -> dict[str, Any]:
        """Requests, tokens, cost (USD) per model and per day, average and p95 latency, from all workers:
        the caller's own; the operator's answer has the totals over every tenant and each tenant's."""
        return await self._guard(usage.usage_stats(self.runtime.redis, tenant=self.identity(ctx)))

    async def get_conversation_history(
        self,
        ctx: Context,
        conversation_id: Annotated[
            str | None, Field(description="Omit to list the most recent conversations.")
        ] = None,
        limit: Annotated[int, Field(ge=1, le=1000)] = 50,
        tenant: Annotated[
            str | None, Field(description="Operator only: whose conversation to read (default: your own).")
        ] = None,
    ) -> dict[str, Any]:
        """A conversation's turns with their tokens and cost, or the recent conversations: your own
        (the operator's list has every tenant's)."""
        caller = self.identity(ctx)
        if tenant is not None and tenant != caller.name and not caller.operator:
            raise ToolError("only the operator (MCP_ADMIN_KEY) may read another tenant's conversations")
        if tenant is not None and not TENANT_NAME.fullmatch(tenant):
            raise ToolError(f"invalid tenant: {tenant[:80]!r} is not a tenant name")
        if conversation_id is None:
            return await self._guard(usage.conversations(self.runtime.redis, limit, caller))
        chat_request(message="-", conversation_id=conversation_id)  # same name rules as requests
        found = usage.conversation(self.runtime.redis, tenant or caller.name, conversation_id, limit)
        return await self._guard(found)

    async def get_received_messages(
        self, ctx: Context, limit: Annotated[int, Field(ge=1, le=1000)] = 50
    ) -> dict[str, Any]:
        """What the workers processed for you, newest first: job, worker, model, outcome, tokens, cost
        (the operator sees every tenant's)."""
        return await self._guard(usage.received_messages(self.runtime.redis, limit, self.identity(ctx)))

    async def configure_ai_model(
        self,
        ctx: Context,
        default_model: ModelName = None,
        temperature: Temperature = None,
        max_tokens: MaxTokens = None,
    ) -> dict[str, Any]:
        """Set the defaults your requests use from the next job on (unset fields keep their value).

        A tenant's defaults apply to its own requests only, over the global ones; the operator
        (MCP_ADMIN_KEY, or any local caller) sets the global defaults every tenant starts from."""
        try:
            changes = ModelDefaults(
                default_model=default_model, temperature=temperature, max_tokens=max_tokens
            )
        except ValidationError as e:
            raise ToolError(validation_message(e)) from None
        caller = self.identity(ctx)
        stored = await self._guard(usage.configure_defaults(self.runtime.redis, changes, caller))
        applied = await self._guard(usage.model_defaults(self.runtime.redis, caller.name))
        settings = self.settings
        chosen = effective(None, applied, settings)
        scope = "global" if caller.operator else f"tenant {caller.name}"
        shown = {
            "default_model": chosen.model,
            "temperature": chosen.temperature,
            "max_tokens": chosen.max_tokens,
        }
        return {"scope": scope, "stored": stored.model_dump(), "effective": shown}

    def _operator_only(self, ctx: Context, what: str) -> None:
        if not self.identity(ctx).operator:
            raise ToolError(f"only the operator (MCP_ADMIN_KEY) may {what}")

    async def list_dead_jobs(self, ctx: Context, limit: int = 100) -> dict[str, Any]:
        """Operator only: queue entries no worker could run (mcpq:dead), newest first, with the reason,
        the raw job value (first 2 KB) and the function; requeue one after fixing its cause."""
        self._operator_only(ctx, "list dead-letter jobs")
        entries = await self._guard(dead_letter.list_dead(self.runtime.redis, limit=max(1, min(limit, 1000))))
        return {"jobs": [e.as_dict() for e in entries]}

    async def requeue_dead_job(self, job_id: JobId, ctx: Context) -> dict[str, Any]:
        """Operator only: put a dead-letter job back on the queue exactly as it was stored (a fresh start)."""
        self._operator_only(ctx, "requeue dead-letter jobs")
        await self._guard(dead_letter.requeue(self.runtime.redis, job_id))
        return {"job_id": job_id, "status": "queued"}
