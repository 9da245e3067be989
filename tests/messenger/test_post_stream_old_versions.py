"""A 2025-06-18 (or 2025-03-26) session's POST is answered by PostStream too (SessionGate gives
every session POST a Wire), but those versions get no priming event, so `wire.started` stays False
until the call's first event: a quiet call (no progress token) gets no ping at all, where
sse-starlette pinged it every 15 s from the start. Behind a proxy with an idle timeout the call dies."""

from __future__ import annotations

import contextlib

import anyio
import pytest
from test_session_sdk import POST, quiet_replica, serve, wait_call

from messenger import session_sdk


@pytest.mark.parametrize("version", ["2025-06-18", "2025-03-26"])
async def test_an_old_versions_quiet_call_is_pinged(redis, monkeypatch, version):
    monkeypatch.setattr(session_sdk, "PING_SECONDS", 0.05)
    server, _, gate = quiet_replica(redis)
    url = "http://127.0.0.1:8000/mcp"
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "old", "version": "1"}}}  # fmt: skip
    call = wait_call(0.4)
    with anyio.fail_after(20):
        async with contextlib.AsyncExitStack() as stack:
            (client,) = await serve(stack, (gate, server.session_manager))
            opened = await client.post(url, headers=POST, json=init)
            headers = {
                **POST,
                "Mcp-Session-Id": opened.headers["mcp-session-id"],
                "Mcp-Protocol-Version": version,
            }
            await client.post(
                url, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"}
            )
            answered = await client.post(url, headers=headers, json=call)
    assert '"result"' in answered.text
    assert ": ping" in answered.text, answered.text
