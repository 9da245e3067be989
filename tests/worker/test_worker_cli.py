"""The `worker` command ends in one line and a documented exit code, even when Redis is away."""

from __future__ import annotations

import signal
import subprocess
import sys

from processes import ROOT, process_env
from redis_server import free_port


def test_a_worker_stopped_while_redis_is_away_ends_in_one_line_without_its_password():
    port = free_port()  # nothing listens here
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.cli"],
        env=process_env(f"redis://app:hunter2@127.0.0.1:{port}/0"),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # the log goes to stderr; wait until the worker runs (and waits for Redis)
            if "not reachable yet" in line:
                break
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1  # it could not hand its state back to Redis
    assert "Traceback" not in rest and "hunter2" not in rest
    last = rest.strip().splitlines()[-1]
    assert last.startswith(f"worker: cannot reach Redis at redis://***@127.0.0.1:{port}/0: ")


def test_help_documents_the_exit_codes():
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "exit codes:" in done.stdout
