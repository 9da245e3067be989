"""Figure 4: time to first (and last) token as an MCP caller sees it, minus a direct stream.

    uv run python bench/ttft.py [--pairs 20] [--rounds 3] [--prefill-ms 30] [--gap-ms 30]
    uv run python bench/ttft.py --base /tmp/base [--pairs 20] [--rounds 3]   # A/B of two checkouts

The provider is an OpenAI-compatible HTTP server in a process of its own (bench/openai_proc.py),
paced like a small model on a CPU: `prefill` before the first token, `gap` between tokens, and one
more gap before the chunk with the finish_reason (a model decodes its end token too). The defaults,
30 ms and 30 ms, are what a ~300M-parameter model (Gemma 3 270M under llama.cpp) does on a 2-core
box for a short prompt: a prefill of 20–40 ms, then 25–40 tokens/s.

Direct: the openai SDK's AsyncOpenAI streams /v1/chat/completions from that server, as the worker
does and as an application that skipped the queue would; the bare floor (the same call over a bare
HTTP/1.1 connection, no SDK) is printed beside it.
System: a bare streamable-HTTP MCP caller (bench/mcp_wire.py: no SDK, so the figure is what
arrives on the wire, not the load generator's own cost) calls send_message_to_ai with a
progressToken on a real `messenger serve --transport http` process, whose worker's provider is
that same server; the first progress notification carrying answer text is its first token, the
one that completes the answer its last. Both clock from just before their request is written.
Pairs alternate which path goes first, with a random pause between. The overhead figures are
p50/p95 of system − direct over the pairs. Alongside (fewer samples): our messenger's collector
without MCP (t0 before the enqueue → the first token event), and stock arq's, minus the direct p50.

With `--base CHECKOUT` (an A/B of a change, e.g. `git worktree add /tmp/base <commit>`): site A runs
the messenger and worker of that checkout, site B this one's, each on its own redis-server, both
streaming from the one provider; every step is a triple (direct, A, B) in a turning order, and each
round prints both overheads over the triple's direct call and the paired difference B − A.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import itertools  # noqa: E402
import random  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

from openai import AsyncOpenAI  # noqa: E402

from bench.lab import Lab, Site, child_env, scratch_lab  # noqa: E402
from bench.mcp_wire import Caller  # noqa: E402
from bench.stats import median, ms, percentile  # noqa: E402
from bench.stock_arq_worker import STOCK_POLL_DELAY  # noqa: E402

MESSAGE = "Say hello."
REPLY = "Hello from the bench server, a short reply."  # 8 tokens: one per word
MODEL = "gpt-4o-mini"  # the worker's default for AI_PROVIDER=openai; the test server takes any name
TEMPERATURE, MAX_TOKENS = 0.7, 1024  # the worker's defaults, sent on both paths
PREFILL_S, TOKEN_GAP_S = 0.030, 0.030


class NoAnswer(Exception):
    """A job did not complete: a correctness failure."""


@dataclass
class Sample:
    first: float  # seconds from the request to the first answer text
    last: float  # … to the text that completes the answer


async def start_provider(lab: Lab, prefill: float = PREFILL_S, gap: float = TOKEN_GAP_S) -> str:
    """The paced OpenAI-compatible server, in a process of its own; returns its base URL."""
    import json

    script = {"reply": REPLY, "first_token_delay": prefill, "token_delay": gap, "finish_delay": gap}
    provider = lab.spawn(
        "openai-server",
        ["-m", "bench.openai_proc", json.dumps(script)],
        child_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    base_url = (await asyncio.to_thread(provider.stdout.readline)).decode().strip()  # type: ignore[union-attr]
    if not base_url.startswith("http"):
        raise RuntimeError(f"the OpenAI test server did not start:\n{lab.log_tail(provider)}")
    return base_url


def direct_caller(base_url: str) -> Caller:
    url = urlsplit(base_url)
    return Caller(url.hostname or "127.0.0.1", url.port or 80)


def _body() -> dict:
    return {
        "model": MODEL, "messages": [{"role": "user", "content": MESSAGE}], "temperature": TEMPERATURE,
        "max_tokens": MAX_TOKENS, "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip


async def direct(client: AsyncOpenAI) -> Sample:
    """One streamed chat completion straight from the server, through the openai SDK as the worker
    calls it (and as an application that skipped the queue would)."""
    t0 = time.time()
    text, arrivals = "", []
    async with await client.chat.completions.create(**_body()) as stream:
        async for chunk in stream:
            if chunk.choices and (piece := chunk.choices[0].delta.content):
                text += piece
                arrivals.append(time.time() - t0)
    if text != REPLY:
        raise NoAnswer(f"the direct call streamed {text!r}")
    return Sample(arrivals[0], arrivals[-1])


async def bare(caller: Caller) -> Sample:
    """The same call over a bare HTTP/1.1 connection: the floor, without the SDK's own cost."""
    t0 = time.time()
    text, arrivals = "", []
    async for arrived, chunk in caller.stream("/v1/chat/completions", _body()):
        for choice in chunk.get("choices") or []:
            if piece := (choice.get("delta") or {}).get("content"):
                text += piece
                arrivals.append(arrived - t0)
    if text != REPLY:
        raise NoAnswer(f"the bare call streamed {text!r}")
    return Sample(arrivals[0], arrivals[-1])


