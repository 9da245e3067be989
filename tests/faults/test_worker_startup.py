"""A worker started against a Redis that refuses it for good (wrong password, a user without the
commands it needs) exits non-zero with one line and no traceback; one started before its Redis is up
keeps retrying, a log line per step, and says "ready" only once Redis answers."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from processes import ROOT, process_env
from redis_server import RedisServer

from shared import keys


def start_worker(redis_url: str, tmp_path) -> tuple[subprocess.Popen, object]:
    log = tmp_path / "worker.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.cli"], env=process_env(redis_url), cwd=ROOT,
        stdout=open(log, "wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    return proc, log


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return found


@pytest.fixture
def guarded_redis(tmp_path):
    server = RedisServer(tmp_path / "redis")
    server.tmp.mkdir()
    server.start()
    client = server.client()
    client.acl_setuser("noscripts", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
                       commands=["+@all", "-@scripting"])  # fmt: skip
    client.config_set("requirepass", "right-password")
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("credentials", "says"),
    [(":wrong-password@", "refused the user or password in REDIS_URL"), ("noscripts:pw@", "NOPERM")],
    ids=["wrong-password", "no-permission"],
)
def test_a_redis_that_refuses_the_worker_for_good_ends_it_with_one_line(
    guarded_redis, tmp_path, credentials, says
):
    proc, log = start_worker(f"redis://{credentials}127.0.0.1:{guarded_redis.port}/0", tmp_path)
    code = proc.wait(30)
    out = log.read_text()
    assert code != 0
    lines = [line for line in out.splitlines() if line.startswith("worker: ")]
    assert len(lines) == 1 and says in lines[0], out
    assert "Traceback" not in out and "wrong-password" not in out and ":pw@" not in out, out
    assert "ready" not in out


def test_a_worker_started_before_redis_retries_and_is_ready_only_once_redis_answers(tmp_path):
    server = RedisServer(tmp_path / "redis")
    server.tmp.mkdir()
    proc, log = start_worker(server.url, tmp_path)
    try:
        wait_for(lambda: log.read_text().count("not reachable yet") >= 2, 20, "a log line per retry")
        assert proc.poll() is None and "ready" not in log.read_text()
        server.start()
        wait_for(lambda: list(server.client().scan_iter(keys.WORKER_PREFIX + "*")), 20, "a heartbeat")
        assert "ready" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(10)
        server.stop()
    assert proc.returncode == 0
