"""N concurrent streams in ONE worker process at 50 tokens/s each, beside the bare pub/sub floor.

    uv run python bench/streams.py [--streams 100,300,1000] [--tokens-per-s 50]

One redis-server, one real worker process (`python -m worker.cli`, the mock provider pacing
--tokens-per-s, WORKER_CONCURRENCY above N). This process is the messenger: it submits N jobs
spread over STAGGER seconds and follows each through the real JobClient (hub, collector). Per N:
token delay (the worker's event `ts` → this process has it, p50/p99), the delivered rate (each
stream's tokens after its first token event over the time to its last, against the paced rate: a
stream paced exactly reads 100 %), the token delay while all N stream at once (between the last stream's first token and the first stream's last: no job
starts or ends then, so it is the cost of tokens alone, where the whole run's p99 also holds the
ramp of N job starts in STAGGER seconds), the p99 of the tokens written before that (while jobs
start) and after it (while jobs end), the CPU of the worker and of this process (the messenger
side), each also per token, and in the same round the floor: this machine's bare PUBLISH →
subscriber delay at the same pacing (bench/publisher_proc.py raw mode, through
token_delivery.floor). Every answer must be whole.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402

from bench import token_delivery  # noqa: E402
from bench.lab import Lab, Site, cpu_seconds, runqueue_seconds, scratch_lab  # noqa: E402
from bench.stats import ms, percentile  # noqa: E402

STAGGER = 0.5  # seconds over which the N jobs are submitted: all N stream at once for most of a run
WORDS = " ".join(f"w{i}" for i in range(40))  # the mock echoes 40 words: 56 tokens a stream
TOKENS = 56  # what the mock answers to WORDS: its 40 words, "Mock answer to:" and a 12-word tail


class Lost(Exception):
    """An answer came back incomplete or reordered: a correctness failure."""


def expected(i: int) -> str:
    from worker.providers.mock import mock_reply

    return "".join(mock_reply([{"role": "user", "content": f"s{i} {WORDS}"}]))


async def follow(site: Site, n: int, rate: float) -> dict[str, float]:
    from shared.models import ChatRequest

    runtime = site.runtime
    delays: list[tuple[float, float]] = []  # (event ts, delay)
    spans: list[tuple[float, float]] = []  # per stream: its first and last token's ts
    rates: list[float] = []
    wrong: list[str] = []
    rng = random.Random(n)
    # the answers to check, made before the round: made as each job ended (18 ms of CPU for 1,000),
    # they ran in the follower's loop while the jobs ended (py-spy: 8-10 % of its samples then)
    answers = [expected(i) for i in range(n)]
    t_start = time.time() + 0.3

    async def one(i: int) -> None:
        await asyncio.sleep(max(0.0, t_start + rng.uniform(0, STAGGER) - time.time()))
        # per token event: its ts, when we had it, its text. Only noted while the round runs (this
        # process is the messenger side being measured; floats and strings in lists are no new objects
        # for the collector to scan); the delays and rates are worked out once every stream has ended
        stamps: list[float] = []
        had: list[float] = []
        texts: list[str] = []

        async def on_event(event, transcript) -> None:
            if event is not None and event.type == "token":
                stamps.append(event.ts)
                had.append(time.time())
                texts.append(event.text)

        request = ChatRequest(message=f"s{i} {WORDS}")
        result = await runtime.jobs.run(request, on_event=on_event, timeout=120)
        if result.ai_response != answers[i]:
            wrong.append(f"job {result.job_id}: {result.status} {result.error or ''}")
        else:
            followed.append((stamps, had, texts))

    def measured(stamps: list[float], had: list[float], texts: list[str]) -> None:
        """One stream's token delays, and its rate: a merged token event carries several tokens,
        each mock token one word (the last has no space)."""
        delays.extend((ts, at - ts) for ts, at in zip(stamps, had, strict=True))
        events.append(len(stamps))
        if len(stamps) > 1 and stamps[-1] > stamps[0]:
            k0, k1 = len(texts[0].split()), sum(len(text.split()) for text in texts)
            rates.append((k1 - k0) / (stamps[-1] - stamps[0]))
            spans.append((stamps[0], stamps[-1]))

    followed: list[tuple[list[float], list[float], list[str]]] = []
    worker_pid, redis_pid = site.pids[0], site.server.proc.pid
    events: list[int] = []  # per stream: its token events
    cpu0, wall0, wait0 = cpu_seconds(worker_pid), time.monotonic(), runqueue_seconds(worker_pid)
    ours0, redis0 = time.process_time(), cpu_seconds(redis_pid)
    await asyncio.gather(*(one(i) for i in range(n)))
    cpu, wall = cpu_seconds(worker_pid) - cpu0, time.monotonic() - wall0
    ours, redis = time.process_time() - ours0, cpu_seconds(redis_pid) - redis0
    waited = runqueue_seconds(worker_pid) - wait0
    if wrong:
        raise Lost(f"{n} streams: {len(wrong)} wrong; e.g. {wrong[0]}")
    for stream in followed:
        measured(*stream)
    delays_ms = ms([d for _, d in delays])
    # while every stream is between its first and last token: no job starts or ends, tokens only
    lo, hi = max(t0 for t0, _ in spans), min(t1 for _, t1 in spans)
    steady_ms = ms([d for ts, d in delays if lo <= ts <= hi]) or [float("nan")]
    ramp_ms = ms([d for ts, d in delays if ts < lo]) or [float("nan")]  # job starts while others stream
    ends_ms = ms([d for ts, d in delays if ts > hi]) or [float("nan")]  # job ends while others stream
    return {
        "delay_p50": percentile(delays_ms, 50),
        "delay_p99": percentile(delays_ms, 99),
        "steady_p50": percentile(steady_ms, 50),
        "steady_p99": percentile(steady_ms, 99),
        "steady_s": max(0.0, hi - lo),
        "ramp_p99": percentile(ramp_ms, 99),
        "ends_p99": percentile(ends_ms, 99),
        "rate_p50": percentile(rates, 50) / rate,
        "rate_p1": percentile(rates, 1) / rate,
        "worker_cpu": 100 * cpu / wall,
        "messenger_cpu": 100 * ours / wall,
        "redis_cpu": 100 * redis / wall,
        "tokens_per_event": n * TOKENS / max(1, sum(events)),
        "worker_us": 1e6 * cpu / (n * TOKENS),  # CPU per token, the job's own start and end included
        "messenger_us": 1e6 * ours / (n * TOKENS),
        "worker_waited": 100 * waited / wall,
    }


async def measure(
    lab: Lab, site: Site, counts: list[int], rate: float, with_floor: bool = True
) -> list[tuple[int, dict, dict]]:
    from messenger.runtime import open_runtime
    from shared.settings import load_settings

    rows = []
    async with open_runtime(load_settings(redis_url=site.url)) as runtime:
        site.runtime = runtime
        await lab.wait_ready(site)
        await follow(site, 5, rate)  # warm up
        print(f"worker pid {site.pids[0]}, messenger pid {os.getpid()}", file=sys.stderr)
        for n in counts:
            ours = await follow(site, n, rate)
            floor = {"floor_p50": float("nan"), "floor_p99": float("nan")}
            if with_floor:
                floor = await token_delivery.floor(
                    lab, site, streams=n, tokens=TOKENS, interval=1 / rate, stagger=STAGGER, seed=n
                )
            rows.append((n, ours, floor))
            print(f"{n} streams done", file=sys.stderr)
    return rows


def steady(ours: dict) -> str:
    if not ours["steady_s"]:
        return "never all at once (the ramp outlasted the first stream)"
    return f"{ours['steady_p50']:.1f} / {ours['steady_p99']:.1f} ms ({ours['steady_s']:.1f} s)"


def table(rows: list[tuple[int, dict, dict]], rate: float) -> list[str]:
    lines = [
        f"| streams in one worker ({rate:.0f} tok/s each) | token delay p50 / p99 | goal p99 ≤ 50 ms "
        "| while all N stream: delay p50 / p99 (for how long) | p99 while jobs start / end "
        "| floor p50 / p99 (bare PUBLISH) | p99 ÷ floor p99 | delivered rate p50 / p1 (of paced) "
        "| goal ≥ 95 % | CPU worker / messenger / redis | CPU per token worker / messenger "
        "| worker waited for a CPU | tokens per event |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, ours, floor in rows:
        lines.append(
            f"| {n} | {ours['delay_p50']:.1f} / {ours['delay_p99']:.1f} ms "
            f"| {'yes' if ours['delay_p99'] <= 50 else 'no'} "
            f"| {steady(ours)} | {ours['ramp_p99']:.1f} / {ours['ends_p99']:.1f} ms "
            f"| {floor['floor_p50']:.1f} / {floor['floor_p99']:.1f} ms "
            f"| ×{ours['delay_p99'] / max(floor['floor_p99'], 1e-9):.1f} "
            f"| {100 * ours['rate_p50']:.0f} % / {100 * ours['rate_p1']:.0f} % "
            f"| {'yes' if ours['rate_p1'] >= 0.95 else 'no'} "
            f"| {ours['worker_cpu']:.0f} % / {ours['messenger_cpu']:.0f} % / {ours['redis_cpu']:.0f} % "
            f"| {ours['worker_us']:.0f} / {ours['messenger_us']:.0f} µs | {ours['worker_waited']:.0f} % "
            f"| {ours['tokens_per_event']:.2f} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="100,300,1000", help="comma-separated stream counts")
    parser.add_argument("--tokens-per-s", type=float, default=50.0, help="paced rate of each stream")
    parser.add_argument("--no-floor", action="store_true", help="skip the bare PUBLISH floor (to profile)")
    args = parser.parse_args()
    counts = [int(c) for c in args.streams.split(",")]
    with scratch_lab("mcpq-streams-") as lab:
        site = lab.site("streams")
        lab.add_workers(
            site, 1, WORKER_CONCURRENCY=max(counts) + 10, MOCK_TOKEN_DELAY_MS=round(1000 / args.tokens_per_s)
        )
        rows = asyncio.run(measure(lab, site, counts, args.tokens_per_s, not args.no_floor))
    print(f"$ uv run python bench/streams.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"load average at end {' '.join(open('/proc/loadavg').read().split()[:3])}")
    print("\n".join(table(rows, args.tokens_per_s)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
