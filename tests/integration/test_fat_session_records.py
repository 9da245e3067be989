"""A hostile tenant's initialize with megabytes of client capabilities must not become megabytes in
Redis per session (20 such sessions held 84 MB; a few hundred would fill a typical Redis and stop
every tenant and the workers): it is refused with 413 and one line, and nothing is stored."""

from __future__ import annotations

import json

import httpx2
from mcp_helpers import messenger_env, running_messengers

POST = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


async def test_an_initialize_with_megabytes_of_capabilities_costs_redis_little(redis_server, tmp_path):
    redis = redis_server.client()
    redis.flushall()
    env = messenger_env(redis_server.url, MCP_API_KEYS=json.dumps({"alice": "tok-alice"}))
    pad = "x" * 3_500_000
    params = {
        "protocolVersion": "2025-11-25",
        "capabilities": {"experimental": {"pad": {"v": pad}}},
        "clientInfo": {"name": "fat", "version": "0"},
    }
    with running_messengers(tmp_path) as messengers:
        url = messengers.http(env).url
        async with httpx2.AsyncClient(headers={"Authorization": "Bearer tok-alice"}, timeout=60) as http:
            answers = [
                await http.post(url, headers=POST, json={"jsonrpc": "2.0", "id": 1, "method": "initialize",
                                                          "params": params})
                for _ in range(5)
            ]  # fmt: skip
    stored = sum(redis.memory_usage(k) or 0 for k in redis.scan_iter("mcpq:session:*"))
    refused = [a for a in answers if a.status_code >= 400]
    assert stored < 5 * 64 * 1024, f"{stored} bytes of session records for 5 sessions"
    assert [a.status_code for a in refused] == [413] * 5
    assert all("\n" not in a.text.strip() for a in refused)
