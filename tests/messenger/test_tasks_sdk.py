"""Pins the one private mcp SDK path mcp-queue uses (messenger/tasks/sdk.py): if an SDK upgrade
renames or reshapes it, these fail here, loudly, instead of task creation failing for users.

The path: `ClientSession._stamp(data, opts)` and `ClientSession._dispatcher.send_raw_request(method,
params, opts)`, which `ClientSession.send_request` itself calls before its result check."""

from __future__ import annotations

import inspect

import anyio
from mcp import Client, ClientSession
from mcp.shared.dispatcher import Dispatcher

from messenger.server import build_server
from messenger.tasks.sdk import send_unchecked


def test_send_request_is_still_stamp_then_send_raw_request():
    source = inspect.getsource(ClientSession.send_request)
    assert "self._stamp(data, opts)" in source
    assert 'self._dispatcher.send_raw_request(method, data.get("params"), opts)' in source
    params = list(inspect.signature(Dispatcher.send_raw_request).parameters)
    assert params == ["self", "method", "params", "opts"]


async def test_a_task_augmented_call_goes_through_unchecked_on_2025_11_25(embedded_runtime):
    with anyio.fail_after(30):
        async with Client(build_server(embedded_runtime), mode="legacy") as client:
            assert isinstance(client.session._dispatcher, Dispatcher)
            raw = await send_unchecked(
                client.session,
                "tools/call",
                {"name": "send_message_to_ai", "arguments": {"message": "hi"}, "task": {}},
            )
    assert raw["task"]["status"] == "working" and len(raw["task"]["taskId"]) == 32