async def over_mcp(caller: Caller) -> Sample:
    """One send_message_to_ai with a progress token (the caller is initialized)."""
    t0 = time.time()
    text, arrivals, result = "", [], None
    async for arrived, message in caller.call("send_message_to_ai", {"message": MESSAGE}):
        if message.get("method") == "notifications/progress":
            if piece := message["params"].get("message"):
                text += piece
                arrivals.append(arrived - t0)
        elif "result" in message or "error" in message:
            result = message  # read on to the body's end: the connection carries the next call
    answer = ((result or {}).get("result") or {}).get("structuredContent") or {}
    if text != REPLY or answer.get("status") != "completed":
        raise NoAnswer(f"the MCP call streamed {text!r} and ended {str(result)[:300]}")
    return Sample(arrivals[0], arrivals[-1])


async def at_collector(site: Site) -> float:
    """t0 before the enqueue → the first token event at the messenger's collector (no MCP)."""
    from messenger.collector import Transcript, follow_events
    from messenger.queue import new_job_id
    from shared.models import ChatRequest

    runtime = site.runtime
    job_id = new_job_id()
    request = ChatRequest(message=MESSAGE)
    first = None
    async with runtime.hub.follow(job_id) as live:  # type: ignore[union-attr]
        t0 = time.time()
        if site.stock:
            await runtime.redis.enqueue_job("chat", request.model_dump(exclude_none=True), _job_id=job_id)  # type: ignore[union-attr]
        else:
            await runtime.queue.submit(request, caller="bench", job_id=job_id)  # type: ignore[union-attr]
        transcript = Transcript(job_id)
        async with asyncio.timeout(10):
            async for event in follow_events(runtime.redis, transcript, live):  # type: ignore[union-attr]
                if first is None and event is not None and event.type == "token":
                    first = time.time() - t0
    if transcript.status != "completed" or first is None:
        raise NoAnswer(f"{site.name}: job {job_id} ended {transcript.status}: {transcript.error}")
    return first


@dataclass
class Paths:
    """Everything one figure calls, connected and warmed up once (`connect`)."""

    client: AsyncOpenAI  # the direct path
    provider: Caller  # the bare floor
    mcp: Caller  # an initialized MCP session with the messenger
    ours: Site
    stock: Site | None = None

    async def close(self) -> None:
        await asyncio.gather(self.client.close(), self.provider.close(), self.mcp.close())


async def connect(base_url: str, port: int, ours: Site, stock: Site | None = None) -> Paths:
    """The three callers of one figure (the messenger's HTTP on `port`), each used once."""
    provider, mcp = direct_caller(base_url), Caller("127.0.0.1", port)
    paths = Paths(AsyncOpenAI(base_url=base_url, api_key="sk-bench"), provider, mcp, ours, stock)
    await provider._connect()
    await mcp.open()
    await direct(paths.client)
    await bare(provider)
    await over_mcp(mcp)
    await at_collector(ours)
    return paths


async def measure(paths: Paths, pairs: int, side: int, rng: random.Random) -> dict[str, float]:
    """`pairs` direct/MCP pairs, alternating which goes first; for the first `side` of them also one
    bare call, one sample at our collector and, with a stock site, one at stock arq's (after a random
    phase of its poll)."""
    direct_s: list[Sample] = []
    mcp_s: list[Sample] = []
    bare_s: list[float] = []
    collector_s: list[float] = []
    stock_s: list[float] = []
    for i in range(pairs):
        for path in ("direct", "mcp") if i % 2 == 0 else ("mcp", "direct"):
            if path == "direct":
                direct_s.append(await direct(paths.client))
            else:
                mcp_s.append(await over_mcp(paths.mcp))
            await asyncio.sleep(rng.uniform(0.005, 0.020))
        if i < side:
            bare_s.append((await bare(paths.provider)).first)
            collector_s.append(await at_collector(paths.ours))
            if paths.stock is not None:
                await asyncio.sleep(rng.uniform(0, STOCK_POLL_DELAY))
                stock_s.append(await at_collector(paths.stock))
    first = ms([m.first - d.first for d, m in zip(direct_s, mcp_s, strict=True)])
    last = ms([m.last - d.last for d, m in zip(direct_s, mcp_s, strict=True)])
    floor = 1000 * median([d.first for d in direct_s])
    figures = {
        "direct_p50": floor,
        "mcp_p50": 1000 * median([m.first for m in mcp_s]),
        "overhead_p50": percentile(first, 50),
        "overhead_p95": percentile(first, 95),
        "last_overhead_p50": percentile(last, 50),
        "last_overhead_p95": percentile(last, 95),
        "bare_p50": 1000 * median(bare_s),
        "collector_overhead_p50": 1000 * median(collector_s) - floor,
    }
    if stock_s:
        figures["stock_overhead_p50"] = 1000 * median(stock_s) - floor
    return figures


