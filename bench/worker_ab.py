"""A/B of a worker change: the no-op figures of workers from two checkouts, side by side, alternating.

    git worktree add /tmp/base <base commit>
    uv run python bench/worker_ab.py /tmp/base [--rounds 4] [--jobs 2000] [--samples 100]

Site A runs `worker.cli` from the base checkout, site B from this one, each with its own
redis-server and 2 worker processes × 50 slots, both driven from this process (this checkout's
messenger code). Each round measures throughput (bench/throughput.py) and then enqueue → start
(bench/start_latency.py) on both sites, which goes first turning every round, so both see the same
noise; it prints each round and the medians: jobs/s, worker, Redis and bench-process CPU per job,
start p50/p99, and at the end each worker's idle CPU. A job that does not complete stops the run.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import random  # noqa: E402
import subprocess  # noqa: E402
from collections import defaultdict  # noqa: E402

from bench import start_latency, throughput  # noqa: E402
from bench.lab import Lab, Site, child_env, cpu_seconds, own_cpu_seconds, scratch_lab  # noqa: E402
from bench.stats import median  # noqa: E402

SITES = ("A", "B")


def start(lab: Lab, name: str, root: Path) -> Site:
    site = lab.site(name)
    env = child_env(REDIS_URL=site.url, WORKER_CONCURRENCY=50)
    env["PYTHONPATH"] = str(root)  # the checkout's worker package, this environment's libraries
    for _ in range(2):
        site.workers.append(lab.spawn(f"{name}-worker", ["-m", "worker.cli"], env, stdin=subprocess.DEVNULL))
    return site


async def one_round(sites: dict[str, Site], order: list[str], args, rng, figures: dict) -> None:
    for name in order:
        redis_pid = sites[name].server.proc.pid  # type: ignore[union-attr]
        redis0, own0 = cpu_seconds(redis_pid), own_cpu_seconds()
        f = await throughput.measure(sites[name], args.jobs)
        figures[f"{name} jobs/s"].append(f["jobs_per_s"])
        figures[f"{name} worker µs/job"].append(f["worker_cpu_us_per_job"])
        figures[f"{name} Redis µs/job"].append(1e6 * (cpu_seconds(redis_pid) - redis0) / args.jobs)
        figures[f"{name} bench µs/job"].append(1e6 * (own_cpu_seconds() - own0) / args.jobs)
    for name in order:
        f = await start_latency.measure(sites[name], args.samples, rng)
        figures[f"{name} start p50 ms"].append(f["start_p50"])
        figures[f"{name} start p99 ms"].append(f["start_p99"])


async def run(args) -> None:
    from messenger.runtime import open_runtime
    from shared.settings import load_settings

    with scratch_lab("mcpq-ab-") as lab:
        sites = {"A": start(lab, "A", args.base), "B": start(lab, "B", ROOT)}
        async with contextlib.AsyncExitStack() as stack:
            for site in sites.values():
                site.runtime = await stack.enter_async_context(
                    open_runtime(load_settings(redis_url=site.url))
                )
                await lab.wait_ready(site)
                await throughput.measure(site, 300)  # warm up
            rng, figures = random.Random(20261203), defaultdict(list)
            for r in range(args.rounds):
                await one_round(sites, list(SITES if r % 2 == 0 else SITES[::-1]), args, rng, figures)
                print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:,.2f}" for k, v in figures.items()))
            idle = await start_latency.idle_cpu([pid for s in sites.values() for pid in s.pids], 3)
    print(f"A = {args.base}, B = {ROOT}; median of {args.rounds} rounds:")
    for key in sorted(figures, key=lambda k: (k[2:], k[0])):
        print(f"  {key}: {median(figures[key]):,.2f}")
    print("idle worker CPU, % of a core: " + ", ".join(f"{cpu:.3f}" for cpu in idle.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", type=lambda p: Path(p).resolve(), help="a checkout of the base commit")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per throughput figure")
    parser.add_argument("--samples", type=int, default=100, help="enqueue → start samples per round")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
