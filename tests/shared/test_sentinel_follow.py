"""A process follows the primary the Sentinels name: once they name another, no connection stays on the
old one, whichever part of the process asks them first. Two real Redis servers stand for the old and
the new primary; the Sentinels' answer is a stub the test turns."""

from __future__ import annotations

import asyncio
import time

from redis_server import RedisServer

from shared.connection import connect


class Named:
    """What the Sentinels answer: the primary at `port`."""

    def __init__(self, port: int):
        self.port = port

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        return "127.0.0.1", self.port


def waiting_in_blpop(server: RedisServer) -> bool:
    return any(client["cmd"] == "blpop" for client in server.client().client_list())


async def until(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def test_a_command_waiting_on_the_old_primary_is_cut_when_a_new_connection_learns_of_the_failover(
    redis_server, redis_url, tmp_path
):
    new = RedisServer(tmp_path / "new")
    new.tmp.mkdir()
    new.start()
    named = Named(redis_server.port)
    redis = connect("redis+sentinel://127.0.0.1:1/mcpq-main/0")
    redis.connection_pool.sentinel_manager = named  # type: ignore[attr-defined]
    try:
        await redis.ping()
        # a command that waits on the old primary for its reply, as every command on a frozen one does
        waiting = asyncio.create_task(redis.blpop(["nothing"], timeout=30))
        assert await until(lambda: waiting_in_blpop(redis_server), 5)
        named.port = new.port  # the Sentinels failed over
        await redis.set("k", "v")  # a new connection (the first is busy) asks them before the watcher does
        assert await until(lambda: not waiting_in_blpop(redis_server), 3), "still waiting on the old primary"
        assert new.client().get("k") == b"v"
        waiting.cancel()
    finally:
        await redis.aclose()
        new.stop()
