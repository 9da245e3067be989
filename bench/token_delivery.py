"""Figure 2: worker publishes a token → the messenger has it.

This process is the messenger: it follows every job with the real EventHub (one pub/sub
connection) and collector. Two publisher processes (bench/publisher_proc.py) drive the streams
through the real EventWriter, and get the job ids only after every subscription is confirmed.

Two latencies per token: against the event's `ts` (stamped when the EventWriter builds the batch
that carries it) and against the moment the job handed the token to its publisher (which adds the
wait for the write in flight, i.e. the cost of coalescing). `floor()` runs the same pacing with
bare PUBLISHes and a bare subscriber: what Redis and this machine allow at that moment.
"""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import time
from collections.abc import Awaitable, Callable

from bench.lab import Lab, Site, child_env
from bench.stats import ms, percentile
from messenger.collector import Transcript, follow_events
from messenger.queue import new_job_id
from shared import keys

PUBLISHERS = 2


class Lost(Exception):
    """A token was lost, duplicated or reordered: a correctness failure."""


class GcPauses:
    """Collects this process's full (generation 2) garbage-collection pauses while active."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._started = 0.0

    def _callback(self, phase: str, info: dict) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append(time.perf_counter() - self._started)

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *_exc) -> None:
        gc.callbacks.remove(self._callback)


async def _drive(
    lab: Lab,
    site: Site,
    job_ids: list[str],
    follow: Callable[[asyncio.Event], Awaitable[list]],
    *,
    tokens: int,
    interval: float,
    stagger: float,
    seed: int,
    raw: bool,
) -> tuple[list, list[dict], float, float]:
    """Start the publishers, subscribe (`follow`), hand them the job ids, wait for the end.

    Returns what `follow` returned, the publishers' reports, and this process's CPU and wall time.
    """
    procs = [
        lab.spawn(
            "publisher",
            ["-m", "bench.publisher_proc", site.url],
            child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for _ in range(PUBLISHERS)
    ]
    try:
        subscribed = asyncio.Event()
        following = asyncio.create_task(follow(subscribed))
        async with asyncio.timeout(30):
            await subscribed.wait()
        t_start = time.time() + 0.3
        cpu0, wall0 = time.process_time(), time.monotonic()
        share = (len(job_ids) + PUBLISHERS - 1) // PUBLISHERS
        specs = [
            {
                "job_ids": job_ids[i * share : (i + 1) * share],
                "t_start": t_start,
                "tokens": tokens,
                "interval": interval,
                "stagger": stagger,
                "seed": seed * 10 + i,
                "raw": raw,
            }
            for i in range(PUBLISHERS)
        ]
        outputs = await asyncio.gather(
            *(
                asyncio.to_thread(proc.communicate, json.dumps(spec).encode(), 60)
                for proc, spec in zip(procs, specs, strict=True)
            )
        )
        async with asyncio.timeout(30):
            followed = await following
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    finally:
        lab.stop(procs)
    return followed, [json.loads(out) for out, _ in outputs], cpu, wall


async def measure(
    lab: Lab,
    site: Site,
    *,
    streams: int,
    tokens: int,
    interval: float = 0.02,
    stagger: float = 1.0,
    seed: int,
) -> dict[str, float]:
    runtime = site.runtime
    job_ids = [new_job_id() for _ in range(streams)]
    since_ts: list[float] = []
    arrivals: dict[str, list[tuple[float, str]]] = {j: [] for j in job_ids}
    events = 0

    async def follow_all(subscribed: asyncio.Event) -> list[Transcript]:
        confirmed = 0

        async def follow(job_id: str) -> Transcript:
            nonlocal confirmed, events
            async with runtime.hub.follow(job_id) as live:
                confirmed += 1
                if confirmed == streams:
                    subscribed.set()
                transcript = Transcript(job_id)
                async for event in follow_events(runtime.redis, transcript, live):
                    now = time.time()
                    if event is not None and event.type == "token":
                        since_ts.append(now - event.ts)
                        arrivals[job_id].append((now, event.text))
                        events += 1
            return transcript

        return await asyncio.gather(*(follow(j) for j in job_ids))

    with GcPauses() as gc_pauses:
        transcripts, reports, cpu, wall = await _drive(
            lab,
            site,
            job_ids,
            follow_all,
            tokens=tokens,
            interval=interval,
            stagger=stagger,
            seed=seed,
            raw=False,
        )
    handed = {j: t for r in reports for j, t in r["handed"].items()}

    expected = "".join(f"{k} " for k in range(tokens))
    bad = [t for t in transcripts if t.status != "completed" or t.text != expected]
    if bad:
        t = bad[0]
        got, want = t.text.split(), expected.split()
        first = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), len(got))
        raise Lost(
            f"{len(bad)} of {streams} streams wrong; e.g. {t.job_id}: {t.status}, "
            f"{len(got)} of {tokens} tokens, first difference at token {first}"
        )
    since_handed = [
        now - handed[job_id][int(k)]
        for job_id, seen in arrivals.items()
        for now, text in seen
        for k in text.split()
    ]
    since_ts_ms, since_handed_ms = ms(since_ts), ms(since_handed)
    return {
        "token_p50": percentile(since_ts_ms, 50),
        "token_p99": percentile(since_ts_ms, 99),
        "handed_p50": percentile(since_handed_ms, 50),
        "handed_p99": percentile(since_handed_ms, 99),
        "tokens_per_event": streams * tokens / events,
        "lost": 0,
        "publisher_late_p99": max(r["late_p99_ms"] for r in reports),
        "messenger_cpu": 100 * cpu / wall,
        "gc_pause_max": 1000 * max(gc_pauses.pauses, default=0.0),
    }


async def floor(
    lab: Lab,
    site: Site,
    *,
    streams: int,
    tokens: int,
    interval: float = 0.02,
    stagger: float = 1.0,
    seed: int,
) -> dict[str, float]:
    """The same pacing with bare PUBLISHes and one bare subscriber: no stream, no models, no hub."""
    job_ids = [new_job_id() for _ in range(streams)]
    latencies: list[float] = []

    async def follow_all(subscribed: asyncio.Event) -> list:
        pubsub = site.runtime.redis.pubsub()
        try:
            await pubsub.subscribe(*(keys.events(j) for j in job_ids))
            confirmed = 0
            while confirmed < streams:
                message = await pubsub.get_message(timeout=10)
                confirmed += message is not None and message["type"] == "subscribe"
            subscribed.set()
            done = 0
            async with asyncio.timeout(60):  # one timer for the run, not one per message
                while done < streams:
                    message = await pubsub.get_message(timeout=None)
                    now = time.time()
                    if message is None or message["type"] != "message":
                        continue
                    data = json.loads(message["data"])
                    if data["type"] == "token":
                        latencies.append(now - data["ts"])
                    else:
                        done += 1
        finally:
            await pubsub.aclose()
        return []

    await _drive(
        lab, site, job_ids, follow_all, tokens=tokens, interval=interval, stagger=stagger, seed=seed, raw=True
    )
    if len(latencies) != streams * tokens:
        raise Lost(f"floor: {len(latencies)} of {streams * tokens} bare PUBLISHes arrived")
    latencies_ms = ms(latencies)
    return {"floor_p50": percentile(latencies_ms, 50), "floor_p99": percentile(latencies_ms, 99)}
