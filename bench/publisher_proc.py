"""Figure 2's worker side: synthetic token streams through the real EventWriter.

`python -m bench.publisher_proc REDIS_URL` connects, then reads one JSON object from stdin:
{"job_ids": [...], "t_start": unix s, "tokens": N, "interval": s, "stagger": s, "seed": n,
"raw": bool}. Each job, as a task the way an arq job would run: a start event at t_start + a
random offset in [0, stagger), then token "k " every `interval` (k = 0..N-1), then done. All jobs
share one EventWriter on one connection pool. Prints one JSON object: per job, the time each token
was handed to the publisher, how late the pacing ran, and this process's CPU seconds.

With "raw": the floor under the same pacing, without mcp-queue: each token is a bare PUBLISH of
{"job_id", "ts", "text"} (no stream, no event model), all due ones in one pipeline per round trip.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time

from shared import keys
from shared.connection import connect
from shared.events import TokenUsage
from worker.publisher import EventWriter


async def _sleep_until(when: float) -> None:
    delay = when - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


class RawWriter:
    """The least a publisher can do: one pipeline of bare PUBLISHes per round trip."""

    def __init__(self, redis):
        self.redis = redis
        self.pending: list[tuple[str, bytes]] = []
        self.flusher: asyncio.Task[None] | None = None

    def publish(self, job_id: str, kind: str, text: str = "") -> None:
        data = json.dumps({"job_id": job_id, "type": kind, "ts": time.time(), "text": text})
        self.pending.append((keys.events(job_id), data.encode()))
        if self.flusher is None or self.flusher.done():
            self.flusher = asyncio.create_task(self.flush())

    async def flush(self) -> None:
        while self.pending:
            batch, self.pending = self.pending, []
            async with self.redis.pipeline(transaction=False) as pipe:
                for channel, data in batch:
                    pipe.publish(channel, data)
                await pipe.execute()


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

    async def raw_stream(job_id: str, offset: float) -> None:
        await _sleep_until(spec["t_start"] + offset)
        times = handed[job_id] = []
        first = time.time()
        for k in range(tokens):
            due = first + (k + 1) * interval
            await _sleep_until(due)
            now = time.time()
            late.append(now - due)
            times.append(now)
            raw.publish(job_id, "token", f"{k} ")
        raw.publish(job_id, "done")
        while raw.flusher and not raw.flusher.done():
            await asyncio.shield(raw.flusher)

    run = raw_stream if spec.get("raw") else stream
    cpu0 = time.process_time()
    await asyncio.gather(*(run(j, rng.uniform(0, spec["stagger"])) for j in spec["job_ids"]))
    cpu = time.process_time() - cpu0
    late.sort()
    out = {"handed": handed, "late_p99_ms": 1000 * late[int(0.99 * (len(late) - 1))], "cpu_s": cpu}
    sys.stdout.write(json.dumps(out))
    await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
