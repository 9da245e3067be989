"""One client whose socket is full (uvicorn's send awaits flow.drain() while the transport
is write-paused) stalls the one process-wide pinger, so every other quiet stream loses its pings."""

from __future__ import annotations

import asyncio

from messenger import session_sdk


async def test_a_client_that_stops_reading_does_not_stop_the_other_streams_pings(monkeypatch):
    monkeypatch.setattr(session_sdk, "PING_SECONDS", 0.02)

    async def full_socket(message):  # uvicorn: transport.write(...); await self.flow.drain()
        await asyncio.Event().wait()

    got: list[dict] = []

    async def reading(message):
        got.append(message)

    stuck, fine = session_sdk.Wire(full_socket), session_sdk.Wire(reading)
    for wire in (stuck, fine):
        wire.started = wire.headed = True
    session_sdk._PINGED.update([stuck, fine])
    try:
        session_sdk._keep_pinging()
        await asyncio.sleep(0.4)  # ~20 ping rounds
    finally:
        session_sdk._PINGED.difference_update([stuck, fine])
        session_sdk._pinger[0].cancel()
        session_sdk._pinger.clear()
    assert len(got) >= 5, f"the reading client got {len(got)} pings in 20 rounds"
