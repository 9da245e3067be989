"""N concurrent MCP callers on one messenger, beside the same jobs followed without MCP.

    uv run python bench/callers.py [--callers 100,300,1000] [--workers 2]
    uv run python bench/callers.py --per-call 50,30    # 50 callers × 30 short calls: CPU per call

One redis-server, worker processes with the mock provider pacing 20 tokens/s, one real
`messenger serve --transport http` process. For each N: N bare streamable-HTTP callers
(bench/mcp_wire.py) each call send_message_to_ai with a progressToken, spread over one second;
then N jobs followed in this process through a raw JobClient (the no-MCP path: hub, collector,
no HTTP, no SDK). Per path: first token after the call (p50/p99), token delay (the worker's event
`ts` → the caller has it, p99), and CPU per relayed token (the messenger process's, resp. this
process's). Under the table, the MCP round's CPU seconds of each process of the box (the
messenger, this process's callers, redis-server, each worker) and of the whole box: the load
generator shares the cores it loads. Every answer must be whole and in order: the table counts
calls that were not, and the exit status is 1 if there was one.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import bisect  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

from bench.lab import Lab, Site, box_cpu_seconds, cpu_seconds, runqueue_seconds, scratch_lab  # noqa: E402
from bench.mcp_wire import Caller, Reply  # noqa: E402
from bench.stats import ms, percentile  # noqa: E402
from shared import keys  # noqa: E402

TOKEN_DELAY_MS = 50  # 20 tokens/s per stream
FILLER = "please answer this bench question with a sentence that is long enough to stream for a while"
STAGGER = 1.0


@dataclass
class Tally:
    """What one path measured over its N calls."""

    first: list[float] = field(default_factory=list)  # seconds from the call to its first token
    delays: list[float] = field(default_factory=list)  # event ts → the caller has it
    tokens: int = 0
    wrong: list[str] = field(default_factory=list)
    cpu: float = 0.0
    wall: float = 0.0
    starved: float = 0.0  # seconds the follower's process was runnable but had no CPU
    setup_cpu: float = 0.0  # the messenger's CPU opening the N sessions (initialize), before any call
    box: dict[str, float] = field(default_factory=dict)  # CPU seconds of each process of the box, the round

    def figures(self) -> dict[str, float]:
        first, delays = ms(self.first), ms(self.delays)
        return {
            "first_p50": percentile(first, 50),
            "first_p99": percentile(first, 99),
            "delay_p50": percentile(delays, 50),
            "delay_p99": percentile(delays, 99),
            "cpu_us_per_token": 1e6 * self.cpu / max(self.tokens, 1),
            "cpu_pct": 100 * self.cpu / max(self.wall, 1e-9),
            "starved_pct": 100 * self.starved / max(self.wall, 1e-9),
            "setup_ms": 1e3 * self.setup_cpu,
            "wall_s": self.wall,
            **{f"cpu {name}": seconds for name, seconds in self.box.items()},
        }


REPEAT = [1]  # --repeat: the filler this many times (the mock echoes it: ~30 tokens more each)


def message(i: int) -> str:
    return f"caller {i} " + " ".join([FILLER] * REPEAT[0])


def expected(i: int) -> str:
    from worker.providers.mock import mock_reply

    return "".join(mock_reply([{"role": "user", "content": message(i)}]))


async def stream_events(redis, job_id: str) -> list[tuple[float, int]]:
    """(ts, end offset in the answer) of each token event of the job's last attempt."""
    from shared.events import parse_event

    ends: list[tuple[float, int]] = []
    offset = 0
    for _, fields in await redis.xrange(keys.stream(job_id)):
        event = parse_event(fields[b"event"])
        if event.type == "start":
            ends, offset = [], 0
        elif event.type == "token":
            offset += len(event.text)
            ends.append((event.ts, offset))
    return ends


def delays_of(ends: list[tuple[float, int]], seen: list[tuple[float, int]]) -> list[float]:
    """For each event (ts, end offset): when the first notification covering its end arrived − ts."""
    offsets = [offset for _, offset in seen]
    out = []
    for ts, end in ends:
        k = bisect.bisect_left(offsets, end)
        if k < len(seen):
            out.append(seen[k][0] - ts)
    return out


