"""mcp-queue's benchmarks: every figure of the speed targets, beside arq's stock settings, in one run.

    uv run python bench/run.py [--rounds N] [--quick] [--only queues]

Each configuration gets its own redis-server and worker processes, started here and stopped at the
end. Each round runs every configuration once, round-robin, so they all see the same noise; the
table shows medians over rounds. The 1,000-in-flight figure runs once, first, while this process
is still fresh (its memory is what it measures). Then, each in a process of its own, the scale
tables: 1,000 streams in one worker process (bench/streams.py) and 1,000 MCP callers on one
messenger (bench/callers.py), 300 each with --quick. Exit status: 0 when every correctness check held
(even if a speed target was missed: the table says so), 1 when a token was lost or reordered or an
answer came back incomplete, 2 when the bench itself could not run.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402

from bench import cold_start, inflight, redis_cost, start_latency, throughput, token_delivery, ttft  # noqa: E402
from bench.lab import Lab, Site, box_cpu_seconds, forget_settings, own_cpu_seconds  # noqa: E402
from bench.peer_queues import PEERS, Peer, PeerFailed, PeerGone, start_peers  # noqa: E402
from bench.stats import median  # noqa: E402

CORRECTNESS = (
    cold_start.NotSubscribed,
    start_latency.Incomplete,
    token_delivery.Lost,
    redis_cost.Lost,
    throughput.Unfinished,
    ttft.NoAnswer,
    inflight.Incomplete,
)
COLD_FOLLOWS = 200


@dataclass
class Plan:
    rounds: int
    only_queues: bool = False  # `--only queues`: the no-op table alone (about a minute with --quick)
    start_samples: int = 200
    stock_start_samples: int = 16
    idle_seconds: float = 5.0
    streams: int = 200
    tokens: int = 150
    throughput_jobs: int = 3000
    stock_throughput_jobs: int = 600
    ttft_pairs: int = 20
    ttft_side: int = 6  # of those pairs, how many also take a bare, a collector and a stock arq sample
    scale_streams: int = 1000  # streams in one worker process (bench/streams.py), after the rest
    scale_callers: int = 1000  # MCP callers on one messenger (bench/callers.py), after the rest
    inflight_jobs: int = 1000

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        only_queues = args.only == "queues"
        if args.quick:
            return cls(
                rounds=args.rounds or 1,
                only_queues=only_queues,
                start_samples=50,
                stock_start_samples=4,
                idle_seconds=2.0,
                tokens=75,
                throughput_jobs=1000,
                stock_throughput_jobs=200,
                ttft_pairs=8,
                ttft_side=3,
                scale_streams=300,
                scale_callers=300,
            )
        return cls(rounds=args.rounds or 3, only_queues=only_queues)


@dataclass
class Row:
    figure: str
    target: str
    key: str
    stock_key: str | None = None
    unit: str = "ms"
    met: Callable[[float], bool] | None = None
    higher_is_better: bool = False
    digits: int = 2


def at_most(limit: float) -> Callable[[float], bool]:
    return lambda v: v <= limit


def at_least(limit: float) -> Callable[[float], bool]:
    return lambda v: v >= limit


def rows(plan: Plan) -> list[Row]:
    n = plan.inflight_jobs
    streams = f"{plan.streams} streams × 50 tok/s"
    return [
        Row(
            "enqueue → job start, p50",
            "≤ 1 ms",
            "start.ours.start_p50",
            "start.stock.start_p50",
            met=at_most(1),
        ),
        Row(
            "enqueue → job start, p99",
            "≤ 3 ms",
            "start.ours.start_p99",
            "start.stock.start_p99",
            met=at_most(3),
        ),
        Row("enqueue → messenger sees start, p50", "–", "start.ours.seen_p50", "start.stock.seen_p50"),
        Row("enqueue call (messenger), p50", "–", "start.ours.enqueue_p50", "start.stock.enqueue_p50"),
        Row(
            "idle worker CPU (% of a core)",
            "≤ 0.5 %",
            "idle.ours",
            "idle.stock",
            unit="%",
            met=at_most(0.5),
            digits=3,
        ),
        Row(f"token → messenger, p50 ({streams})", "≤ 0.5 ms", "tokens.token_p50", met=at_most(0.5)),
        Row(f"token → messenger, p99 ({streams})", "≤ 2 ms", "tokens.token_p99", met=at_most(2)),
        Row("tokens lost or reordered", "0", "tokens.lost", unit="", met=at_most(0), digits=0),
        Row("token handed to publisher → messenger, p50", "–", "tokens.handed_p50"),
        Row("token handed to publisher → messenger, p99", "–", "tokens.handed_p99"),
        Row("floor: bare PUBLISH → bare subscriber, p50", "–", "tokens.floor_p50"),
        Row("floor: bare PUBLISH → bare subscriber, p99", "–", "tokens.floor_p99"),
        Row("tokens per event (coalescing)", "–", "tokens.tokens_per_event", unit=""),
        Row("messenger CPU while following (% of a core)", "–", "tokens.messenger_cpu", unit="%", digits=1),
        Row("messenger longest full GC pause during the figure", "–", "tokens.gc_pause_max"),
        Row("publisher pacing late, p99", "–", "tokens.publisher_late_p99"),
        Row(
            "throughput, 2 workers, mock",
            "≥ 1,000 jobs/s",
            "tput.ours.jobs_per_s",
            "tput.stock.jobs_per_s",
            unit="jobs/s",
            met=at_least(1000),
            higher_is_better=True,
            digits=0,
        ),
        Row(
            "enqueue rate (32 concurrent calls)",
            "–",
            "tput.ours.enqueue_per_s",
            "tput.stock.enqueue_per_s",
            unit="jobs/s",
            higher_is_better=True,
            digits=0,
        ),
        Row(
            "worker CPU per job",
            "–",
            "tput.ours.worker_cpu_us_per_job",
            "tput.stock.worker_cpu_us_per_job",
            unit="µs",
            digits=0,
        ),
        Row(
            "TTFT, MCP caller − direct stream, p50 (paced provider, real `messenger serve`)",
            "≤ 3 ms",
            "ttft.overhead_p50",
            met=at_most(3),
        ),
        Row("TTFT, MCP caller − direct stream, p95", "–", "ttft.overhead_p95"),
        Row("last token, MCP caller − direct stream, p50", "–", "ttft.last_overhead_p50"),
        Row("last token, MCP caller − direct stream, p95", "–", "ttft.last_overhead_p95"),
        Row("TTFT at the MCP caller, p50", "–", "ttft.mcp_p50"),
        Row("floor: TTFT calling the server directly (openai SDK), p50", "–", "ttft.direct_p50"),
        Row("floor: the same over a bare HTTP connection, p50", "–", "ttft.bare_p50"),
        Row(
            "TTFT at the messenger's collector (no MCP) − direct, p50",
            "–",
            "ttft.collector_overhead_p50",
            "ttft.stock_overhead_p50",
        ),
        Row(
            f"{n} in flight (4 workers): answers complete",
            f"{n}/{n}",
            "inflight.complete",
            unit="",
            met=at_least(n),
            higher_is_better=True,
            digits=0,
        ),
        Row(f"{n} in flight: most running at once", "–", "inflight.peak_running", unit="", digits=0),
        Row(
            f"{n} in flight: messenger memory per job", "report", "inflight.kib_per_job", unit="KiB", digits=1
        ),
        Row(f"{n} in flight: time to finish all", "–", "inflight.seconds", unit="s"),
        Row(f"{n} in flight: peak Redis clients", "–", "inflight.peak_redis_clients", unit="", digits=0),
        Row(
            "Redis commands sent per streamed token",
            "≤ 1.2",
            "redis.sent_per_token",
            met=at_most(1.2),
            unit="",
        ),
        Row(
            "… the previous write (MULTI/EXEC, XADD + PUBLISH per event), same run",
            "–",
            "redis.old_sent_per_token",
            unit="",
        ),
        Row(
            "bytes into Redis per streamed token",
            "≤ 200",
            "redis.in_bytes_per_token",
            unit="B",
            met=at_most(200),
            digits=0,
        ),
        Row("… the previous write, same run", "–", "redis.old_in_bytes_per_token", unit="B", digits=0),
        Row(
            "Redis memory per finished job (stream bytes × time kept)",
            "O(answer)",
            "redis.kb_hours_per_job",
            unit="KB·h",
        ),
        Row("… the previous write (kept an hour), same run", "–", "redis.old_kb_hours_per_job", unit="KB·h"),
        Row(
            f"fresh messenger: {COLD_FOLLOWS} follows at once subscribed",
            f"{COLD_FOLLOWS}/{COLD_FOLLOWS}",
            "cold.confirmed",
            unit="",
            met=at_least(COLD_FOLLOWS),
            higher_is_better=True,
            digits=0,
        ),
    ]


class Results:
    def __init__(self) -> None:
        self.values: dict[str, list[float]] = defaultdict(list)
        self.failures: list[str] = []
        self.notes: list[str] = []  # a peer queue that could not be run

    def get(self, key: str | None) -> float | None:
        return median(self.values[key]) if key and self.values.get(key) else None

    async def record(self, prefix: str, coro) -> None:
        """Run one figure and keep its values; a correctness failure is noted and the run goes on."""
        try:
            figures = await coro
        except CORRECTNESS as e:
            self.failures.append(f"{prefix}: {e}")
            print(f"  CORRECTNESS FAILURE in {prefix}: {e}", file=sys.stderr)
            return
        for name, value in figures.items():
            self.values[f"{prefix}.{name}"].append(value)


def start_sites(lab: Lab, base_url: str, plan: Plan) -> dict[str, Site]:
    """One redis-server per configuration, with its worker processes (they boot meanwhile)."""
    openai_env = {"AI_PROVIDER": "openai", "OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "sk-bench"}
    workers: dict[str, tuple[bool, int, dict]] = {  # name: (stock arq?, processes, settings)
        "inflight": (False, 4, {"WORKER_CONCURRENCY": 250, "MOCK_TOKEN_DELAY_MS": 100}),
        "start-ours": (False, 1, {}),
        "start-stock": (True, 1, {}),
        "tokens": (False, 0, {}),
        "redis-cost": (False, 0, {}),
        "tput-ours": (False, 2, {"WORKER_CONCURRENCY": 50}),
        "tput-stock": (True, 2, {"WORKER_CONCURRENCY": 50}),
        "ttft-ours": (False, 1, openai_env),
        "ttft-stock": (True, 1, openai_env),
    }
    if plan.only_queues:
        workers = {name: workers[name] for name in ("tput-ours", "tput-stock")}
    sites = {}
    for name, (stock, count, settings) in workers.items():
        sites[name] = lab.site(name, stock=stock)
        lab.add_workers(sites[name], count, **settings)
    return sites


async def bench(plan: Plan, lab: Lab, results: Results) -> None:
    import messenger.server  # noqa: F401  (a messenger's heap: what a full GC pause walks through)
    from messenger.runtime import open_runtime
    from shared.settings import load_settings

    rng = random.Random(20261121)
    base_url = await ttft.start_provider(lab)
    sites = start_sites(lab, base_url, plan)
    served = None if plan.only_queues else lab.messenger(sites["ttft-ours"])  # the TTFT figure's, over HTTP
    booting = asyncio.create_task(start_peers(lab))  # they install and boot meanwhile
    async with contextlib.AsyncExitStack() as stack:
        for site in sites.values():
            site.runtime = await stack.enter_async_context(open_runtime(load_settings(redis_url=site.url)))
        t0 = time.monotonic()
        healthy = [asyncio.to_thread(lab.wait_healthy, *served)] if served else []
        await asyncio.gather(*(lab.wait_ready(site) for site in sites.values()), *healthy)
        peers, results.notes = await booting
        for note in results.notes:
            print(note, file=sys.stderr)
        print(f"workers ready in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        for site in sites.values():  # the figures measure a messenger that is up and running
            async with site.runtime.hub.follow("bench-warm-up"):
                pass
        paths = None
        if served:
            paths = await ttft.connect(base_url, served[1], sites["ttft-ours"], sites["ttft-stock"])
            stack.push_async_callback(paths.close)
            await once(plan, lab, sites, results)
        for r in range(plan.rounds):
            t0 = time.monotonic()
            if paths:
                await one_round(plan, lab, sites, paths, results, rng, turn=r)
            await queues(plan, sites, peers, results, rng, turn=r)
            print(f"round {r + 1}/{plan.rounds}: {time.monotonic() - t0:.1f} s", file=sys.stderr)


async def once(plan: Plan, lab: Lab, sites: dict[str, Site], results: Results) -> None:
    """The figures measured once, first, while this process is fresh (its memory is one of them)."""
    t0 = time.monotonic()
    await results.record("inflight", inflight.measure(sites["inflight"], plan.inflight_jobs))
    lab.stop(sites["inflight"].workers)
    await results.record("cold", cold_start.measure(sites["tokens"], COLD_FOLLOWS))
    await results.record("redis", redis_cost.figures(sites["redis-cost"].url, plan.streams, plan.tokens))
    print(f"{plan.inflight_jobs} in flight, fresh messenger: {time.monotonic() - t0:.1f} s", file=sys.stderr)


async def one_round(
    plan: Plan,
    lab: Lab,
    sites: dict[str, Site],
    paths: ttft.Paths,
    results: Results,
    rng: random.Random,
    *,
    turn: int,
) -> None:
    """Every configuration once; which of each pair goes first alternates between rounds."""

    def ordered(pair: list) -> list:
        return pair[::-1] if turn % 2 else pair

    ours, stock = sites["start-ours"], sites["start-stock"]
    for site, samples in ordered([(ours, plan.start_samples), (stock, plan.stock_start_samples)]):
        kind = "stock" if site.stock else "ours"
        await results.record(f"start.{kind}", start_latency.measure(site, samples, rng))
    cpu = await start_latency.idle_cpu([*ours.pids, *stock.pids], plan.idle_seconds)
    results.values["idle.ours"].append(cpu[ours.pids[0]])
    results.values["idle.stock"].append(cpu[stock.pids[0]])

    for how in ordered([token_delivery.floor, token_delivery.measure]):
        load = {"streams": plan.streams, "tokens": plan.tokens, "seed": rng.randrange(1 << 30)}
        await results.record("tokens", how(lab, sites["tokens"], **load))

    await results.record("ttft", ttft.measure(paths, plan.ttft_pairs, plan.ttft_side, rng))


async def queues(
    plan: Plan,
    sites: dict[str, Site],
    peers: dict[str, Peer],
    results: Results,
    rng: random.Random,
    *,
    turn: int,
) -> None:
    """Every queue's no-op jobs/s on 2 workers × 50 slots, then enqueue → start on those same workers
    (stock arq's start is the figure above), each in an order that turns by one every round."""
    ours, stock = sites["tput-ours"], sites["tput-stock"]
    figures: dict[str, dict[str, Callable]] = {
        "tput": {
            "ours": lambda: throughput.measure(ours, plan.throughput_jobs),
            "stock": lambda: throughput.measure(stock, plan.stock_throughput_jobs),
        },
        "peers": {"ours": lambda: start_latency.measure(ours, plan.start_samples, rng)},
    }
    for name, peer in peers.items():
        figures["tput"][name] = functools.partial(peer.ask, "tput", plan.throughput_jobs)
        figures["peers"][name] = functools.partial(peer.ask, "start", plan.start_samples)
    for figure, measure in figures.items():
        names = list(measure)
        for name in names[turn % len(names) :] + names[: turn % len(names)]:
            if name in PEERS and name not in peers:
                continue  # it stopped earlier in this round
            try:
                await results.record(f"{figure}.{name}", measure[name]())
            except PeerGone as e:
                del peers[name]
                results.notes.append(f"{e}; its figures are from the rounds before")
                print(results.notes[-1], file=sys.stderr)
            except PeerFailed as e:
                results.notes.append(f"{e} (round {turn + 1}; that figure is left out of its median)")
                print(results.notes[-1], file=sys.stderr)


def fmt(value: float | None, row: Row) -> str:
    if value is None:
        return "–"
    text = f"{value:,.{row.digits}f}"
    return f"{text} {row.unit}".strip()


def table(plan: Plan, results: Results) -> list[str]:
    lines = [
        f"| figure | target | measured (median of {plan.rounds}) | stock arq (same run) | ratio (× better) | met? | each round |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows(plan):
        ours, stock = results.get(row.key), results.get(row.stock_key)
        ratio = "–"
        if ours and stock:
            factor = ours / stock if row.higher_is_better else stock / ours
            ratio = f"×{factor:,.1f}"
        if row.met is None:
            met = "–"
        else:
            met = "not measured" if ours is None else ("yes" if row.met(ours) else "no")
        each = results.values.get(row.key, [])
        rounds = " / ".join(f"{v:,.{row.digits}f}" for v in each) if len(each) > 1 else ""
        lines.append(
            f"| {row.figure} | {row.target} | {fmt(ours, row)} | {fmt(stock, row)} | {ratio} | {met} | {rounds} |"
        )
    return lines


PEER_ROWS = [  # figure, key ({} = the queue), stock arq's key, unit, digits, goal × taskiq's (or None)
    ("no-op jobs/s (32 concurrent enqueue calls)", "tput.{}.jobs_per_s", None, "jobs/s", 0, 1.5),
    ("enqueue → job start, p50", "peers.{}.start_p50", "start.stock.start_p50", "ms", 2, 1.0),
    ("enqueue → job start, p99", "peers.{}.start_p99", "start.stock.start_p99", "ms", 2, None),
    ("enqueue call, p50", "peers.{}.enqueue_p50", "start.stock.enqueue_p50", "ms", 2, None),
    ("worker CPU per job", "tput.{}.worker_cpu_us_per_job", None, "µs", 0, None),
]


def peer_table(plan: Plan, results: Results) -> list[str]:
    """mcp-queue beside stock arq, taskiq and SAQ: the same no-op job on 2 workers × 50 slots."""
    lines = [
        f"| same no-op job, 2 workers × 50 slots (median of {plan.rounds}) | mcp-queue | stock arq "
        "| taskiq | SAQ | goal | met? | each round, mcp-queue / taskiq |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for figure, key, stock_key, unit, digits, goal in PEER_ROWS:
        row = Row(figure, "", key, unit=unit, digits=digits)
        value = {q: results.get(key.format(q)) for q in ("ours", "stock", *PEERS)}
        if stock_key:
            value["stock"] = results.get(stock_key)
        target, met = "–", "–"
        taskiq = value["taskiq"]
        if goal is not None:
            faster = key.startswith("tput.")
            target = f"{'≥' if faster else '≤'} {f'{goal}× ' if goal != 1 else ''}taskiq's"
            if value["ours"] is not None and taskiq is not None:
                ok = value["ours"] >= goal * taskiq if faster else value["ours"] <= goal * taskiq
                met = "yes" if ok else "no"
            else:
                met = "not measured"
        each = [results.values.get(key.format(q), []) for q in ("ours", "taskiq")]
        rounds = " / ".join(", ".join(f"{v:,.{digits}f}" for v in vs) or "–" for vs in each)
        shown = " | ".join(fmt(value[q], row) for q in ("ours", "stock", *PEERS))
        lines.append(f"| {figure} | {shown} | {target} | {met} | {rounds} |")
    lines.append("stock arq's start and enqueue figures: its 1-worker site above (its poll sets them)")
    return lines


def machine() -> str:
    cpus = len(os.sched_getaffinity(0))
    model = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        "?",
    )
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True
    ).stdout.split()
    version = next((w.removeprefix("v=") for w in redis_version if w.startswith("v=")), "?")
    import arq
    import redis

    return (
        f"nproc {cpus} ({model}), load average {' '.join(open('/proc/loadavg').read().split()[:3])}, "
        f"Python {platform.python_version()}, Redis {version}, arq {arq.VERSION}, redis-py {redis.__version__}"
    )


def at_scale(plan: Plan) -> tuple[list[str], bool]:
    """The scale figures (streams per worker, MCP callers per messenger), each bench in a process of
    its own after the rest (they load the box to its limit): their tables, and whether every answer
    came back whole."""
    bench = Path(__file__).resolve().parent
    lines, whole = [], True
    for script, flag, n in (
        ("streams.py", "--streams", plan.scale_streams),
        ("callers.py", "--callers", plan.scale_callers),
    ):
        print(f"at scale: {script} {flag} {n}", file=sys.stderr)
        done = subprocess.run(
            [sys.executable, str(bench / script), flag, str(n)], capture_output=True, text=True, check=False
        )
        table_lines = [line for line in done.stdout.splitlines() if line.startswith("|")]
        if done.returncode != 0 or not table_lines:
            whole = whole and done.returncode != 1
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            lines += [f"{script} {flag} {n} did not finish (exit {done.returncode}): {tail}", ""]
            continue
        rounds = [line for line in done.stdout.splitlines() if line.startswith("MCP round")]  # CPU a process
        lines += [*table_lines, "", *rounds, *([""] if rounds else [])]
    return lines, whole


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, help="rounds to take the median of (default 3; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run with fewer samples")
    parser.add_argument(
        "--only", choices=["queues"], help="queues: only the no-op table beside stock arq, taskiq and SAQ"
    )
    args = parser.parse_args()
    plan = Plan.from_args(args)
    command = "uv run python bench/run.py" + "".join(f" {a}" for a in sys.argv[1:])
    print(f"$ {command}\n{machine()}", file=sys.stderr)

    def stop(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    results = Results()
    started = time.monotonic()
    busy0, stolen0 = box_cpu_seconds()
    own0 = own_cpu_seconds()
    forget_settings()
    stopped = None
    with tempfile.TemporaryDirectory(prefix="mcpq-bench-") as tmp:
        os.chdir(tmp)  # no `.env` of a developer's applies to the bench's settings
        lab = Lab(Path(tmp))
        try:
            asyncio.run(bench(plan, lab, results))
        except Exception as e:
            traceback.print_exc()
            where = traceback.extract_tb(e.__traceback__)
            ours = [
                f for f in where if "/site-packages/" not in f.filename and "/lib/python" not in f.filename
            ]
            frame = (ours or where)[-1]
            stopped = (
                f"{type(e).__name__}: {e} (at {Path(frame.filename).name}:{frame.lineno} in {frame.name})"
            )
        finally:
            lab.close()
    wall = time.monotonic() - started
    busy1, stolen1 = box_cpu_seconds()
    cores = len(os.sched_getaffinity(0))
    others = max(0.0, (busy1 - busy0) - (own_cpu_seconds() - own0))
    noise = (
        f"other processes used {100 * others / (wall * cores):.0f} % of the box's {cores} cores during the run "
        f"(hypervisor steal {100 * (stolen1 - stolen0) / (wall * cores):.1f} %)"
    )

    print()
    print(f"$ {command}")
    print(machine().replace(", load average", f", wall {wall:.0f} s, load average at end"))
    print(noise)
    print()
    if not plan.only_queues:
        print("\n".join(table(plan, results)))
        print()
    print("\n".join(peer_table(plan, results)))
    for note in results.notes:
        print(note)
    if not plan.only_queues and not stopped:
        scale, whole = at_scale(plan)
        print()
        print("\n".join(scale))
        if not whole:
            results.failures.append("at scale: an answer came back incomplete or reordered (table above)")
    if stopped:
        print(f"\nTHE BENCH STOPPED EARLY (the table holds what was measured before): {stopped}")
        return 2
    if results.failures:
        print("\nCORRECTNESS FAILURES:")
        for failure in results.failures:
            print(f"- {failure}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
