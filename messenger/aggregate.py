"""Downstream MCP servers' tools, served by the messenger as `server/tool` (MCP_EXPOSE_SERVERS).

The messenger lists each exposed server's tools once at start-up; every call of one becomes a
`call_tool` job that a worker runs, so one endpoint serves many servers and the calls get the
queue's job ids, streams and scale-out. A server that cannot be listed is left out and reported by
check_health; the rest are served.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools.base import Tool
from mcp_types import CallToolResult, TextContent

from messenger.calls import caller_from, error_result, guarded
from messenger.client_log import LevelStore, job_log
from messenger.progress import ProgressRelay
from shared.errors import ToolServerError
from shared.models import ToolCallRequest
from shared.settings import Settings
from shared.tool_client import RemoteTool, ToolServers

if TYPE_CHECKING:
    from messenger.runtime import Runtime

log = logging.getLogger("messenger.aggregate")

SEPARATOR = "/"  # as asked of the product; the SDK's SEP-986 check would prefer [A-Za-z0-9_.-]
logging.getLogger("mcp.shared.tool_name_validation").setLevel(logging.ERROR)  # it warns on every "/"
JOB_ID_META = "io.github.mcp-queue/jobId"  # in each result's _meta: the queued job that ran the call


async def list_exposed(settings: Settings) -> dict[str, list[RemoteTool] | str]:
    """Each exposed server's tools, or why they could not be listed."""
    names = settings.exposed_servers
    if not names:
        return {}
    servers = ToolServers({n: settings.mcp_servers[n] for n in names})

    async def listed(name: str) -> list[RemoteTool] | str:
        try:
            return await servers.tools(name)
        except ToolServerError as e:
            log.warning("not serving the tools of MCP server %r: %s", name, e)
            return str(e)

    try:
        found = await asyncio.gather(*(listed(n) for n in names))
    finally:
        await servers.aclose()  # the messenger only lists; workers make the calls
    return dict(zip(names, found, strict=True))


class ForwardedTool(Tool):
    """A downstream tool: arguments pass through unchanged (the downstream server validates them)."""

    async def run(
        self, arguments: dict[str, Any], context: Context[Any, Any], convert_result: bool = False
    ) -> Any:
        return await self.fn(arguments, context)


def exposed_tools(runtime: Runtime, log_levels: LevelStore | None = None) -> list[Tool]:
    """A Tool for each listed downstream tool, advertising the downstream server's own input schema;
    passed to `MCPServer(tools=...)`."""
    forwarded: list[Tool] = []
    for server, tools in runtime.exposed.items():
        if isinstance(tools, str):
            continue
        for tool in tools:
            made = ForwardedTool.from_function(
                _forwarder(runtime, server, tool.name, log_levels),
                name=f"{server}{SEPARATOR}{tool.name}",
                description=f"[{server}] {tool.description}".strip(),
                context_kwarg="ctx",
            )
            forwarded.append(made.model_copy(update={"parameters": tool.input_schema}))
    return forwarded


def _forwarder(runtime: Runtime, server: str, tool: str, log_levels: LevelStore | None):
    settings = runtime.settings

    async def forward(arguments: dict[str, Any], ctx: Context) -> CallToolResult:
        call = ToolCallRequest(server=server, tool=tool, arguments=arguments)
        relay = ProgressRelay(ctx, None, job_log(ctx, log_levels))  # status and the call: in `_meta`

        try:
            job = await guarded(
                runtime.jobs.run(
                    call,
                    relay,
                    timeout=settings.tool_call_timeout_seconds + 60,
                    caller=caller_from(ctx.headers, settings),
                    cancel_when_dropped=True,
                ),
                settings,
            )
        except ToolError as e:
            return error_result(str(e))
        meta = {JOB_ID_META: job.job_id}
        if job.status in ("queued", "running"):  # waited too long: do not let it run unseen later
            job = await guarded(runtime.jobs.cancel(job.job_id), settings)
            job.error = (
                f"gave up after {settings.tool_call_timeout_seconds + 60:g} s; {job.error or 'cancelled'}"
            )
        if job.status != "completed" or not job.tool_calls:
            detail = job.error or f"the job is still {job.status}"
            return CallToolResult(
                content=[TextContent(type="text", text=f"job {job.job_id} {job.status}: {detail}")],
                is_error=True,
                _meta=meta,
            )
        record = job.tool_calls[0]
        return CallToolResult(
            content=[TextContent(type="text", text=record.result or "")], is_error=record.is_error, _meta=meta
        )

    return forward