async def bench(lab: Lab, args: argparse.Namespace) -> list[dict[str, float]]:
    from messenger.runtime import open_runtime
    from shared.settings import load_settings

    base_url = await start_provider(lab, args.prefill_ms / 1000, args.gap_ms / 1000)
    site = lab.site("ttft")
    lab.add_workers(site, 1, AI_PROVIDER="openai", OPENAI_BASE_URL=base_url, OPENAI_API_KEY="sk-bench")
    messenger, port = lab.messenger(site)
    await asyncio.to_thread(lab.wait_healthy, messenger, port)
    rng = random.Random(4)
    async with open_runtime(load_settings(redis_url=site.url)) as runtime:
        site.runtime = runtime
        await lab.wait_ready(site)
        paths = await connect(base_url, port, site)
        try:
            return [await measure(paths, args.pairs, args.pairs // 2, rng) for _ in range(args.rounds)]
        finally:
            await paths.close()


async def ab_measure(client: AsyncOpenAI, callers: dict[str, Caller], steps: int, rng: random.Random):
    """`steps` triples (direct, A, B) in an order that turns every step; per site its samples' first
    and last token minus the triple's direct one."""
    names = ["direct", *callers]
    orders = list(itertools.permutations(names))
    first: dict[str, list[float]] = {name: [] for name in callers}
    last: dict[str, list[float]] = {name: [] for name in callers}
    for i in range(steps):
        got: dict[str, Sample] = {}
        for name in orders[i % len(orders)]:
            got[name] = await (direct(client) if name == "direct" else over_mcp(callers[name]))
            await asyncio.sleep(rng.uniform(0.005, 0.020))
        for name in callers:
            first[name].append(got[name].first - got["direct"].first)
            last[name].append(got[name].last - got["direct"].last)
    return first, last


async def ab(lab: Lab, args: argparse.Namespace) -> list[dict[str, float]]:
    """Site A: the messenger and worker of the checkout `args.base`; site B: this checkout's."""
    base_url = await start_provider(lab, args.prefill_ms / 1000, args.gap_ms / 1000)
    provider = {"AI_PROVIDER": "openai", "OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "sk-bench"}
    callers: dict[str, Caller] = {}
    for name, root in (("A", args.base), ("B", ROOT)):
        site = lab.site(name)
        env = child_env(REDIS_URL=site.url, **provider)
        env["PYTHONPATH"] = str(root)  # that checkout's packages, this environment's libraries
        site.workers.append(lab.spawn(f"{name}-worker", ["-m", "worker.cli"], env, stdin=subprocess.DEVNULL))
        messenger, port = lab.messenger(site, env)
        await asyncio.to_thread(lab.wait_healthy, messenger, port)
        callers[name] = Caller("127.0.0.1", port)
        await callers[name].open()
    client = AsyncOpenAI(base_url=base_url, api_key="sk-bench")
    rng = random.Random(4)
    try:
        for caller in callers.values():
            await over_mcp(caller)
        await direct(client)
        rounds = []
        for _ in range(args.rounds):
            first, last = await ab_measure(client, callers, args.pairs, rng)
            figures = {}
            for name in callers:
                figures[f"{name} overhead_p50"] = percentile(ms(first[name]), 50)
                figures[f"{name} overhead_p95"] = percentile(ms(first[name]), 95)
                figures[f"{name} last_overhead_p50"] = percentile(ms(last[name]), 50)
            paired = ms([b - a for a, b in zip(first["A"], first["B"], strict=True)])
            figures["B-A first p50"] = percentile(paired, 50)
            figures["B-A first mean"] = sum(paired) / len(paired)
            rounds.append(figures)
            print("  round: " + ", ".join(f"{k} {v:.2f}" for k, v in figures.items()), flush=True)
        return rounds
    finally:
        await asyncio.gather(client.close(), *(c.close() for c in callers.values()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=20, help="direct/MCP pairs a round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (each figure: median over rounds)")
    parser.add_argument("--prefill-ms", type=float, default=1000 * PREFILL_S, help="before the first token")
    parser.add_argument("--gap-ms", type=float, default=1000 * TOKEN_GAP_S, help="between tokens")
    parser.add_argument(
        "--base",
        type=lambda p: Path(p).resolve(),
        help="A/B: the checkout whose messenger and worker are site A",
    )
    args = parser.parse_args()
    with scratch_lab("mcpq-ttft-") as lab:
        rounds = asyncio.run(ab(lab, args) if args.base else bench(lab, args))
    print(f"$ uv run python bench/ttft.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"load average at end {' '.join(open('/proc/loadavg').read().split()[:3])}")
    for name in rounds[0]:
        each = " / ".join(f"{r[name]:.2f}" for r in rounds)
        print(f"{name:24} {median([r[name] for r in rounds]):8.2f} ms   (rounds: {each})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
