"""A 2025-11-25 call cancelled (notifications/cancelled) while its notifications go to the
socket directly: no traceback, no RuntimeError logged, the session still answers."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import anyio
from test_post_stream_uvicorn import chatty
from test_session_sdk import open_session, serve


async def test_a_cancelled_call_ends_quietly(redis, caplog):
    gate, manager = chatty(redis, width=1, pause=0.005)
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
            await client.post(url, headers=headers, json=cancel)
            await calling
            ping = await client.post(url, headers=headers, json={"jsonrpc": "2.0", "id": 6, "method": "ping"})
    bad = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not bad, [(r.name, r.getMessage(), r.exc_info and r.exc_info[0]) for r in bad]
    assert ping.status_code == 200
