"""Kill a worker in a tool loop, N times over: is a tool that answered ever called again?

Each trial runs a fresh job whose model (tests/openai_server.py) asks for one `ledger__charge` call
(tests/mcp_ledger_server.py over stdio: one ledger line per call it receives, with its idempotency
key), then answers slowly; the worker running it gets SIGKILL, alternately just after the tool's
result and while the tool runs (tests/faults/tool_kill.py, the trial the fault suite runs). The
killed worker is replaced before the next trial.

    uv run python bench/durable_kill.py --trials 40

Prints, per kind of kill, the trials, the duplicate tool calls (and whether they carried the key of
the call they repeat) and the whole answers. Exits 1 on a duplicate after a result, a duplicate with
another key, or an answer that is not whole.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "tests", ROOT / "tests" / "faults"):
    sys.path.insert(0, str(path))

from kill_loop import tool_lab  # noqa: E402
from runtimes import runtime_for  # noqa: E402
from tool_kill import ToolKillTrial, kill_in_tool_loop, script, servers  # noqa: E402

KINDS = ("after_result", "during_call")


async def run(trials: int, lease: float, verbose: bool) -> int:
    results: list[ToolKillTrial] = []
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="durable-kill-") as tmp,
        tool_lab(Path(tmp), servers, WORKER_LEASE_SECONDS=lease) as (workers, model, ledger),
    ):
        holds = script(model, ledger)
        workers.start()
        workers.start()
        async with runtime_for(workers.redis.url, mcp_servers=servers(ledger)) as runtime:
            for n in range(trials):
                await workers.all_ready()
                trial = await kill_in_tool_loop(
                    runtime, workers.procs, ledger, holds, KINDS[n % 2], timeout=lease + 60
                )
                results.append(trial)
                if trial.killed is not None:
                    workers.replace(trial.killed)
                if verbose or not trial.complete:
                    print(f"trial {n + 1}: {trial.seconds:.1f} s {trial.describe()}")
    return report(results, lease, time.monotonic() - started)


def report(results: list[ToolKillTrial], lease: float, wall: float) -> int:
    bad = 0
    for kind in KINDS:
        mine = [t for t in results if t.when == kind]
        dupes = sum(t.duplicates for t in mine)
        same_key = sum(t.duplicates for t in mine if t.keys_agree)
        whole = sum(t.complete and t.told_once for t in mine)
        missed = sum(t.killed is None or (t.result is not None and t.result.attempt < 2) for t in mine)
        print(f"killed {kind.replace('_', ' '):<13} trials {len(mine):3}   duplicate tool calls {dupes:3} "
              f"({same_key} with the same idempotency key)   one whole answer {whole}/{len(mine)}   "
              f"kills that missed {missed}")  # fmt: skip
        bad += whole < len(mine) or same_key < dupes or (kind == "after_result" and dupes > 0)
    print(f"WORKER_LEASE_SECONDS={lease:g}, wall time {wall:.0f} s")
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--lease", type=float, default=2.0, help="WORKER_LEASE_SECONDS (default 2)")
    parser.add_argument("-v", "--verbose", action="store_true", help="a line per trial")
    args = parser.parse_args()
    return asyncio.run(run(args.trials, args.lease, args.verbose))


if __name__ == "__main__":
    sys.exit(main())
