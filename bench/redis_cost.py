"""What each streamed token costs Redis: commands, bytes, and memory once the job has ended.

    uv run python bench/redis_cost.py [--streams 200] [--tokens 100]

One redis-server; this process follows every job with the real EventHub and collector (so pub/sub
delivery is part of the cost) and drives the streams through the real EventWriter, paced at
50 tokens/s each. It runs twice on the same server, the write of today (one script call per batch:
shared.events.write_wired) and the write before it (a MULTI/EXEC of XADD + PUBLISH per event,
EXPIRE per ended job) as the peer, with CONFIG RESETSTAT before each. Counted by Redis itself, no
MONITOR: `INFO commandstats` (every command run, inside scripts too), `INFO stats`
total_commands_processed (commands clients sent) and net input/output bytes; MEMORY USAGE and TTL
of each finished job's stream (the result arq stores is the same in both and not counted). Every answer must arrive whole and in order.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402

from bench.lab import scratch_lab  # noqa: E402
from shared import keys  # noqa: E402
from shared.events import TokenUsage, event_head  # noqa: E402

INTERVAL = 0.02  # 50 tokens/s per stream


class Lost(Exception):
    """A token was lost or reordered: a correctness failure."""


async def old_write(redis, jobs: dict[str, list[tuple[str, bytes]]]) -> dict[str, Exception]:
    """The write before the script: MULTI, XADD + PUBLISH per event, EXPIRE per ended job, EXEC.
    `redis` is the client itself, not the EventWriter's wrapper of it; each event as it sent it,
    whole (the writer hands over what follows event_head)."""
    async with redis.pipeline(transaction=True) as pipe:
        for job_id, events in jobs.items():
            head = event_head(job_id)
            for _, body in events:
                data = head + body
                pipe.xadd(keys.stream(job_id), {"event": data}, maxlen=keys.STREAM_MAXLEN, approximate=True)
                pipe.publish(keys.events(job_id), data)
            if any(kind != "token" for kind, _ in events):
                pipe.expire(keys.stream(job_id), keys.STREAM_TTL_SECONDS)
        await pipe.execute()
    return {}


async def one_run(redis, hub, streams: int, tokens: int, old: bool) -> dict[str, float]:
    import worker.publisher as publisher_module
    from messenger.collector import Transcript, follow_events
    from messenger.queue import new_job_id
    from worker.publisher import EventWriter

    job_ids = [new_job_id() for _ in range(streams)]
    rng = random.Random(streams)
    writer = EventWriter(redis)
    real = publisher_module.write_wired
    if old:
        publisher_module.write_wired = lambda _client, jobs, *_: old_write(redis, jobs)  # type: ignore[assignment]
    subscribed = asyncio.Event()
    confirmed = 0

    async def follow(job_id: str) -> str:
        nonlocal confirmed
        async with hub.follow(job_id) as live:
            confirmed += 1
            if confirmed == streams:
                subscribed.set()
            transcript = Transcript(job_id)
            async for _ in follow_events(redis, transcript, live):
                pass
            return transcript.text

    async def stream(job_id: str) -> None:
        publisher = writer.publisher(job_id, attempt=1)
        await asyncio.sleep(rng.uniform(0, 1))
        await publisher.start("bench", "mock-1")
        first = time.monotonic()
        for k in range(tokens):
            await asyncio.sleep(max(0.0, first + (k + 1) * INTERVAL - time.monotonic()))
            publisher.token(f"{k} ")
        usage = TokenUsage(prompt_tokens=1, completion_tokens=tokens, total_tokens=tokens + 1)
        await publisher.done(usage=usage, cost=None, finish_reason="stop", model="mock-1")

    try:
        followers = [asyncio.create_task(follow(j)) for j in job_ids]
        await asyncio.wait_for(subscribed.wait(), 30)
        await redis.config_resetstat()
        await asyncio.gather(*(stream(j) for j in job_ids))
        texts = await asyncio.wait_for(asyncio.gather(*followers), 30)
        stats, commands = await redis.info("stats"), await redis.info("commandstats")
        memory = [await redis.memory_usage(keys.stream(j)) or 0 for j in job_ids]
        kept = max([await redis.ttl(keys.stream(j)) for j in job_ids])
    finally:
        publisher_module.write_wired = real  # type: ignore[assignment]
    want = "".join(f"{k} " for k in range(tokens))
    if any(text != want for text in texts):
        raise Lost(f"{sum(text != want for text in texts)} of {streams} answers incomplete or reordered")
    n = streams * tokens
    calls = {name.removeprefix("cmdstat_"): v["calls"] for name, v in commands.items()}
    ran = sum(calls.values()) - calls.get("config|resetstat", 0) - calls.get("info", 0)
    scripted = not old  # the new write runs XADD, PUBLISH, EXPIRE inside its script: not sent
    inner = sum(calls.get(c, 0) for c in ("xadd", "publish", "expire", "xrevrange")) if scripted else 0
    return {
        "sent_per_token": (ran - inner) / n,
        "ran_per_token": ran / n,
        "in_bytes_per_token": stats["total_net_input_bytes"] / n,
        "out_bytes_per_token": stats["total_net_output_bytes"] / n,
        "stream_bytes_per_job": sum(memory) / streams,
        "stream_kept_s": kept,
        "kb_hours_per_job": sum(memory) / streams * kept / 3600 / 1000,
        "tokens_per_event": n / max(calls.get("xadd", 0) - 2 * streams, 1),  # - each start and done
    }


async def measure(url: str, streams: int, tokens: int) -> tuple[dict, dict]:
    from messenger.hub import EventHub
    from shared.connection import connect

    redis = connect(url)
    hub = EventHub(redis)
    await hub.start()
    try:
        old = await one_run(redis, hub, streams, tokens, old=True)
        new = await one_run(redis, hub, streams, tokens, old=False)
    finally:
        await hub.close()
        await redis.aclose()
    return old, new


async def figures(url: str, streams: int, tokens: int) -> dict[str, float]:
    """bench/run.py's figures: today's write, and the previous one as `old_…`."""
    old, new = await measure(url, streams, tokens)
    return {**new, **{f"old_{name}": value for name, value in old.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=100)
    args = parser.parse_args()
    with scratch_lab("mcpq-redis-cost-") as lab:
        site = lab.site("cost")
        old, new = asyncio.run(measure(site.url, args.streams, args.tokens))
    print(f"$ uv run python bench/redis_cost.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"{args.streams} streams × {args.tokens} tokens at 50 tokens/s, every answer whole and in order\n")
    rows = [
        ("commands clients sent per token", "sent_per_token", "≤ 1.2", lambda v: v <= 1.2, 2),
        ("commands Redis ran per token (inside scripts too)", "ran_per_token", "–", None, 2),
        ("bytes into Redis per token", "in_bytes_per_token", "≤ 200", lambda v: v <= 200, 0),
        ("bytes out of Redis per token (pub/sub + replies)", "out_bytes_per_token", "–", None, 0),
        ("tokens per event (those that piled up merge)", "tokens_per_event", "–", None, 2),
        ("a finished job's stream, bytes", "stream_bytes_per_job", "–", None, 0),
        ("… kept after the job ended, s (then: the stored result only)", "stream_kept_s", "soon", None, 0),
        ("… KB·hours of Redis memory per finished job", "kb_hours_per_job", "O(answer)", None, 2),
    ]
    print("| figure | goal | now | before (same run) | met? |")
    print("|---|---|---|---|---|")
    for name, key, goal, met, digits in rows:
        verdict = "–" if met is None else ("yes" if met(new[key]) else "no")
        print(f"| {name} | {goal} | {new[key]:,.{digits}f} | {old[key]:,.{digits}f} | {verdict} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
