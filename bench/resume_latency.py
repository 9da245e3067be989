"""How soon a paused job (human in the loop) resumes after its answer, beside a new job's start.

Two worker processes (TOOL_APPROVAL=destructive) on a fresh redis-server, the OpenAI-compatible test
server asking for one `ledger__charge` call (tests/mcp_ledger_server.py over stdio). Each trial runs a
job until it pauses, answers it (messenger/approvals.respond: the answer, the queue and the wake-up in
one script), and measures from just before the answer to the resumed attempt's `start` event (the
worker's clock, the same machine). The floor, measured in the same run, is a new job: from just
before its submit to its `start` event — the same wake-up, claim and start path.

    uv run python bench/resume_latency.py --trials 30
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "tests", ROOT / "tests" / "integration"):
    sys.path.insert(0, str(path))

from kill_loop import tool_lab  # noqa: E402
from readers import parse_stream  # noqa: E402
from runtimes import runtime_for  # noqa: E402
from stats import median, ms, percentile  # noqa: E402
from test_human_in_the_loop import charge_script, servers  # noqa: E402

from messenger.approvals import respond  # noqa: E402
from shared import keys  # noqa: E402
from shared.models import ChatRequest  # noqa: E402


async def started_at(runtime, job_id: str, attempt: int) -> float:
    """The `ts` of the job's start event of `attempt`, once it is in the stream."""
    while True:
        for event in parse_stream(await runtime.redis.xrange(keys.stream(job_id))):
            if event["type"] == "start" and event["attempt"] == attempt:
                return event["ts"]
        await asyncio.sleep(0.005)


async def run(trials: int) -> None:
    resumed: list[float] = []
    fresh: list[float] = []
    with (
        tempfile.TemporaryDirectory(prefix="resume-latency-") as tmp,
        tool_lab(Path(tmp), servers, TOOL_APPROVAL="destructive") as (workers, model, ledger),
    ):
        charge_script(model)
        workers.start()
        workers.start()
        await workers.all_ready()
        async with runtime_for(workers.redis.url, mcp_servers=servers(ledger)) as runtime:
            request = ChatRequest(message="charge 5", mcp_servers=["ledger"])
            for _ in range(trials):
                paused = await runtime.jobs.run(request, timeout=60)
                await asyncio.sleep(0.05)  # parked: the pausing worker has let go
                asked = time.time()
                await respond(runtime.jobs, paused.job_id, approve=True)
                resumed.append(await started_at(runtime, paused.job_id, 2) - asked)
                await runtime.jobs.wait(paused.job_id, timeout=60, until_input=False)

                submitted = time.time()
                job_id = await runtime.queue.submit(ChatRequest(message="hello"), caller="operator")
                fresh.append(await started_at(runtime, job_id, 1) - submitted)
                await runtime.jobs.wait(job_id, timeout=60)
    for name, values in (("answer -> resumed start", resumed), ("submit -> start (floor)", fresh)):
        shown = ms(values)
        print(
            f"{name:<26} median {median(shown):6.1f} ms   p95 {percentile(shown, 95):6.1f} ms   n={len(shown)}"
        )
    print(f"ratio (median resumed / floor): {median(resumed) / median(fresh):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    asyncio.run(run(parser.parse_args().trials))


if __name__ == "__main__":
    main()
