"""How far one Redis goes: its commands, bytes and CPU per job and per streamed token, and from those
the jobs/s and concurrent streams one Redis core carries.

    uv run python bench/redis_scale.py [--jobs 400] [--streams 1000] [--tokens 100]

Two phases, each on a redis-server of its own, counted by Redis itself: `INFO commandstats` (every
command run, inside scripts too), `INFO stats` (commands clients sent, network bytes) and `INFO cpu`
(used_cpu_user + used_cpu_sys, the server's own CPU seconds).

- Jobs: `--jobs` calls through the real messenger path (JobClient.run: subscribe, enqueue script,
  follow, read the result) and 2 `worker` processes with the mock provider (no delay), 32 at once.
  Everything a job costs Redis: queue, claim, lease, events, result, usage, history.
- Streams: `--streams` jobs streaming at once at 50 tokens/s each, `--tokens` tokens each, through
  the real EventWriter, every one followed by the real EventHub (bench/redis_cost.py's run).

The per-core figures divide one CPU second by the CPU Redis spent per job or per token: measured
costs, extrapolated to a saturated core (Redis runs commands on one thread). The bench process also
shares the box, so the writer merges more tokens per event when it is short of CPU; the tokens per
event are printed, and the CPU per event gives the worst case (one token per event).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from bench.lab import Lab, scratch_lab  # noqa: E402
from bench.redis_cost import one_run  # noqa: E402

RATE = 50  # tokens/s per stream
CONCURRENT = 32  # jobs in flight in the job phase


class Wrong(Exception):
    """A job did not complete with its exact answer: a correctness failure."""


async def server_counts(redis) -> dict[str, Any]:
    """What Redis has done since the last CONFIG RESETSTAT (CPU: since it started)."""
    stats, commands, cpu = (
        await redis.info("stats"),
        await redis.info("commandstats"),
        await redis.info("cpu"),
    )
    calls = {name.removeprefix("cmdstat_"): v["calls"] for name, v in commands.items()}
    return {
        "ran": sum(calls.values()) - calls.get("config|resetstat", 0) - calls.get("info", 0),
        "scripts": calls.get("evalsha", 0) + calls.get("eval", 0),
        "in": stats["total_net_input_bytes"],
        "out": stats["total_net_output_bytes"],
        "cpu": cpu["used_cpu_user"] + cpu["used_cpu_sys"],
        "xadd": calls.get("xadd", 0),
        "calls": calls,
    }


async def jobs_phase(lab: Lab, jobs: int) -> dict[str, Any]:
    from messenger.runtime import open_runtime
    from shared.models import ChatRequest
    from shared.settings import load_settings
    from worker.providers.mock import mock_reply

    site = lab.site("jobs")
    lab.add_workers(site, 2, WORKER_CONCURRENCY=CONCURRENT)
    async with open_runtime(load_settings(redis_url=site.url)) as runtime:
        site.runtime = runtime
        await lab.wait_ready(site)
        limit = asyncio.Semaphore(CONCURRENT)

        async def one(i: int) -> None:
            async with limit:
                result = await runtime.jobs.run(ChatRequest(message=f"job {i}"), timeout=60, caller="bench")
            if result.ai_response != "".join(mock_reply([{"role": "user", "content": f"job {i}"}])):
                raise Wrong(f"job {i}: {result.status} {result.error or result.ai_response[:80]!r}")

        await asyncio.gather(*(one(i) for i in range(CONCURRENT)))  # warm: connections, scripts
        await runtime.redis.config_resetstat()
        before = await server_counts(runtime.redis)
        t0 = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(jobs)))
        elapsed = time.monotonic() - t0
        after = await server_counts(runtime.redis)
    lab.stop(site.workers)
    cpu = after["cpu"] - before["cpu"]
    return {
        "jobs_per_s": jobs / elapsed,
        "ran": after["ran"] / jobs,
        "scripts": after["scripts"] / jobs,
        "in": after["in"] / jobs,
        "out": after["out"] / jobs,
        "cpu_us": 1e6 * cpu / jobs,
        "per_core": jobs / cpu,
        "busy": cpu / elapsed,
        "top": sorted(
            ((n / jobs, c) for c, n in after["calls"].items() if c not in ("info", "config|resetstat")),
            reverse=True,
        )[:8],
    }


async def streams_phase(lab: Lab, streams: int, tokens: int) -> dict[str, float]:
    from messenger.hub import EventHub
    from shared.connection import connect

    site = lab.site("streams")
    redis = connect(site.url)
    hub = EventHub(redis)
    await hub.start()
    try:
        before = await server_counts(redis)
        t0 = time.monotonic()
        figures = await one_run(redis, hub, streams, tokens, old=False)
        elapsed = time.monotonic() - t0
        after = await server_counts(redis)
    finally:
        await hub.close()
        await redis.aclose()
    n = streams * tokens
    cpu = after["cpu"] - before["cpu"]
    events = max(after["xadd"], 1)
    cpu_per_token = cpu / n
    return {
        **figures,
        "cpu_us_per_token": 1e6 * cpu_per_token,
        "cpu_us_per_event": 1e6 * cpu / events,
        "achieved_tokens_per_s": n / elapsed,
        "cores_per_1000": 1000 * RATE * cpu_per_token,
        "streams_per_core": 1 / (RATE * cpu_per_token),
        "streams_per_core_1_token_events": 1e6 / (RATE * 1e6 * cpu / events),
        "elapsed": elapsed,
    }


def report(args: argparse.Namespace, job: dict[str, Any], stream: dict[str, float], box: str) -> None:
    print(f"$ uv run python bench/redis_scale.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"{box} (others' load shows as fewer tokens per event, not as Redis CPU)\n")
    print(f"Per job ({args.jobs} mock jobs, 2 workers, {CONCURRENT} at once, every answer exact; "
          f"{job['jobs_per_s']:,.0f} jobs/s achieved, Redis {job['busy']:.0%} busy):")  # fmt: skip
    print("| figure | measured on this machine |\n|---|---|")
    print(f"| commands Redis ran per job (inside scripts too) | {job['ran']:.1f} |")
    print(f"| … of which script calls (one round trip each) | {job['scripts']:.1f} |")
    print(f"| bytes into / out of Redis per job | {job['in']:,.0f} / {job['out']:,.0f} |")
    print(f"| Redis CPU per job | {job['cpu_us']:.0f} µs |")
    print(f"| the most frequent, per job | {', '.join(f'{c} {n:.1f}' for n, c in job['top'])} |")
    print(f"| jobs/s one Redis core carries (1 s ÷ CPU per job, extrapolated) | {job['per_core']:,.0f} |\n")
    print(f"Per streamed token ({args.streams} streams × {args.tokens} tokens at {RATE} tokens/s, "
          f"{stream['achieved_tokens_per_s']:,.0f} tokens/s achieved, every answer whole and in order):")  # fmt: skip
    print("| figure | measured on this machine |\n|---|---|")
    print(
        f"| commands Redis ran / clients sent per token | {stream['ran_per_token']:.2f} / {stream['sent_per_token']:.2f} |"
    )
    print(
        f"| bytes into / out of Redis per token | {stream['in_bytes_per_token']:.0f} / {stream['out_bytes_per_token']:.0f} |"
    )
    print(f"| tokens per event (those that piled up merged) | {stream['tokens_per_event']:.2f} |")
    print(
        f"| Redis CPU per token / per event | {stream['cpu_us_per_token']:.1f} µs / {stream['cpu_us_per_event']:.1f} µs |"
    )
    print(f"| Redis CPU per 1,000 streams at {RATE} tokens/s | {stream['cores_per_1000']:.2f} cores |")
    print(f"| concurrent streams one Redis core carries (extrapolated) | {stream['streams_per_core']:,.0f} |")
    print(
        f"| … if every token were its own event (extrapolated) | {stream['streams_per_core_1_token_events']:,.0f} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=100, help="per stream (at 50/s: 2 s of streaming)")
    args = parser.parse_args()
    with scratch_lab("mcpq-redis-scale-") as lab:
        job = asyncio.run(jobs_phase(lab, args.jobs))
        stream = asyncio.run(streams_phase(lab, args.streams, args.tokens))
        version = lab.servers[0].client().info("server")["redis_version"]
    report(
        args,
        job,
        stream,
        f"redis-server {version}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