async def mcp_path(
    port: int, redis, n: int, rng: random.Random, opened=lambda: None, finished=lambda: None
) -> Tally:
    """N callers spread over STAGGER; each answer is read after the last one has ended: during the
    round a call's task only sleeps until its reply is whole, each piece stamped as its bytes came
    (bench/mcp_wire.py), so the bench's process takes as little of the box as it can."""
    callers = [Caller("127.0.0.1", port) for _ in range(n)]
    sem = asyncio.Semaphore(100)

    async def open_one(c: Caller) -> None:
        async with sem:
            await c.open()

    await asyncio.gather(*(open_one(c) for c in callers))
    opened()
    t_start = time.time() + 0.2

    async def one(i: int, caller: Caller) -> tuple[float, Reply]:
        await asyncio.sleep(max(0.0, t_start + rng.uniform(0, STAGGER) - time.time()))
        called = time.time()
        return called, await caller.record("send_message_to_ai", {"message": message(i)})

    try:
        replies = await asyncio.gather(*(one(i, c) for i, c in enumerate(callers)))
    finally:
        await asyncio.gather(*(c.close() for c in callers))
    finished()
    tally = Tally()
    for i, (called, reply) in enumerate(replies):
        job_id, seen = read_answer(i, called, reply, tally)
        if job_id:
            tally.delays += delays_of(await stream_events(redis, job_id), seen)
    return tally


def read_answer(
    i: int, called: float, reply: Reply, tally: Tally
) -> tuple[str | None, list[tuple[float, int]]]:
    """Caller i's answer into the tally: its first token, whether it is whole; (job id, (arrival,
    answer length so far) of each notification), the job id None if the answer is wrong."""
    seen: list[tuple[float, int]] = []
    text, result = "", None
    for arrived, msg in reply.messages():
        if msg.get("method") == "notifications/progress":
            chunk = msg["params"].get("message") or ""
            if chunk.startswith("["):
                continue  # a keep-alive or notice, not answer text
            if not text:
                tally.first.append(arrived - called)
            text += chunk
            seen.append((arrived, len(text)))
        elif "result" in msg or "error" in msg:
            result = msg
            break
    structured = ((result or {}).get("result") or {}).get("structuredContent") or {}
    job_id = structured.get("jobId") or structured.get("job_id")
    want = expected(i)
    if text != want or not job_id:
        tally.wrong.append(f"caller {i}: {len(text)} of {len(want)} chars; {str(result)[:200]}")
        return None, seen
    tally.tokens += len(want.split(" "))
    return job_id, seen


async def raw_path(runtime, n: int, rng: random.Random) -> Tally:
    """The same jobs followed by JobClient.run in this process: no HTTP, no MCP SDK."""
    from shared.models import ChatRequest

    tally = Tally()
    t_start = time.time() + 0.2

    async def one(i: int) -> None:
        await asyncio.sleep(max(0.0, t_start + rng.uniform(0, STAGGER) - time.time()))
        called = time.time()
        got_first = False

        async def on_event(event, _transcript) -> None:
            nonlocal got_first
            if event is None or event.type != "token":
                return
            now = time.time()
            if not got_first:
                got_first = True
                tally.first.append(now - called)
            tally.delays.append(now - event.ts)

        result = await runtime.jobs.run(ChatRequest(message=message(i)), on_event=on_event, timeout=120)
        if result.ai_response != expected(i):
            tally.wrong.append(f"job {result.job_id}: {result.status} {result.error or ''}")
            return
        tally.tokens += len(expected(i).split(" "))

    await asyncio.gather(*(one(i) for i in range(n)))
    return tally


def box_pids(messenger, site: Site) -> dict[str, int]:
    """Every process of the box a round runs on: whose CPU the round took."""
    workers = {f"worker {i + 1}": pid for i, pid in enumerate(site.pids)}
    return {
        "messenger": messenger.pid,
        "bench callers": os.getpid(),
        "redis-server": site.server.proc.pid,
        **workers,
    }


