"""The light POST path behind a real uvicorn: a client that goes away mid-call, a session
DELETEd mid-call, a call cancelled mid-call; no traceback or error logged, other calls unaffected."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import anyio
import httpx2
import pytest
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from test_session_sdk import open_session

from messenger.client_log import JobLog
from messenger.progress import ATTEMPT, JOB_ID, SEQ, ProgressOut
from messenger.sessions import RETRY_MS, SessionGate


def chatty(redis, width: int = 50, pause: float = 0.002):
    """A replica whose tool `talk` sends n progress notes (each `width` words long) as the messenger does."""
    server = MCPServer("chatty")

    @server.tool()
    async def talk(n: int, ctx: Context) -> str:
        out = ProgressOut(ctx, None)
        JobLog(ctx, 0)
        for seq in range(n):
            await out.send(seq + 1, f"w{seq}" * width, {JOB_ID: "job-9", ATTEMPT: 1, SEQ: seq})
            await asyncio.sleep(pause)
        return "done"

    app = server.streamable_http_app(retry_interval=RETRY_MS)
    return SessionGate(app, server.session_manager, redis, 60, "replica-u"), server.session_manager


@contextlib.asynccontextmanager
async def served(redis):
    gate, manager = chatty(redis)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(gate, host="127.0.0.1", port=port, lifespan="off", log_level="info")
    )
    async with manager.run():
        task = asyncio.create_task(server.serve())
        while not server.started:  # noqa: ASYNC110 (uvicorn says so by a flag, not an event)
            await asyncio.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{port}/mcp"
        finally:
            server.should_exit = True
            await task


CALL = {"jsonrpc": "2.0", "id": 5, "method": "tools/call",
        "params": {"name": "talk", "arguments": {"n": 300}, "_meta": {"progressToken": "t"}}}  # fmt: skip


@pytest.mark.parametrize("how", ["gone", "deleted", "cancelled"])
async def test_a_call_that_ends_early_logs_nothing_bad(redis, caplog, how):
    caplog.set_level(logging.INFO)
    with anyio.fail_after(30):
        async with served(redis) as url, httpx2.AsyncClient(timeout=20) as client:
            _sid, headers = await open_session(client, url)
            async with client.stream("POST", url, headers=headers, json=CALL) as streaming:
                got = 0
                async for _ in streaming.aiter_bytes():
                    got += 1
                    if got == 5:
                        break
                if how == "deleted":
                    await client.delete(url, headers=headers)
                elif how == "cancelled":
                    cancel = {
                        "jsonrpc": "2.0",
                        "method": "notifications/cancelled",
                        "params": {"requestId": 5},
                    }
                    await client.post(url, headers=headers, json=cancel)
                    await asyncio.sleep(0.5)
            await asyncio.sleep(1.5)  # the call's 300 notifications are over by now
            if how != "deleted":
                ping = await client.post(
                    url, headers=headers, json={"jsonrpc": "2.0", "id": 6, "method": "ping"}
                )
                assert ping.status_code == 200
            _sid2, headers2 = await open_session(client, url)
            small = {**CALL, "params": {**CALL["params"], "arguments": {"n": 3}}}
            again = await client.post(url, headers=headers2, json=small)
            assert '"result"' in again.text
    bad = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not bad, [(r.name, r.getMessage()[:200], r.exc_info and r.exc_info[1]) for r in bad]


async def test_a_calls_head_goes_out_with_its_priming_event_in_one_socket_write(redis, monkeypatch):
    """Behind uvicorn's httptools, a call's response head and its first (priming) event are one
    socket write, not two; what the client reads is the same: a 200 SSE stream, the priming event
    first, every note, the result."""
    writes: list[bytes] = []
    write = asyncio.selector_events._SelectorSocketTransport.write  # type: ignore[attr-defined]

    def counted(self, data) -> None:
        writes.append(bytes(data))
        write(self, data)

    with anyio.fail_after(30):
        async with served(redis) as url, httpx2.AsyncClient(timeout=20) as client:
            _sid, headers = await open_session(client, url)
            monkeypatch.setattr(asyncio.selector_events._SelectorSocketTransport, "write", counted)  # type: ignore[attr-defined]
            small = {**CALL, "params": {**CALL["params"], "arguments": {"n": 3}}}
            answered = await client.post(url, headers=headers, json=small)
    assert answered.status_code == 200 and answered.headers["content-type"].startswith("text/event-stream")
    first, *_, last = answered.text.split("\r\n\r\n")[:-1]
    assert f"retry: {RETRY_MS}" in first and "data: \r\n" in first + "\r\n" and '"result"' in last
    assert answered.text.count("notifications/progress") == 3
    (head,) = [w for w in writes if w.startswith(b"HTTP/1.1 200")]
    assert b"text/event-stream" in head and f"retry: {RETRY_MS}".encode() in head
