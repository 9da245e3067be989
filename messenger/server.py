"""The MCP tools. Each model call becomes an arq job; its tokens come back as progress notifications.

Tools are thin: they validate, call the JobClient, and turn its errors into ToolErrors a person can
act on. The Runtime (Redis, hub, embedded worker) is opened once per process, not per MCP session.
"""

import time
from typing import Annotated, Any, Literal

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel
from starlette.requests import Request
from starlette.responses import JSONResponse

from messenger import usage
from messenger.aggregate import add_exposed_tools
from messenger.calls import caller_from, chat_request, final_answer, reader_from, tool_notice
from messenger.calls import guarded as guarded_by
from messenger.collector import Transcript
from messenger.metrics import metrics_route
from messenger.resources import add_resources
from messenger.runtime import Runtime, health, mcp_server_rows, models
from messenger.tasks import JobTasks
from shared.events import Event, ToolCallEvent, ToolResultEvent
from shared.models import (
    ContextText,
    ConversationId,
    JobResult,
    MaxTokens,
    McpServers,
    MessageText,
    ModelDefaults,
    ModelName,
    Temperature,
)

PROGRESS_INTERVAL = 0.05  # seconds between progress notifications: tokens are batched, not one per message
JobId = Annotated[str, Field(description="The job id returned by submit_message or send_message_to_ai.")]
StatusFilter = Literal["queued", "running", "completed", "failed", "cancelled"]


class JobList(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True)

    queue_depth: int
    jobs: list[JobResult]


class ProgressRelay:
    """Sends a job's tokens as MCP progress notifications, at most one per PROGRESS_INTERVAL.

    `progress` counts tokens received; `message` carries the text that arrived since the previous
    notification (joined, the messages are the answer). While a job waits in the queue, a keep-alive
    notification goes out on each idle tick so clients that reset their timeout on progress wait on.
    """

    def __init__(self, ctx: Context, total: int | None):
        self.ctx = ctx
        self.total = total
        self.pending: list[str] = []
        self.last_sent = 0.0
        self.progress = 0.0

    async def __call__(self, event: Event | None, transcript: Transcript) -> None:
        if event is None:
            await self._send(f"[{transcript.status}: waiting]", transcript.tokens, keepalive=True)
            return
        if event.type == "start" and event.attempt > 1:
            self.pending.clear()  # a re-run: its tokens replace the old attempt's
            await self._send(f"[restarted on another worker, attempt {event.attempt}]", 0, keepalive=True)
        if event.type == "token":
            self.pending.append(event.text)
        elif isinstance(event, ToolCallEvent | ToolResultEvent):
            await self._flush(transcript)
            await self._send(tool_notice(event), transcript.tokens, keepalive=True)
            return
        if event.type != "token" or time.monotonic() - self.last_sent >= PROGRESS_INTERVAL:
            await self._flush(transcript)

    async def _flush(self, transcript: Transcript) -> None:
        if self.pending:
            text, self.pending = "".join(self.pending), []
            await self._send(text, transcript.tokens)

    async def _send(self, message: str, tokens: int, keepalive: bool = False) -> None:
        # the spec wants progress to rise with every notification; keep-alives add a hair
        self.progress = max(float(tokens), self.progress + (0.001 if keepalive else 0))
        self.last_sent = time.monotonic()
        await self.ctx.report_progress(self.progress, self.total, message)


def caller_of(ctx: Context, auth_on: bool) -> str:
    """Who is calling: a digest of the API key the HTTP layer already verified, else anonymous."""
    return caller_from(ctx.headers, auth_on)


