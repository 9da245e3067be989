"""The one place mcp-queue reaches below the mcp SDK's public API, pinned by
tests/messenger/test_tasks_sdk.py so an SDK upgrade that moves it fails loudly there.

Why: on 2025-11-25 a task-augmented `tools/call` answers with a CreateTaskResult (`{"task": ...}`),
but `ClientSession.send_request` checks every `tools/call` result against CallToolResult, and the SDK
has no client API for tasks. So this one request is stamped (protocol headers, Mcp-Name) and sent the
way `send_request` itself does it, without that check.
"""

from __future__ import annotations

from typing import Any

from mcp import ClientSession
from mcp.shared.dispatcher import CallOptions


async def send_unchecked(session: ClientSession, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """Send one request as `ClientSession.send_request` would, and return its raw result."""
    opts: CallOptions = {}
    session._stamp({"method": method, "params": params}, opts)
    return await session._dispatcher.send_raw_request(method, params, opts)
