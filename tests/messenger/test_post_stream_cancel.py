"""A 2025-11-25 call cancelled (notifications/cancelled) while its notifications go to the
socket directly: no traceback, no RuntimeError logged, the session still answers."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import anyio
from mcp.server.mcpserver import Context, MCPServer
from test_session_sdk import events, open_session, serve

from messenger.client_log import JobLog
from messenger.progress import ATTEMPT, JOB_ID, SEQ, ProgressOut
from messenger.sessions import RETRY_MS, SessionGate


def chatty(redis):
    server = MCPServer("chatty")

    @server.tool()
    async def talk(n: int, ctx: Context) -> str:
        out = ProgressOut(ctx, None)
        JobLog(ctx, 0)
        for seq in range(n):
            await out.send(seq + 1, f"w{seq}", {JOB_ID: "job-9", ATTEMPT: 1, SEQ: seq})
            await asyncio.sleep(0.005)
        return "done"

    app = server.streamable_http_app(retry_interval=RETRY_MS)
    return SessionGate(app, server.session_manager, redis, 60, "replica-c"), server.session_manager


async def test_a_cancelled_call_ends_quietly(redis, caplog):
    gate, manager = chatty(redis)
    url = "http://127.0.0.1:8000/mcp"
    caplog.set_level(logging.DEBUG)
    with anyio.fail_after(20):
        async with contextlib.AsyncExitStack() as stack:
            (client,) = await serve(stack, (gate, manager))
            _sid, headers = await open_session(client, url)
            call = {"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                    "params": {"name": "talk", "arguments": {"n": 400}, "_meta": {"progressToken": "t"}}}  # fmt: skip
            calling = asyncio.create_task(client.post(url, headers=headers, json=call))
            await asyncio.sleep(0.3)
            cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 5}}
            cancelled = await client.post(url, headers=headers, json=cancel)
            answered = await calling
            ping = await client.post(url, headers=headers, json={"jsonrpc": "2.0", "id": 6, "method": "ping"})
    print(cancelled.status_code, answered.status_code, len(events(answered.text)), ping.status_code)
    print(answered.text[-300:])
    bad = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not bad, [(r.name, r.getMessage(), r.exc_info and r.exc_info[0]) for r in bad]
    assert ping.status_code == 200
