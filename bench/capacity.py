"""MODEL_LIMITS against a provider that enforces the same limit: how close to the limit do the workers
run, and how many 429s do they meet?

A test server (tests/openai_server.py) enforces `--rpm` over sliding 5-second windows, answering 429
+ Retry-After beyond it, the way providers enforce short windows. Two worker processes on a fresh
redis-server run `--jobs` jobs twice, in the same run: with MODEL_LIMITS set to the same rpm, and
(the peer) with no MODEL_LIMITS, where only the shared 429 cool-down holds them back.

    uv run python -m bench.capacity [--jobs 300] [--rpm 1200]

Prints the achieved request rate (successful calls a second, first to last) as a fraction of the
limit (goal >= 95 %) and the 429 rate, upstream 429s per call sent (goal <= 1 %). Exit 1 if a job did
not complete or a goal was missed.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from openai_server import OpenAIServer  # noqa: E402
from processes import WorkerProcesses, start_openai_workers  # noqa: E402
from redis_server import RedisServer  # noqa: E402

from messenger.runtime import open_runtime  # noqa: E402
from shared.models import ChatRequest  # noqa: E402
from shared.settings import load_settings  # noqa: E402

MODEL = "gpt-4o-mini"
WINDOW = 5.0


async def one_run(redis: RedisServer, tmp: Path, jobs: int, rpm: int, limited: bool) -> dict:
    redis.client().flushall()
    server = OpenAIServer()
    server.script(reply="a short answer", rpm=rpm, window=WINDOW, burst=1)
    server.start()
    workers = WorkerProcesses(redis, tmp)
    try:
        env = {"MODEL_LIMITS": json.dumps({MODEL: {"rpm": rpm}})} if limited else {}
        start_openai_workers(
            workers, redis.url, server, count=2, WORKER_CONCURRENCY="50", LOG_LEVEL="WARNING", **env
        )
        settings = load_settings(
            redis_url=redis.url,
            ai_provider="openai",
            openai_base_url=server.base_url,
            openai_default_model=MODEL,
        )
        async with open_runtime(settings) as rt:
            started = time.monotonic()
            results = await asyncio.gather(
                *(rt.jobs.run(ChatRequest(message=f"job {i}")) for i in range(jobs))
            )
            took = time.monotonic() - started
    finally:
        workers.stop_all()
        server.stop()
    served = sorted(server.answered_at)
    span = served[-1] - served[0] if len(served) > 1 else 0.0
    achieved = (len(served) - 1) / span if span > 0 else float("nan")
    return {
        "completed": sum(r.status == "completed" for r in results),
        "calls": len(server.chat_requests),
        "429s": server.sent_429s,
        "rate": achieved,
        "fraction": achieved / (rpm / 60),
        "took": took,
    }


def show(name: str, row: dict, jobs: int) -> None:
    print(
        f"{name:26} {row['completed']:>4}/{jobs:<4} {row['rate']:>8.2f}/s {row['fraction']:>7.1%} "
        f"{row['429s']:>6} {row['429s'] / max(row['calls'], 1):>7.2%} {row['took']:>7.1f} s"
    )


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--rpm", type=int, default=1200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp))
        redis.start()
        try:
            limited = await one_run(redis, Path(tmp), args.jobs, args.rpm, limited=True)
            bare = await one_run(redis, Path(tmp), args.jobs, args.rpm, limited=False)
        finally:
            redis.stop()
    print(
        f"{args.jobs} jobs, 2 workers, provider limit rpm {args.rpm} ({args.rpm / 60:g}/s) over {WINDOW:g} s windows"
    )
    print(f"{'':26} {'done':>9} {'rate':>10} {'of limit':>7} {'429s':>6} {'429 rate':>7} {'time':>9}")
    show(f"MODEL_LIMITS rpm {args.rpm}", limited, args.jobs)
    show("no MODEL_LIMITS (peer)", bare, args.jobs)
    goals = limited["fraction"] >= 0.95 and limited["429s"] / max(limited["calls"], 1) <= 0.01
    complete = limited["completed"] == bare["completed"] == args.jobs
    print(f"goals (>= 95 % of the limit, <= 1 % 429s): {'met' if goals else 'MISSED'}")
    return 0 if goals and complete else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
