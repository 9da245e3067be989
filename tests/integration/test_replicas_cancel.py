"""2026-07-28 behind the round-robin proxy: a caller that drops its call's stream cancels the job
(the spec: closing the stream is the cancellation), and the worker closes the provider's stream."""

from __future__ import annotations

import json

import anyio
import httpx2
from mcp_helpers import messenger_env, running_messengers
from openai_server import eventually, words
from processes import start_openai_workers
from proxy import round_robin_proxy

MODERN = "2026-07-28"
SLOW_REPLY = " ".join(f"word{i}" for i in range(200))
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "0"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


async def test_dropping_a_modern_call_cancels_its_job_and_closes_the_provider_stream(
    redis_url, redis_server, workers, openai_server, tmp_path
):
    openai_server.script(reply=SLOW_REPLY, token_delay=0.05)
    start_openai_workers(workers, redis_url, openai_server)
    call = {
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "send_message_to_ai", "arguments": {"message": "talk", "model": "gpt-4o-mini"},
                   "_meta": {**ENVELOPE, "progressToken": "p"}},
    }  # fmt: skip
    headers = {
        "Accept": "application/json, text/event-stream", "Content-Type": "application/json",
        "Mcp-Protocol-Version": MODERN, "Mcp-Method": "tools/call", "Mcp-Name": "send_message_to_ai",
    }  # fmt: skip
    redis = redis_server.client()
    with running_messengers(tmp_path) as messengers:
        replicas = [messengers.http(messenger_env(redis_url), wait=False) for _ in range(2)]
        for m in replicas:
            m.wait_ready(60)
        with anyio.fail_after(60):
            async with (
                round_robin_proxy([m.url for m in replicas]) as proxy,
                httpx2.AsyncClient(timeout=30) as http,
            ):
                async with http.stream("POST", proxy.url, headers=headers, json=call) as response:
                    assert response.status_code == 200, await response.aread()
                    async for line in response.aiter_lines():
                        if line.startswith("data:") and '"notifications/progress"' in line:
                            note = json.loads(line.removeprefix("data:"))["params"]
                            if (note.get("message") or "").startswith("word"):
                                break  # tokens are flowing: drop the stream
                await openai_server.wait_until(lambda: openai_server.disconnects, timeout=20)
                (job_id,) = [j.decode() for j in redis.zrange("mcpq:jobs:recent", 0, -1)]
                await eventually(lambda: redis.exists(f"arq:result:{job_id}"), 30)
    events = [json.loads(f[b"event"]) for _, f in redis.xrange(f"mcpq:stream:{job_id}")]
    assert events[-1]["type"] == "cancelled", events[-1]
    (closed,) = openai_server.disconnects
    assert closed.sent_tokens < len(words(SLOW_REPLY)), "the worker closed the provider stream early"