def build_server(runtime: Runtime) -> MCPServer:
    settings = runtime.settings
    jobs = runtime.jobs
    auth_on = settings.mcp_api_key is not None
    tasks = JobTasks(runtime, tool="send_message_to_ai")
    mcp = MCPServer(
        "mcp-queue",
        version="0.1.0",
        instructions=(
            "Model calls run as jobs on a Redis queue. send_message_to_ai waits and streams tokens as "
            "progress (or runs as an MCP task); submit_message returns a job id at once to poll with "
            "get_job or wait_for_job."
        ),
        extensions=[tasks],
        middleware=[runtime.metrics.middleware, tasks.middleware],
    )

    def reader_of(ctx: Context) -> str | None:
        return reader_from(ctx.headers, auth_on)

    async def guarded(coro):
        return await guarded_by(coro, settings)

    @mcp.tool()
    async def send_message_to_ai(
        message: MessageText,
        ctx: Context,
        context: ContextText = None,
        model: ModelName = None,
        temperature: Temperature = None,
        max_tokens: MaxTokens = None,
        conversation_id: ConversationId = None,
        mcp_servers: McpServers = None,
    ) -> JobResult:
        """Ask the model and wait for the whole answer; tokens stream as progress notifications.

        The call runs as a queued job. If the wait is cut short the job goes on: fetch it later with
        get_job or wait_for_job (its id is in every result)."""
        request = chat_request(
            message=message, context=context, model=model, temperature=temperature,
            max_tokens=max_tokens, conversation_id=conversation_id, mcp_servers=mcp_servers,
        )  # fmt: skip
        relay = ProgressRelay(ctx, request.max_tokens or settings.openai_max_tokens)
        started: list[str] = []

        async def on_event(event, transcript):
            if not started:
                started.append(transcript.job_id)
            await relay(event, transcript)

        try:
            result = await guarded(
                jobs.run(
                    request,
                    on_event,
                    timeout=settings.job_timeout_seconds + 60,
                    caller=caller_of(ctx, auth_on),
                )
            )
        except anyio.get_cancelled_exc_class():
            if started:  # the caller gave up: stop the work it no longer wants
                with anyio.CancelScope(shield=True):
                    await jobs.cancel(started[0])
            raise
        return final_answer(result)

    @mcp.tool()
    async def submit_message(
        message: MessageText,
        ctx: Context,
        context: ContextText = None,
        model: ModelName = None,
        temperature: Temperature = None,
        max_tokens: MaxTokens = None,
        conversation_id: ConversationId = None,
        mcp_servers: McpServers = None,
    ) -> JobResult:
        """Queue a model call and return its job id at once; poll with get_job or wait_for_job."""
        request = chat_request(
            message=message, context=context, model=model, temperature=temperature,
            max_tokens=max_tokens, conversation_id=conversation_id, mcp_servers=mcp_servers,
        )  # fmt: skip
        job_id = await guarded(jobs.submit(request, caller_of(ctx, auth_on)))
        return JobResult(job_id=job_id, status="queued")

    @mcp.tool()
    async def get_job(job_id: JobId, ctx: Context) -> JobResult:
        """A job's status, its text so far, and its result once it has ended."""
        return await guarded(jobs.get(job_id, reader_of(ctx)))

    @mcp.tool()
    async def wait_for_job(
        job_id: JobId,
        ctx: Context,
        timeout_seconds: Annotated[
            float, Field(gt=0, le=3600, description="Give up waiting after this.")
        ] = 60,
    ) -> JobResult:
        """Wait until a job ends (or the timeout passes) and return it; tokens stream as progress."""
        relay = ProgressRelay(ctx, None)
        return await guarded(jobs.wait(job_id, timeout_seconds, on_event=relay, reader=reader_of(ctx)))

    @mcp.tool()
    async def cancel_job(job_id: JobId, ctx: Context) -> JobResult:
        """Stop a job. A queued job never starts; a running one stops calling the model."""
        return await guarded(jobs.cancel(job_id, reader_of(ctx)))

    @mcp.tool()
    async def list_jobs(
        ctx: Context,
        status: Annotated[StatusFilter | None, Field(description="Only jobs in this state.")] = None,
        limit: Annotated[int, Field(ge=1, le=500)] = 50,
    ) -> JobList:
        """Recent jobs, newest first: queued, running and finished."""
        found = await guarded(jobs.list(status, limit, reader_of(ctx)))
        return JobList(queue_depth=await guarded(jobs.queue_depth()), jobs=found)

    @mcp.tool()
    async def list_mcp_servers() -> dict[str, Any]:
        """The MCP servers a request may name in `mcp_servers` (MCP_SERVERS), and which of them this
        endpoint also serves as `server/tool`."""
        return {"servers": mcp_server_rows(runtime)}

    @mcp.tool()
    async def list_models() -> dict[str, Any]:
        """The configured provider's models, with prices in USD per million tokens."""
        return models(settings)

    @mcp.tool()
    async def check_health() -> dict[str, Any]:
        """Redis, live workers, queue depth and whether the provider can be reached."""
        return await health(runtime)

    @mcp.tool()
    async def get_ai_usage_stats() -> dict[str, Any]:
        """Requests, tokens, cost (USD) per model and per day, average and p95 latency, from all workers."""
        return await guarded(usage.usage_stats(runtime.redis))

    @mcp.tool()
    async def get_conversation_history(
        conversation_id: Annotated[
            str | None, Field(description="Omit to list the most recent conversations.")
        ] = None,
        limit: Annotated[int, Field(ge=1, le=1000)] = 50,
    ) -> dict[str, Any]:
        """A conversation's turns with their tokens and cost, or the recent conversations."""
        if conversation_id is None:
            return await guarded(usage.conversations(runtime.redis, limit))
        chat_request(message="-", conversation_id=conversation_id)  # same name rules as requests
        return await guarded(usage.conversation(runtime.redis, conversation_id, limit))

    @mcp.tool()
    async def get_received_messages(limit: Annotated[int, Field(ge=1, le=1000)] = 50) -> dict[str, Any]:
        """What the workers processed, newest first: job, worker, model, outcome, tokens, cost."""
        return await guarded(usage.received_messages(runtime.redis, limit))

    @mcp.tool()
    async def configure_ai_model(
        default_model: ModelName = None,
        temperature: Temperature = None,
        max_tokens: MaxTokens = None,
    ) -> dict[str, Any]:
        """Set the defaults every worker uses from its next job on (unset fields keep their value)."""
        try:
            changes = ModelDefaults(
                default_model=default_model, temperature=temperature, max_tokens=max_tokens
            )
        except ValidationError as e:
            err = e.errors()[0]
            raise ToolError(
                f"invalid {'.'.join(map(str, err['loc']))}: {err['msg'].removeprefix('Value error, ')}"
            ) from None
        stored = await guarded(usage.configure_defaults(runtime.redis, changes))
        return {
            "stored": stored.model_dump(),
            "effective": {
                "default_model": stored.default_model or settings.default_model,
                "temperature": stored.temperature
                if stored.temperature is not None
                else settings.openai_temperature,
                "max_tokens": stored.max_tokens or settings.openai_max_tokens,
            },
        }

    add_resources(mcp, runtime, reader_of)
    add_exposed_tools(mcp, runtime, auth_on)

    @mcp.custom_route("/health", methods=["GET"])
    async def health_route(_: Request) -> JSONResponse:
        report = await health(runtime)
        return JSONResponse(report, status_code=200 if report["redis"]["ok"] else 503)

    mcp.custom_route("/metrics", methods=["GET"])(metrics_route(runtime))
    return mcp