def box_cpu(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each process, and of the whole box (every process, ours or not)."""
    return {**{name: cpu_seconds(pid) for name, pid in pids.items()}, "box": box_cpu_seconds()[0]}


class Round:
    """The MCP round's marks: from the last session open (the calls start) to the last call's end."""

    def __init__(self, messenger: int, pids: dict[str, int], profile_to: str | None):
        self.messenger, self.pids, self.profile_to = messenger, pids, profile_to
        self.cpu0 = cpu_seconds(messenger)

    def opened(self) -> None:
        self.setup = cpu_seconds(self.messenger) - self.cpu0
        self.wall, self.wait, self.box = (
            time.monotonic(),
            runqueue_seconds(self.messenger),
            box_cpu(self.pids),
        )
        if self.profile_to:
            profile(self.messenger, self.profile_to, 8)

    def finished(self) -> None:
        self.wall, self.wait = time.monotonic() - self.wall, runqueue_seconds(self.messenger) - self.wait
        self.box = {name: seconds - self.box[name] for name, seconds in box_cpu(self.pids).items()}

    def fill(self, tally: Tally, n: int) -> None:
        tally.cpu, tally.wall, tally.starved = self.box["messenger"], self.wall, self.wait
        tally.setup_cpu, tally.box = self.setup / n, self.box


def profile(pid: int, path: str, seconds: float) -> None:
    """py-spy (installed by hand, not a dependency) samples the messenger while the callers run."""
    import subprocess

    subprocess.Popen(
        ["py-spy", "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250",
         "--format", "raw", "--nonblocking", "-o", path],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


async def measure(
    lab: Lab, site: Site, counts: list[int], profile_to: str | None = None
) -> list[tuple[int, dict, dict, str]]:
    from messenger.runtime import open_runtime
    from shared.settings import load_settings

    messenger, port = lab.messenger(site)
    await asyncio.to_thread(lab.wait_healthy, messenger, port)
    rng = random.Random(20)
    rows = []
    async with open_runtime(load_settings(redis_url=site.url)) as runtime:
        site.runtime = runtime
        await lab.wait_ready(site)
        await raw_path(runtime, 5, rng)  # warm both paths up
        await mcp_path(port, runtime.redis, 5, rng)
        for n in counts:
            marks = Round(messenger.pid, box_pids(messenger, site), profile_to if n == max(counts) else None)
            mcp = await mcp_path(port, runtime.redis, n, rng, marks.opened, marks.finished)
            marks.fill(mcp, n)
            cpu0, wall0, wait0 = time.process_time(), time.monotonic(), runqueue_seconds(os.getpid())
            raw = await raw_path(runtime, n, rng)
            raw.cpu, raw.wall = time.process_time() - cpu0, time.monotonic() - wall0
            raw.starved = runqueue_seconds(os.getpid()) - wait0
            wrong = [f"{path}: {len(t.wrong)} of {n} wrong, e.g. {t.wrong[0]}" for path, t in
                     (("MCP", mcp), ("raw", raw)) if t.wrong]  # fmt: skip
            rows.append((n, mcp.figures(), raw.figures(), "; ".join(wrong)))
            print(f"{n} callers done", *wrong, file=sys.stderr)
    return rows


async def per_call(lab: Lab, site: Site, callers: int, each: int, profile_to: str | None = None) -> str:
    """`callers` bare callers make `each` calls one after another, short answers at once (no pacing):
    the messenger's CPU per call, the whole of it (way in, enqueue, follow, notifications, result)."""
    messenger, port = lab.messenger(site)
    await asyncio.to_thread(lab.wait_healthy, messenger, port)
    pool = [Caller("127.0.0.1", port) for _ in range(callers)]
    await asyncio.gather(*(c.open() for c in pool))

    async def calls(caller: Caller, count: int) -> None:
        for _ in range(count):
            async for _, msg in caller.call("send_message_to_ai", {"message": "hi there"}):  # to its end
                if "error" in msg or (msg.get("result") or {}).get("isError"):
                    raise RuntimeError(f"a call failed: {str(msg)[:200]}")

    try:
        await asyncio.gather(*(calls(c, 2) for c in pool))  # warm up
        cpu0, wall0 = cpu_seconds(messenger.pid), time.monotonic()
        if profile_to:
            profile(messenger.pid, profile_to, 8)
        await asyncio.gather(*(calls(c, each) for c in pool))
        cpu, wall = cpu_seconds(messenger.pid) - cpu0, time.monotonic() - wall0
    finally:
        await asyncio.gather(*(c.close() for c in pool))
    n = callers * each
    return f"{callers} callers × {each} calls: messenger CPU per call {1e3 * cpu / n:.2f} ms, {n / wall:.0f} calls/s"


def table(rows: list[tuple[int, dict, dict, str]]) -> list[str]:
    lines = [
        "| callers | first token p50 / p99 (MCP) | goal p99 ≤ 1 s | first token p99 (raw) "
        "| token delay p99 (MCP) | goal ≤ 150 ms | token delay p99 (raw) "
        "| CPU/token MCP | CPU/token raw | ratio (goal ≤ 2×) | messenger CPU | messenger waited for a CPU "
        "| calls not answered whole | session open, CPU each |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, mcp, raw, wrong in rows:
        ratio = mcp["cpu_us_per_token"] / max(raw["cpu_us_per_token"], 1e-9)
        lines.append(
            f"| {n} | {mcp['first_p50']:.0f} / {mcp['first_p99']:.0f} ms "
            f"| {'yes' if mcp['first_p99'] <= 1000 else 'no'} | {raw['first_p99']:.0f} ms "
            f"| {mcp['delay_p99']:.0f} ms | {'yes' if mcp['delay_p99'] <= 150 else 'no'} "
            f"| {raw['delay_p99']:.0f} ms | {mcp['cpu_us_per_token']:.0f} µs "
            f"| {raw['cpu_us_per_token']:.0f} µs | ×{ratio:.1f} | {mcp['cpu_pct']:.0f} % | {mcp['starved_pct']:.0f} % | {wrong or 0} "
            f"| {mcp['setup_ms']:.1f} ms |"
        )
    for n, mcp, _raw, _wrong in rows:
        ours = {name[4:]: s for name, s in mcp.items() if name.startswith("cpu ") and name != "cpu box"}
        each = ", ".join(f"{name} {s:.2f}" for name, s in ours.items())
        lines.append(f"\nMCP round, {n} callers, {mcp['wall_s']:.1f} s: CPU seconds {each}; "
                     f"the box busy {mcp['cpu box']:.1f} of {mcp['wall_s'] * (os.cpu_count() or 1):.1f}, "
                     f"{max(mcp['cpu box'] - sum(ours.values()), 0):.1f} of it other processes'")  # fmt: skip
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--callers", default="100,300,1000", help="comma-separated caller counts")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (slots split evenly)")
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="py-spy the messenger's largest round (or the per-call calls) to FILE",
    )
    parser.add_argument("--repeat", type=int, default=1, help="longer answers: 35 tokens, +30 per repeat")
    parser.add_argument("--per-call", metavar="N,K", help="instead: N callers × K short calls, CPU per call")
    args = parser.parse_args()
    REPEAT[0] = args.repeat
    if args.per_call:
        callers, each = (int(x) for x in args.per_call.split(","))
        with scratch_lab("mcpq-calls-") as lab:
            site = lab.site("calls")
            lab.add_workers(site, args.workers, WORKER_CONCURRENCY=callers + 10)
            line = asyncio.run(per_call(lab, site, callers, each, args.profile))
        print(f"$ uv run python bench/callers.py {' '.join(sys.argv[1:])}")
        print(f"load average at end {' '.join(open('/proc/loadavg').read().split()[:3])}")
        print(line)
        return 0
    counts = [int(c) for c in args.callers.split(",")]
    with scratch_lab("mcpq-callers-") as lab:
        site = lab.site("callers")
        slots = max(counts) // args.workers + 10
        lab.add_workers(site, args.workers, WORKER_CONCURRENCY=slots, MOCK_TOKEN_DELAY_MS=TOKEN_DELAY_MS)
        rows = asyncio.run(measure(lab, site, counts, args.profile))
    print(f"$ uv run python bench/callers.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"load average at end {' '.join(open('/proc/loadavg').read().split()[:3])}")
    print("\n".join(table(rows)))
    return 1 if any(wrong for *_, wrong in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
