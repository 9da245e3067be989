"""A real stdio MCP server with a side effect, for the durable tool-loop tests: its `charge` tool
appends one JSON line per call (with the idempotency key the caller sent in `_meta`) to the file
named by LEDGER, then waits `seconds` (or for a file: `hold`) before answering. It dedupes nothing: the ledger shows every
call that was sent. `charge` says it is destructive (its MCP annotations); `balance` that it only reads."""

from __future__ import annotations

import asyncio
import json
import os
import time

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import ToolAnnotations

PREFIX = "LEDGER-5c1e"
IDEMPOTENCY_KEY = "mcp-queue/idempotency-key"

mcp = MCPServer("ledger")


def _write(line: dict) -> None:
    with open(os.environ["LEDGER"], "a") as f:
        f.write(json.dumps(line) + "\n")


@mcp.tool(annotations=ToolAnnotations(destructive_hint=True))  # TOOL_APPROVAL=destructive asks first
async def charge(amount: int, ctx: Context, seconds: float = 0, hold: str = "") -> str:
    """Charge `amount`, then wait `seconds` and, given a `hold` path, until that file exists (a test's
    kill lands while the call runs, however late it comes) before answering."""
    _write(
        {"amount": amount, "key": (ctx.request_context.meta or {}).get(IDEMPOTENCY_KEY), "pid": os.getpid()}
    )
    await asyncio.sleep(seconds)
    if hold:
        await asyncio.to_thread(_released, hold)
    return f"{PREFIX} charged {amount}"


def _released(path: str) -> None:
    """Return once the file `path` exists (another process makes it)."""
    while not os.path.exists(path):
        time.sleep(0.01)


@mcp.tool(annotations=ToolAnnotations(read_only_hint=True))
async def balance() -> str:
    """The ledger's number of charges (reads only)."""
    return f"{PREFIX} {len(read_ledger(os.environ['LEDGER']))} charges"


def read_ledger(path) -> list[dict]:
    """The calls the server got, in order."""
    return [json.loads(line) for line in open(path).read().splitlines()] if os.path.exists(path) else []


if __name__ == "__main__":
    mcp.run("stdio")
