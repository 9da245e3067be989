"""The MCP server: the tools (messenger/tools.py), the forwarded `server/tool` tools, the resources
and their subscriptions, the prompts and completions, the MCP tasks extension and the `/health` and
`/metrics` routes, assembled around one Runtime.

The Runtime (Redis, hub, embedded worker) is opened once per process, not per MCP session.
"""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools.base import Tool
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from messenger.aggregate import exposed_tools
from messenger.calls import remember_headers
from messenger.client_log import LevelStore, serve_logging
from messenger.health import health, seen_by_tenant
from messenger.metrics import metrics_route
from messenger.prompts import add_prompts
from messenger.resources import add_resources
from messenger.runtime import Runtime
from messenger.subscriptions import serve_subscriptions
from messenger.tasks.extension import JobTasks
from messenger.tenants import tenants_for
from messenger.tools import QueueTools
from shared.errors import validation_message

INSTRUCTIONS = (
    "Model calls run as jobs on a Redis queue. send_message_to_ai waits and streams tokens as "
    "progress (or runs as an MCP task); submit_message returns a job id at once to poll with "
    "get_job or wait_for_job."
)


class QueueTool(Tool):
    """A tool whose bad arguments read as one line (`invalid max_tokens: …`), like every other error;
    the SDK would send pydantic's several-line report with its links."""

    async def run(self, arguments: dict[str, Any], context: Any, convert_result: bool = False) -> Any:
        try:
            return await super().run(arguments, context, convert_result)
        except ToolError as e:
            if isinstance(e.__cause__, ValidationError):
                raise ToolError(
                    f"Error executing tool {self.name}: {validation_message(e.__cause__)}"
                ) from None
            raise


def build_server(runtime: Runtime) -> MCPServer:
    levels = LevelStore(runtime)
    tools = QueueTools(runtime, levels)
    tasks = JobTasks(runtime, tool="send_message_to_ai")
    mcp = MCPServer(
        "mcp-queue",
        version="0.1.0",
        instructions=INSTRUCTIONS,
        tools=[QueueTool.from_function(getattr(tools, name)) for name in QueueTools.NAMES]
        + exposed_tools(runtime, levels),
        extensions=[tasks],
        middleware=[remember_headers, runtime.metrics.middleware, tasks.middleware],
        subscriptions=False,  # no subscriptions/listen (2026-07-28): job:// updates are 2025-11-25's subscribe
    )
    add_resources(mcp, runtime, tools.identity)
    add_prompts(mcp, runtime)
    serve_subscriptions(mcp, runtime)
    serve_logging(mcp, levels)

    @mcp.custom_route("/health", methods=["GET"])
    async def health_route(_: Request) -> JSONResponse:
        report = await health(runtime)
        if tenants_for(runtime.settings).required:  # open to anyone: no tenant's job ids
            report = seen_by_tenant(report)
        return JSONResponse(report, status_code=200 if report["redis"]["ok"] else 503)

    mcp.custom_route("/metrics", methods=["GET"])(metrics_route(runtime))
    return mcp
