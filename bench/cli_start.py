"""How long an operator waits for a CLI command: start-up beside its floor, and each Redis refusal.

    uv run python bench/cli_start.py [--runs N]

Start-up: `messenger --help`, `jobs`, `job`, `stats`, `health` against a real redis-server, each
beside `python -c "import redis, pydantic"` (what any command must import anyway), as the ratio of
medians (target ≤ 1.5). Runs are interleaved, so load on a shared machine hits both alike; with
hyperfine installed it is used instead. Refusals: the wall time from start to the one-line error for a
stopped Redis, a missing password, a wrong password, a user without permissions and TLS asked of a
plain Redis (target ≤ 5 s each), and how much of it comes after start-up (the wait for Redis itself,
capped at 3 s; on a loaded machine start-up grows, the wait does not).

Every process runs as a user's does after its first run: with Python's bytecode cache, written once by
an untimed warm-up round (to a temporary PYTHONPYCACHEPREFIX, overriding PYTHONDONTWRITEBYTECODE; with
no cache each run compiles every module again, which roughly doubles both times and says little).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests")]

from redis_server import RedisServer, free_port  # noqa: E402

PASSWORD = "bench-secret"


def env(redis_url: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "AI_", "MCP_", "OPENAI_"))}
    return {**keep, "REDIS_URL": redis_url, "AI_PROVIDER": "mock"}


def timed(argv: list[str], environ: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=environ, cwd=ROOT, capture_output=True, text=True, timeout=120)
    return time.perf_counter() - t0, done


def messenger(*args: str) -> list[str]:
    return [sys.executable, "-m", "messenger.cli", *args]


def start_up(url: str, runs: int, job_id: str) -> dict[str, dict[str, float]]:
    floor = [sys.executable, "-c", "import redis, pydantic"]
    commands = {
        "--help": messenger("--help"), "jobs": messenger("jobs"), "job": messenger("job", job_id),
        "stats": messenger("stats"), "health": messenger("health"),
    }  # fmt: skip
    environ = env(url)
    if shutil.which("hyperfine"):
        return _hyperfine(floor, commands, environ, runs)
    times: dict[str, list[float]] = {name: [] for name in ["floor", *commands]}
    for run in range(runs + 1):  # interleaved: a burst of load lands on the floor and the commands alike
        times["floor"].append(timed(floor, environ)[0])
        for name, argv in commands.items():
            took, done = timed(argv, environ)
            assert done.returncode in (0, 1), done.stderr  # health is 1 with no worker: still a full run
            times[name].append(took)
        if run == 0:  # the warm-up round wrote the bytecode cache
            times = {name: [] for name in times}
    floor_s = statistics.median(times["floor"])
    return {
        name: {"median_s": round(statistics.median(t), 3), "ratio": round(statistics.median(t) / floor_s, 2)}
        for name, t in times.items()
    }


def _hyperfine(floor, commands, environ, runs) -> dict[str, dict[str, float]]:
    import shlex

    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run(
            ["hyperfine", "-N", "--warmup", "1", "--runs", str(runs), "-i", "--export-json", out.name,
             "-n", "floor", shlex.join(floor), *[x for n, a in commands.items() for x in ("-n", n, shlex.join(a))]],
            env=environ, cwd=ROOT, check=True, capture_output=True,
        )  # fmt: skip
        results = json.load(open(out.name))["results"]
    medians = {r["command"]: r["median"] for r in results}
    return {n: {"median_s": round(m, 3), "ratio": round(m / medians["floor"], 2)} for n, m in medians.items()}


def refusals(plain_port: int, guarded_port: int) -> dict[str, dict]:
    cases = {
        "stopped Redis": f"redis://127.0.0.1:{free_port()}/0",
        "no password": f"redis://127.0.0.1:{guarded_port}/0",
        "wrong password": f"redis://:wrong@127.0.0.1:{guarded_port}/0",
        "user without permissions": f"redis://narrow:{PASSWORD}@127.0.0.1:{guarded_port}/0",
        "TLS asked of a plain Redis": f"rediss://127.0.0.1:{plain_port}/0",
    }
    out = {}
    for name, url in cases.items():
        worst = 0.0
        for args in (["jobs"], ["health"], ["ask", "hi"]):
            took, done = timed(messenger(*args), env(url))
            worst = max(worst, took)
            line = done.stderr.strip()
        out[name] = {"slowest_s": round(worst, 2), "exit": done.returncode, "line": line}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        os.environ["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "bytecode")
        plain = RedisServer(Path(tmp))
        plain.start()
        guarded_port = free_port()
        guarded = subprocess.Popen(
            ["redis-server", "--port", str(guarded_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--requirepass", PASSWORD, "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            job_id = timed(messenger("submit", "bench"), env(plain.url))[1].stdout.strip()
            time.sleep(0.2)
            subprocess.run(
                ["redis-cli", "-p", str(guarded_port), "-a", PASSWORD, "--no-auth-warning", "ACL", "SETUSER",
                 "narrow", "on", f">{PASSWORD}", "~other:*", "+@all"],
                check=True, capture_output=True,
            )  # fmt: skip
            figures = {
                "start_up": start_up(plain.url, args.runs, job_id),
                "refusals": refusals(plain.port, guarded_port),
            }
        finally:
            guarded.terminate()
            plain.stop()
    started = figures["start_up"]["jobs"]["median_s"]  # what any command takes here to start at all
    for row in figures["refusals"].values():
        row["beyond_start_up_s"] = round(row["slowest_s"] - started, 2)
    print(json.dumps(figures, indent=2))
    worst = max(v["ratio"] for k, v in figures["start_up"].items() if k != "floor")
    slowest = max(v["slowest_s"] for v in figures["refusals"].values())
    beyond = max(v["beyond_start_up_s"] for v in figures["refusals"].values())
    print(
        f"start-up: worst ratio to the floor {worst} (target ≤ 1.5); slowest refusal {slowest} s, "
        f"{beyond} s of it past start-up (target ≤ 5 s in all; load stretches start-up, not the wait)"
    )


if __name__ == "__main__":
    main()
