"""What every MCP call shares, tool or task: who is calling, the request it carries, and how queue
failures and job endings read to the caller."""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

import pydantic_core
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, TextContent
from pydantic import ValidationError
from redis.exceptions import RedisError, ResponseError

from messenger.tenants import Tenant, TooManyCredentials, tenants_for
from shared import damaged
from shared.connection import redacted, tls_refusal
from shared.errors import McpQueueError, QueueUnavailable, validation_message
from shared.models import ChatRequest, JobResult
from shared.sentinel import UnknownMaster
from shared.settings import Settings


def tenant_from(headers: Mapping[str, str] | None, settings: Settings) -> Tenant:
    """Who is calling. Over HTTP the auth layer already refused a missing or wrong key and more than
    one credential; without headers (stdio, in-process) the caller is the local operator."""
    try:
        tenant = tenants_for(settings).from_request(headers)
    except TooManyCredentials as e:
        raise ToolError(e.message) from None
    if tenant is None:
        raise ToolError("unauthorized: this request carries no valid API key")
    return tenant


_UNSET = object()
_request_headers: ContextVar[Any] = ContextVar("mcpq_request_headers", default=_UNSET)


async def remember_headers(ctx: Any, call_next) -> Any:
    """MCP middleware: keeps the request's headers (None on stdio) for the handlers that get no
    Context, such as static resources, so they too answer for the caller's tenant only."""
    token = _request_headers.set(getattr(getattr(ctx, "request", None), "headers", None))
    try:
        return await call_next(ctx)
    finally:
        _request_headers.reset(token)


def current_tenant(settings: Settings) -> Tenant:
    """The caller of the MCP request being handled; fails closed outside remember_headers."""
    headers = _request_headers.get()
    if headers is _UNSET:
        raise ToolError("unauthorized: the caller of this request is unknown")
    return tenant_from(headers, settings)


def caller_from(headers: Mapping[str, str] | None, settings: Settings) -> str:
    """The tenant name a new job is kept under."""
    return tenant_from(headers, settings).name


def reader_from(headers: Mapping[str, str] | None, settings: Settings) -> str | None:
    """Whose jobs a request may see: its tenant's, or every job for the operator."""
    return tenant_from(headers, settings).reader


def chat_request(**fields) -> ChatRequest:
    """The tools' arguments as a ChatRequest, or a ToolError naming the first bad one."""
    try:
        return ChatRequest(**fields)
    except ValidationError as e:
        raise ToolError(validation_message(e)) from None


def unavailable(e: BaseException, settings: Settings) -> McpQueueError:
    """A Redis or socket failure as the error a person reads (the URL without its password); a
    command Redis answered with an error is not Redis being unreachable."""
    if isinstance(e, ResponseError):
        return McpQueueError(damaged.refused(e))
    if (refused := tls_refusal(e, settings.redis_url)) is not None:  # a certificate rotated under us
        return QueueUnavailable(refused)
    if isinstance(e, UnknownMaster):  # REDIS_URL names a master no Sentinel watches: say which
        return QueueUnavailable(str(e))
    return QueueUnavailable(
        f"the queue is unreachable (Redis at {redacted(settings.redis_url)}): {type(e).__name__}"
    )


async def guarded(coro, settings: Settings):
    """Await a queue operation; its failures become one-line ToolErrors a person can act on."""
    try:
        return await coro
    except McpQueueError as e:
        raise ToolError(str(e)) from None
    except (RedisError, OSError) as e:
        raise ToolError(unavailable(e, settings).message) from None


def final_answer(result: JobResult) -> JobResult:
    """What send_message_to_ai answers once its job stops: the result, or an error naming the job."""
    if result.status == "failed":
        raise ToolError(f"job {result.job_id} failed: {result.error}")
    if result.status == "input_required" and result.input_request is not None:
        return result  # the caller answers with respond_to_job, then follows with wait_for_job
    if result.status in ("queued", "running", "input_required"):
        raise ToolError(
            f"job {result.job_id} is still {result.status}; fetch its answer later with "
            f"wait_for_job or get_job"
        )
    return result


def error_result(text: str) -> CallToolResult:
    """A tool's error as MCPServer reports a ToolError."""
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)


def tool_result(result: JobResult) -> CallToolResult:
    """The CallToolResult send_message_to_ai returns for this job, built the way MCPServer builds it."""
    try:
        answer = final_answer(result)
    except ToolError as e:
        return error_result(str(e))
    return CallToolResult(
        content=[TextContent(type="text", text=pydantic_core.to_json(answer, indent=2).decode())],
        structured_content=answer.model_dump(mode="json", by_alias=True),
    )
