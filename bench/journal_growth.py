"""How a tool loop's journal grows: bytes per step and replay time, at 20, 50 and 100 steps.

A `chat` job runs in this process against a real redis-server, with a scripted model that asks for
one `ledger__charge` call a turn (tests/mcp_ledger_server.py over stdio) until the loop has the
steps asked for. After each run it prints the journal's size (the sum of its entries, and Redis's
MEMORY USAGE), its bytes per step, and the time `journal.read` takes to rebuild the loop from it;
beside them, the peer: the bytes of every model call's input summed over the turns, which is what a
history that keeps each call's messages holds (it grows with the square of the steps).

    uv run python bench/journal_growth.py
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncGenerator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "tests"):
    sys.path.insert(0, str(path))

from redis_server import RedisServer  # noqa: E402

from shared import keys  # noqa: E402
from shared.connection import connect  # noqa: E402
from shared.events import TokenUsage  # noqa: E402
from shared.settings import load_settings  # noqa: E402
from shared.tool_client import ToolServers  # noqa: E402
from worker import journal  # noqa: E402
from worker.job import WorkerState, chat  # noqa: E402
from worker.providers import ModelCall, Provider, StreamEnd, ToolCall  # noqa: E402
from worker.publisher import EventWriter  # noqa: E402

LEDGER = str(ROOT / "tests" / "mcp_ledger_server.py")
STEPS = (20, 50, 100)  # even: a turn and its one call per two steps


class Loop(Provider):
    """Asks for one charge a turn, with a sentence of text, until `turns` turns asked; then answers."""

    name = "loop"

    def __init__(self, turns: int):
        self.turns = turns
        self.sent_bytes = 0  # every call's messages, summed over the turns

    async def stream(self, call: ModelCall) -> AsyncGenerator[str | StreamEnd, None]:
        self.sent_bytes += len(json.dumps(call.messages))
        asked = sum(1 for m in call.messages if m["role"] == "assistant")
        usage = TokenUsage(prompt_tokens=100, completion_tokens=20, total_tokens=120)
        if asked < self.turns:
            yield f"Step {asked + 1}: charging the next item on the list before going on. "
            arguments = json.dumps({"amount": asked + 1})
            yield StreamEnd(
                "mock-1", "tool_calls", usage, (ToolCall(f"call-{asked}", "ledger__charge", arguments),)
            )
            return
        yield "All charged."
        yield StreamEnd("mock-1", "stop", usage)


async def one_loop(redis, servers: ToolServers, config, steps: int) -> dict:
    provider = Loop(turns=steps // 2)  # each turn is a step, and so is its one call
    job_id = f"journal-growth-{steps}"
    state = WorkerState(config, provider, "bench", EventWriter(redis), tool_servers=servers)
    request = {"message": "charge everything on the list", "mcp_servers": ["ledger"]}
    result = await chat({"mcpq": state, "job_id": job_id, "job_try": 1, "redis": redis}, request)
    assert result["status"] == "completed", result["error"]
    await redis.persist(keys.journal(job_id))  # ended: it would expire in 60 s; keep it to measure
    entries = await redis.hgetall(keys.journal(job_id))
    assert len(entries) == steps, f"{len(entries)} entries for {steps} steps"
    replays = []
    for _ in range(20):
        started = time.perf_counter()
        replay = await journal.read(redis, job_id)
        replays.append(time.perf_counter() - started)
    assert replay.last_step == steps
    floors = []
    for _ in range(20):
        started = time.perf_counter()
        await redis.hgetall(keys.journal(job_id))
        floors.append(time.perf_counter() - started)
    return {
        "steps": steps,
        "bytes": sum(len(k) + len(v) for k, v in entries.items()),
        "memory": await redis.memory_usage(keys.journal(job_id)),
        "replay": statistics.median(replays),
        "hgetall": statistics.median(floors),  # the floor: only reading it
        "peer": provider.sent_bytes,
    }


async def run() -> None:
    logging.disable(logging.WARNING)  # "no valid owner record": these jobs were not queued by a messenger
    with tempfile.TemporaryDirectory(prefix="journal-growth-") as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        redis = connect(server.url)
        config = load_settings(
            redis_url=server.url, ai_provider="mock", tool_max_rounds=100,
            mcp_servers={"ledger": {"command": sys.executable, "args": [LEDGER], "env": {"LEDGER": f"{tmp}/ledger"}}},
        )  # fmt: skip
        servers = ToolServers(config.mcp_servers, config.tool_call_timeout_seconds)
        try:
            rows = [await one_loop(redis, servers, config, steps) for steps in STEPS]
        finally:
            await servers.aclose()
            await redis.aclose()
            server.stop()
    print(f"{'steps':>5} {'journal bytes':>13} {'bytes/step':>10} {'MEMORY USAGE':>12} {'replay ms':>9} "
          f"{'replay/HGETALL':>14} {'peer: inputs kept, bytes':>24} {'peer/journal':>12}")  # fmt: skip
    for r in rows:
        print(f"{r['steps']:>5} {r['bytes']:>13,} {r['bytes'] / r['steps']:>10.0f} {r['memory']:>12,} "
              f"{r['replay'] * 1000:>9.2f} {r['replay'] / r['hgetall']:>14.1f} {r['peer']:>24,} "
              f"{r['peer'] / r['bytes']:>12.1f}")  # fmt: skip
    first, last = rows[0], rows[-1]
    scale = last["steps"] / first["steps"]
    print(f"{scale:g}x the steps: journal {last['bytes'] / first['bytes']:.2f}x, replay "
          f"{last['replay'] / first['replay']:.2f}x, peer {last['peer'] / first['peer']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(run())
