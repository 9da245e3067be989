"""The bench's bare MCP caller (bench/mcp_wire.py) reads every message whole however TCP cuts the
bytes, and stamps each with the time its bytes reached it: the 1,000-caller figures depend on both."""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest

from bench.mcp_wire import Caller, Reply, WireError, _Link


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
FIRST = chunk(b'event: message\r\ndata: {"method": "notifications/progress", "n": 1}\r\n\r\n')
SECOND = chunk(b': keep-alive\r\n\r\ndata: {"method": "notifica') + chunk(b'tions/progress", "n": 2}\r\n\r\n')
LAST = chunk(b'data: {"id": 1, "result": {"n": 3}}\r\n\r\n') + b"0\r\n\r\n"
MESSAGES = [
    {"method": "notifications/progress", "n": 1},
    {"method": "notifications/progress", "n": 2},
    {"id": 1, "result": {"n": 3}},
]


class Transport(asyncio.Transport):
    def close(self) -> None:
        pass


@pytest.mark.parametrize("live", [False, True])
async def test_a_reply_cut_anywhere_reads_the_same_messages(live: bool):
    whole = SSE_HEAD + FIRST + SECOND + LAST
    cuts = [[whole[:k], whole[k:]] for k in range(1, len(whole))] + [[bytes([b]) for b in whole]]
    for parts in cuts:
        link = _Link()
        link.connection_made(Transport())
        link.reply = reply = Reply(live)
        for part in parts:
            link.data_received(part)
        assert reply.ended and reply.status == 200
        assert [message for _, message in reply.messages()] == MESSAGES


INIT = b'{"jsonrpc": "2.0", "id": 1, "result": {}}'
OPENING: list[list[bytes | asyncio.Event]] = [  # initialize, then notifications/initialized
    [b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nmcp-session-id: s-1\r\n"
     b"content-length: %d\r\n\r\n%s" % (len(INIT), INIT)],
    [b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n"],
]  # fmt: skip


class Server:
    """Answers the k-th POST with the k-th script: bytes to write, or an asyncio.Event to wait for."""

    def __init__(self, scripts: list[list[bytes | asyncio.Event]]):
        self.scripts = scripts
        self.requests: list[tuple[str, dict]] = []
        self.connections = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        while self.scripts:
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            match = re.search(r"Content-Length: (\d+)", head)
            assert match is not None
            self.requests.append((head, json.loads(await reader.readexactly(int(match[1])))))
            for step in self.scripts.pop(0):
                if isinstance(step, asyncio.Event):
                    await step.wait()
                else:
                    writer.write(step)
                    await writer.drain()
        writer.close()


async def serving(server: Server) -> tuple[asyncio.Server, Caller]:
    listening = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    return listening, Caller("127.0.0.1", port)


async def test_each_message_is_stamped_when_its_bytes_arrived_not_when_the_reply_ended():
    go = asyncio.Event()
    server = Server([*OPENING, [SSE_HEAD + FIRST, go, SECOND + LAST]])
    listening, caller = await serving(server)
    async with listening:
        await caller.open()
        link, first_in = caller._link, asyncio.Event()
        assert link is not None
        received = link.data_received

        def spy(data: bytes) -> None:
            received(data)
            first_in.set()

        link.data_received = spy
        recorded = asyncio.ensure_future(caller.record("tool", {}))
        await asyncio.wait_for(first_in.wait(), 10)  # the first piece is in; record's task still sleeps
        sent_rest = time.time()
        go.set()
        reply = await recorded
        await caller.close()
    stamps = [arrived for arrived, _ in reply.messages()]
    assert [message for _, message in reply.messages()] == MESSAGES
    assert stamps[0] < sent_rest <= stamps[1] <= stamps[2]


async def test_open_keeps_the_session_the_server_names_and_sends_it_with_each_call():
    server = Server([
        *OPENING,
        [SSE_HEAD + FIRST + SECOND + LAST],
        [b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\n\r\nno such s"],
    ])  # fmt: skip
    listening, caller = await serving(server)
    async with listening:
        await caller.open()
        got = [message async for _, message in caller.call("send_message_to_ai", {"message": "hi"})]
        with pytest.raises(WireError, match="404"):
            await caller.record("send_message_to_ai", {"message": "hi"})
        await caller.close()
    assert got == MESSAGES
    assert caller.session == "s-1" and server.connections == 1
    methods = [body["method"] for _, body in server.requests]
    assert methods == ["initialize", "notifications/initialized", "tools/call", "tools/call"]
    assert all("Mcp-Session-Id: s-1" in head for head, _ in server.requests[1:])
    assert server.requests[2][1]["params"]["_meta"] == {"progressToken": 1}
