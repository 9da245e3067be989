"""Figure 4: time to first token through the system minus calling the same server directly.

Direct: one AsyncOpenAI client (made once), streaming, time to the first content chunk. System:
t0 just before the messenger's enqueue → the first token event at the messenger, with a worker
whose provider is that same OpenAI-compatible server. Samples alternate between the two.
"""

from __future__ import annotations

import asyncio
import random
import time

from openai import AsyncOpenAI

from bench.lab import Site
from bench.stats import median
from bench.stock_arq_worker import STOCK_POLL_DELAY
from messenger.collector import Transcript, follow_events
from messenger.queue import new_job_id
from shared.models import ChatRequest

MESSAGE = "Say hello."
MODEL = "gpt-4o-mini"  # the worker's default for AI_PROVIDER=openai; the test server takes any name
TEMPERATURE, MAX_TOKENS = 0.7, 1024  # the worker's defaults, sent on both paths


class NoAnswer(Exception):
    """A job did not complete: a correctness failure."""


async def direct(client: AsyncOpenAI) -> float:
    t0 = time.perf_counter()
    first = None
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": MESSAGE}],
        temperature=TEMPERATURE,
        max_tokens=MAX_TOKENS,
        stream=True,
        stream_options={"include_usage": True},
    )
    async with stream:
        async for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - t0
    if first is None:
        raise NoAnswer("the direct call streamed no content")
    return first


async def through_system(site: Site) -> float:
    runtime = site.runtime
    job_id = new_job_id()
    request = ChatRequest(message=MESSAGE)
    first = None
    async with runtime.hub.follow(job_id) as live:
        t0 = time.time()
        if site.stock:
            await runtime.redis.enqueue_job("chat", request.model_dump(exclude_none=True), _job_id=job_id)
        else:
            await runtime.queue.submit(request, caller="bench", job_id=job_id)
        transcript = Transcript(job_id)
        async with asyncio.timeout(10):
            async for event in follow_events(runtime.redis, transcript, live):
                if first is None and event is not None and event.type == "token":
                    first = time.time() - t0
    if transcript.status != "completed" or first is None:
        raise NoAnswer(f"{site.name}: job {job_id} ended {transcript.status}: {transcript.error}")
    return first


async def measure(
    client: AsyncOpenAI, ours: Site, stock: Site, samples: int, stock_samples: int, rng: random.Random
) -> dict[str, float]:
    direct_s, ours_s, stock_s = [], [], []
    for i in range(samples):
        for path in ("direct", "ours") if i % 2 == 0 else ("ours", "direct"):
            if path == "direct":
                direct_s.append(await direct(client))
            else:
                ours_s.append(await through_system(ours))
            await asyncio.sleep(rng.uniform(0.005, 0.020))
        if i < stock_samples:
            await asyncio.sleep(rng.uniform(0, STOCK_POLL_DELAY))  # a random phase of arq's poll
            stock_s.append(await through_system(stock))
    d, o = 1000 * median(direct_s), 1000 * median(ours_s)
    return {
        "direct_p50": d,
        "system_p50": o,
        "overhead_p50": o - d,
        "stock_overhead_p50": 1000 * median(stock_s) - d,
    }
