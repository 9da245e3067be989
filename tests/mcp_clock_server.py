"""A small real MCP server for tool-use tests, over stdio (default) or streamable HTTP.

    python tests/mcp_clock_server.py                       # stdio
    python tests/mcp_clock_server.py --port 9000 --token T # http://127.0.0.1:9000/mcp, bearer T

Its answers carry PREFIX so a test can tell a real tool result from anything a model made up.
Every call is appended to the file named by CLOCK_CALL_LOG (one JSON line), when that is set.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError

PREFIX = "CLOCK-7f3a"

mcp = MCPServer("clock")


def _log(tool: str, arguments: dict) -> None:
    path = os.environ.get("CLOCK_CALL_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"tool": tool, "arguments": arguments, "pid": os.getpid()}) + "\n")


@mcp.tool()
def now(timezone_offset_hours: int = 0) -> str:
    """The current time, ISO 8601, at the given offset from UTC."""
    _log("now", {"timezone_offset_hours": timezone_offset_hours})
    zone = datetime.timezone(datetime.timedelta(hours=timezone_offset_hours))
    return f"{PREFIX} {datetime.datetime.now(zone).isoformat(timespec='seconds')}"


@mcp.tool()
def add(a: int, b: int) -> str:
    """Add two integers."""
    _log("add", {"a": a, "b": b})
    return f"{PREFIX} {a + b}"


@mcp.tool()
def broken() -> str:
    """Always fails, the way a tool reports an error."""
    _log("broken", {})
    raise ToolError(f"{PREFIX} the clock is broken")


@mcp.tool()
def reject() -> str:
    """Answers with a JSON-RPC error instead of a result (the server refuses the call)."""
    _log("reject", {})
    raise MCPError(code=-32602, message=f"{PREFIX} rejected")


@mcp.tool()
async def sleep(seconds: float) -> str:
    """Wait, then answer."""
    _log("sleep", {"seconds": seconds})
    await asyncio.sleep(seconds)
    return f"{PREFIX} slept {seconds}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int)
    parser.add_argument("--token")
    args = parser.parse_args()
    if args.port is None:
        mcp.run("stdio")
        return
    import uvicorn

    app = mcp.streamable_http_app(host="127.0.0.1")
    if args.token:
        inner, expected = app, f"Bearer {args.token}".encode()

        async def app(scope, receive, send):  # type: ignore[no-redef]
            if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") != expected:
                await send({"type": "http.response.start", "status": 401, "headers": []})
                await send({"type": "http.response.body", "body": b"unauthorized"})
                return
            await inner(scope, receive, send)

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", lifespan="on")


if __name__ == "__main__":
    main()
