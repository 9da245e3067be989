"""The dashboard's live stream words Redis failures the way the tools do."""

from __future__ import annotations

import json

from redis.exceptions import ConnectionError, ResponseError

from messenger.dashboard import stream


async def first_problem(runtime, monkeypatch, error: Exception) -> str:
    async def broken(_runtime):
        raise error

    monkeypatch.setattr(stream, "snapshot", broken)
    events = stream.event_stream(runtime)
    try:
        async for event in events:
            if event.event == "problem":
                return json.loads(event.data)["error"]
    finally:
        await events.aclose()
    raise AssertionError("no problem event")


async def test_a_refused_command_is_not_called_redis_unreachable(embedded_runtime, monkeypatch):
    said = await first_problem(
        embedded_runtime,
        monkeypatch,
        ResponseError("WRONGTYPE Operation against a key holding the wrong kind"),
    )
    assert said.startswith("Redis refused a command: WRONGTYPE") and "unreachable" not in said


async def test_an_unreachable_redis_is_named_without_its_password(embedded_runtime, monkeypatch):
    said = await first_problem(embedded_runtime, monkeypatch, ConnectionError("refused"))
    assert said.startswith("the queue is unreachable (Redis at ") and said.endswith("ConnectionError")
