"""Figure 2's worker side: synthetic token streams through the real EventWriter.

`python -m bench.publisher_proc REDIS_URL` connects, then reads one JSON object from stdin:
{"job_ids": [...], "t_start": unix s, "tokens": N, "interval": s, "stagger": s, "seed": n,
"raw": bool}. Each job, as a task the way an arq job would run: a start event at t_start + a
random offset in [0, stagger), then token "k " every `interval` (k = 0..N-1), then done. All jobs
share one EventWriter on one connection pool. Prints one JSON object: per job, the time each token
was handed to the publisher, how late the pacing ran, and this process's CPU seconds.

With "raw": the floor under the same pacing, without mcp-queue: each token is a bare PUBLISH of
{"job_id", "ts", "text"} (no stream, no event model, no task per stream). One loop walks every
stream's schedule in time order, waking at most once per TICK and handing over every token due by
then; all that is handed over while a write is in flight go out in the next one,
packed by hiredis. At 1,000 streams that is 50,000 PUBLISHes a second from one process: the floor
is what Redis and a bare subscriber cost, not what a task and a sleep per token would.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import sys
import time

from hiredis import pack_command

from shared import keys
from shared.connection import connect
from shared.events import TokenUsage
from worker.publisher import EventWriter


async def _sleep_until(when: float) -> None:
    delay = when - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


TICK = 0.001  # the raw floor's pacing wakes at most once a millisecond (as the mock's Pacer does)


class RawWriter:
    """The least a publisher can do: bare PUBLISHes, all pending ones in one write per round trip."""

    def __init__(self, redis):
        self.pool = redis.connection_pool
        self.pending: list[bytes] = []
        self.flusher: asyncio.Task[None] | None = None

    def publish(self, job_id: str, kind: str, text: str = "") -> None:
        data = json.dumps({"job_id": job_id, "type": kind, "ts": time.time(), "text": text})
        command: tuple = ("PUBLISH", keys.events(job_id), data)  # (hiredis's stub wants a 1-tuple)
        self.pending.append(pack_command(command))
        if self.flusher is None or self.flusher.done():
            self.flusher = asyncio.create_task(self.flush())

    async def flush(self) -> None:
        while self.pending:
            batch, self.pending = self.pending, []
            connection = await self.pool.get_connection()
            try:
                await connection.send_packed_command(b"".join(batch))
                for _ in batch:
                    await connection.read_response()
            finally:
                await self.pool.release(connection)


async def paced(spec: dict, offsets: dict[str, float], raw: RawWriter, handed: dict, late: list) -> None:
    """Every stream's tokens at their times, from one loop: (due, job, k) in time order."""
    tokens, interval = spec["tokens"], spec["interval"]
    due = sorted(
        (spec["t_start"] + offset + (k + 1) * interval, job_id, k)
        for job_id, offset in offsets.items()
        for k in range(tokens)
    )
    for job_id in offsets:
        handed[job_id] = []
    i = 0
    while i < len(due):
        await _sleep_until(math.ceil(due[i][0] / TICK) * TICK)
        now = time.time()
        while i < len(due) and due[i][0] <= now:
            when, job_id, k = due[i]
            i += 1
            late.append(now - when)
            handed[job_id].append(now)
            raw.publish(job_id, "token", f"{k} ")
            if k == tokens - 1:
                raw.publish(job_id, "done")
    while raw.flusher and not raw.flusher.done():
        await asyncio.shield(raw.flusher)


async def main(redis_url: str) -> None:
    redis = connect(redis_url)
    await redis.ping()  # connect before the clock starts
    spec = json.loads(await asyncio.to_thread(sys.stdin.read))
    rng = random.Random(spec["seed"])
    writer = EventWriter(redis)
    tokens, interval = spec["tokens"], spec["interval"]
    handed: dict[str, list[float]] = {}
    late: list[float] = []

    raw = RawWriter(redis)

    async def stream(job_id: str, offset: float) -> None:
        publisher = writer.publisher(job_id, attempt=1)
        await _sleep_until(spec["t_start"] + offset)
        await publisher.start("bench-publisher", "mock-1")
        times = handed[job_id] = []
        first = time.time()
        for k in range(tokens):
            due = first + (k + 1) * interval
            await _sleep_until(due)
            now = time.time()
            late.append(now - due)
            times.append(now)
            publisher.token(f"{k} ")
        usage = TokenUsage(prompt_tokens=1, completion_tokens=tokens, total_tokens=tokens + 1)
        await publisher.done(usage=usage, cost=None, finish_reason="stop", model="mock-1")

    offsets = {j: rng.uniform(0, spec["stagger"]) for j in spec["job_ids"]}
    cpu0 = time.process_time()
    if spec.get("raw"):
        await paced(spec, offsets, raw, handed, late)
    else:
        await asyncio.gather(*(stream(j, offset) for j, offset in offsets.items()))
    cpu = time.process_time() - cpu0
    late.sort()
    out = {"handed": handed, "late_p99_ms": 1000 * late[int(0.99 * (len(late) - 1))], "cpu_s": cpu}
    sys.stdout.write(json.dumps(out))
    await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
