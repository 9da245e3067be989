"""taskiq and SAQ running the bench's no-op job, so bench/run.py can set them beside mcp-queue and arq.

They need redis-py >= 6 and arq 0.28 pins redis<6, so this file runs in an environment of its own and
imports nothing from mcp-queue (bench/peer_queues.py starts it this way):

    uv run --isolated --no-project --with taskiq==0.13.0 --with taskiq-redis==1.2.4 --with saq==0.26.4 \
        python bench/peers/queues.py {taskiq,taskiq-stream,saq} REDIS_URL

- taskiq: ListQueueBroker (LPUSH, one BRPOP per worker process); taskiq-stream: RedisStreamBroker
  (XADD, XREADGROUP BLOCK, an XACK per job). SAQ: its default Redis queue (a Lua enqueue, one BLMOVE
  per free slot, a job record it updates as the job runs).
- 2 worker processes, 50 jobs at once each, as the bench gives mcp-queue's and stock arq's workers.
- The job stamps its start and PUBLISHes "i t_start pid" on `bench:done`; this process subscribes.

It prints `ready` once both workers have run a job, then reads commands from stdin, answering each
with one JSON line:
  start N  N jobs one at a time, 5-20 ms apart: enqueue call -> job start, p50/p99 in ms
  tput N   N jobs from 32 concurrent enqueue calls: jobs/s until the last has started, and the
           workers' CPU per job in us
or {"error": ...} when a job did not start (10 s for a start sample, 120 s for tput).
Closing stdin (or SIGTERM) stops the workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import random
import signal
import subprocess
import sys
import time

import redis.asyncio as aioredis

CHANNEL = "bench:done"
WORKERS, SLOTS, ENQUEUERS = 2, 50, 32
PEERS = ("taskiq", "taskiq-stream", "saq")


# ---- the worker side ----


def make_taskiq(peer: str, url: str, publish):
    from taskiq_redis import ListQueueBroker, RedisStreamBroker

    broker = ListQueueBroker(url) if peer == "taskiq" else RedisStreamBroker(url)

    @broker.task(task_name="noop")
    async def noop(i: int) -> None:
        await publish(i, time.time())

    return broker, noop


async def noop_saq(ctx, *, i: int) -> None:
    await ctx["publish"](i, time.time())


def make_saq(url: str):
    from saq import Queue

    return Queue.from_url(url)


async def work(peer: str, url: str) -> None:
    done = aioredis.from_url(url)
    pid = os.getpid()

    async def publish(i: int, started: float) -> None:
        await done.publish(CHANNEL, f"{i} {started} {pid}")

    if peer == "saq":
        from saq import Worker

        worker = Worker(make_saq(url), [("noop", noop_saq)], concurrency=SLOTS)
        worker.context["publish"] = publish
        await worker.start()
    else:
        from taskiq.api import run_receiver_task

        broker, _ = make_taskiq(peer, url, publish)
        await broker.startup()
        await run_receiver_task(broker, max_async_tasks=SLOTS)


# ---- the producer side ----


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


class Producer:
    def __init__(self, peer: str, url: str):
        self.peer, self.url = peer, url
        self.redis = aioredis.from_url(url)
        self.started: dict[int, asyncio.Future[float]] = {}
        self.pids: set[int] = set()
        self.next_i = 0
        if peer == "saq":
            self.queue = make_saq(url)
        else:
            self.broker, self.task = make_taskiq(peer, url, None)

    async def open(self) -> None:
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(CHANNEL)
        self.reader = asyncio.create_task(self._read(pubsub))
        if self.peer == "saq":
            await self.queue.connect()
        else:
            await self.broker.startup()  # the stream broker's consumer group, before any worker reads

    async def _read(self, pubsub) -> None:
        async for message in pubsub.listen():
            if message["type"] != "message":
                continue
            i, started, pid = message["data"].split()
            self.pids.add(int(pid))
            future = self.started.pop(int(i), None)
            if future is not None and not future.done():
                future.set_result(float(started))

    async def enqueue(self) -> asyncio.Future[float]:
        i, self.next_i = self.next_i, self.next_i + 1
        future = self.started[i] = asyncio.get_running_loop().create_future()
        if self.peer == "saq":
            await self.queue.enqueue("noop", i=i)
        else:
            await self.task.kiq(i)
        return future

    async def start(self, samples: int, rng: random.Random) -> dict[str, float]:
        start, enqueue = [], []
        for _ in range(samples):
            t0 = time.time()
            future = await self.enqueue()
            enqueue.append(1000 * (time.time() - t0))
            async with asyncio.timeout(10):
                start.append(1000 * (await future - t0))
            await asyncio.sleep(rng.uniform(0.005, 0.020))
        return {
            "start_p50": percentile(start, 50),
            "start_p99": percentile(start, 99),
            "enqueue_p50": percentile(enqueue, 50),
        }

    async def tput(self, jobs: int, workers: list[int]) -> dict[str, float]:
        todo = iter(range(jobs))
        futures = []

        async def enqueuer() -> None:
            for _ in todo:
                futures.append(await self.enqueue())

        cpu0 = sum(map(cpu_seconds, workers))
        t0 = time.monotonic()
        await asyncio.gather(*(enqueuer() for _ in range(ENQUEUERS)))
        async with asyncio.timeout(120):
            await asyncio.gather(*futures)
        elapsed = time.monotonic() - t0
        cpu = sum(map(cpu_seconds, workers)) - cpu0
        return {"jobs_per_s": jobs / elapsed, "worker_cpu_us_per_job": 1e6 * cpu / jobs}


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn_workers(peer: str, url: str) -> list[subprocess.Popen]:
    command = [sys.executable, __file__, peer, url, "--worker"]
    return [
        subprocess.Popen(command, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        for _ in range(WORKERS)
    ]


def stop(workers: list[subprocess.Popen]) -> None:
    for w in workers:
        w.terminate()
    for w in workers:
        try:
            w.wait(5)
        except subprocess.TimeoutExpired:
            w.kill()


async def drive(peer: str, url: str) -> None:
    producer = Producer(peer, url)
    await producer.open()
    workers = spawn_workers(peer, url)
    pids = [w.pid for w in workers]
    try:
        async with asyncio.timeout(60):  # both workers listen once both have run a job
            while not producer.pids >= set(pids):
                await asyncio.gather(*[await producer.enqueue() for _ in range(4 * WORKERS)])
                await asyncio.sleep(0.05)
        print("ready", flush=True)
        rng = random.Random(20261203)
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            command, n = line.split()
            try:
                if command == "start":
                    figures = await producer.start(int(n), rng)
                else:
                    figures = await producer.tput(int(n), pids)
            except TimeoutError:
                figures = {"error": f"{peer}: a job of `{command} {n}` never started"}
            print(json.dumps(figures), flush=True)
    finally:
        stop(workers)


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[1] not in PEERS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(PEERS)}}} REDIS_URL")
    _die_with_parent()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    peer, url = sys.argv[1], sys.argv[2]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(work(peer, url) if sys.argv[3:] == ["--worker"] else drive(peer, url))


if __name__ == "__main__":
    main()
