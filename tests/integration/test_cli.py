"""The operator's CLI, each command run as a process: against a stopped Redis and one that wants a
password (or refuses the user, or is asked for TLS it does not speak) every command ends in one line
naming REDIS_URL and exit 1, never a traceback; against a working Redis the operator's round trip
(submit, job by prefix, health, cancel, retry, ask, top) says what is true, with and without a worker.

Processes are started side by side, so start-up on a loaded machine is not timed here (bench/cli_start.py
measures it); what is timed is the wait load does not stretch: from a command's first connection to a
host that never answers until its one line, at most COMMAND.give_up and a second of slack. One
redis-server per kind is shared by the module."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis as sync_redis
from processes import ROOT, WorkerProcesses, process_env
from redis_server import RedisServer, free_port

from messenger.health import NO_WORKER
from shared.connection import COMMAND

pytestmark = pytest.mark.redis

PASSWORD = "hunter2-cli"
SOME_ID = "abcdef123456"
EVERY_COMMAND = [
    ["jobs"], ["job", SOME_ID], ["tail", SOME_ID], ["stats"], ["health"], ["submit", "hi"], ["ask", "hi"],
    ["cancel", SOME_ID], ["retry", SOME_ID], ["respond", SOME_ID, "yes"], ["dead"], ["top", "--once"],
]  # fmt: skip


def start(args: list[str], redis_url: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "messenger.cli", *args],
        env=process_env(redis_url, LOG_LEVEL="WARNING", **env),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(args: list[str], redis_url: str) -> subprocess.CompletedProcess:
    proc = start(args, redis_url)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def run_all(commands: list[list[str]], redis_url: str) -> list[subprocess.CompletedProcess]:
    """Side by side: the suite pays for the slowest, not the sum."""
    procs = [(args, start(args, redis_url)) for args in commands]
    try:
        ended = [(args, p, p.communicate(timeout=90)) for args, p in procs]
    finally:
        for _, p in procs:  # a command that hangs fails the test and is not left running
            p.kill()
    return [subprocess.CompletedProcess(args, p.returncode, *out) for args, p, out in ended]


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Iterator[RedisServer]:
    """A Redis of this module's own: no worker of another test ever beats in it."""
    server = RedisServer(tmp_path_factory.mktemp("cli-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory) -> Iterator[int]:
    """A Redis with `requirepass`, and a user `narrow` allowed only keys that are not ours."""
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--requirepass", PASSWORD, "--dir", str(tmp_path_factory.mktemp("cli-guarded"))],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    client = sync_redis.Redis(port=port, password=PASSWORD)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.acl_setuser(
                "narrow", enabled=True, passwords=[f"+{PASSWORD}"], keys=["other:*"], commands=["+@all"]
            )
            break
        except sync_redis.ConnectionError:
            assert time.monotonic() < deadline and proc.poll() is None, "redis-server did not start"
            time.sleep(0.02)
    yield port
    proc.terminate()
    proc.wait(10)


def assert_one_line(done: subprocess.CompletedProcess, says: str) -> None:
    what = f"{done.args}: rc {done.returncode}, stderr {done.stderr!r}"
    assert done.returncode == 1, what
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("messenger: "), what
    assert says in done.stderr and "REDIS_URL" in done.stderr, what
    assert "Traceback" not in done.stderr and PASSWORD not in done.stderr, what
    assert done.stdout == "", what


def test_every_command_against_a_stopped_redis_ends_in_one_line_naming_redis_url():
    url = f"redis://app:{PASSWORD}@127.0.0.1:{free_port()}/0"  # nothing listens there
    for done in run_all(EVERY_COMMAND, url):
        assert_one_line(done, "cannot reach Redis at redis://***@127.0.0.1:")


def test_every_command_without_the_password_says_redis_requires_one(guarded):
    for done in run_all(EVERY_COMMAND, f"redis://127.0.0.1:{guarded}/0"):
        assert_one_line(done, "requires a password and REDIS_URL gives none")


class SilentHost:
    """A host that takes every connection and never answers: a frozen Redis, a firewall's tarpit, or
    TLS asked of a port that speaks plain TCP. Notes when the first connection came."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.first_contact: float | None = None
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with self.listener:
            while True:
                try:
                    conn, _ = self.listener.accept()
                except OSError:  # closed
                    return
                self.first_contact = self.first_contact or time.monotonic()
                self.held.append(conn)

    def close(self) -> None:
        self.listener.close()
        for conn in self.held:
            conn.close()


def test_a_host_that_never_answers_is_one_line_within_the_give_up_time():
    assert COMMAND.give_up is not None and COMMAND.give_up <= 3
    cases = [(args, "redis") for args in EVERY_COMMAND] + [(["health"], "rediss"), (["ask", "hi"], "rediss")]
    hosts = [SilentHost() for _ in cases]
    procs = [
        start(args, f"{scheme}://127.0.0.1:{h.port}/0")
        for (args, scheme), h in zip(cases, hosts, strict=True)
    ]

    def first_line(proc: subprocess.Popen) -> tuple[str, float]:
        assert proc.stderr is not None
        return proc.stderr.readline(), time.monotonic()  # the line ends the wait, not the exit after it

    try:
        with ThreadPoolExecutor(len(procs)) as pool:
            lines = list(pool.map(first_line, procs))
        for proc, host, (line, answered) in zip(procs, hosts, lines, strict=True):
            out, rest = proc.communicate(timeout=60)
            done = subprocess.CompletedProcess(proc.args, proc.returncode, out, line + rest)
            assert_one_line(done, "did not answer in time: check the host and port in REDIS_URL")
            assert host.first_contact is not None, done.args
            waited = answered - host.first_contact
            assert waited <= COMMAND.give_up + 1, f"{done.args}: {waited:.1f} s from first contact"
    finally:
        for proc in procs:
            proc.kill()
        for host in hosts:
            host.close()


def test_a_refused_password_or_user_and_tls_redis_does_not_speak_are_one_line(guarded):
    cases = [
        ("redis://:wrong-{p}@127.0.0.1:{port}/0", "refused the user or password in REDIS_URL"),
        ("redis://narrow:{p}@127.0.0.1:{port}/0", "the Redis user in REDIS_URL lacks a permission"),
        ("rediss://:{p}@127.0.0.1:{port}/0", "TLS"),  # TLS asked of a Redis that speaks plain TCP
    ]
    procs = [
        (says, start(args, url.format(p=PASSWORD, port=guarded)))
        for url, says in cases
        for args in (["health"], ["ask", "hi"])
    ]
    for says, proc in procs:
        out, err = proc.communicate(timeout=90)
        assert_one_line(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), says)


def test_the_operators_round_trip_without_a_worker(plain):
    url = plain.url
    submitted = run(["submit", "for later"], url)
    assert submitted.returncode == 0 and "no live worker" in submitted.stderr, submitted.stderr
    job_id = submitted.stdout.strip()
    shown, health = run_all([["job", job_id[:8]], ["health"]], url)
    assert json.loads(shown.stdout)["status"] == "queued", shown.stderr
    assert health.returncode == 1 and "1 waiting, 0 running" in health.stdout
    assert "no live worker" in health.stdout and "NOT reachable" not in health.stdout
    cancelled = run(["cancel", job_id[:6]], url)
    assert (cancelled.returncode, cancelled.stdout) == (0, f"job {job_id} cancelled\n"), cancelled.stderr
    again, retried, short, listed = run_all(
        [["cancel", job_id], ["retry", job_id[:6]], ["job", job_id[:5]], ["jobs", "--status", "cancelled"]],
        url,
    )
    assert again.returncode == 1 and "had already ended: cancelled" in again.stderr
    new_id = retried.stdout.strip()
    assert retried.returncode == 0 and new_id and new_id != job_id, retried.stderr
    assert short.returncode == 2 and "at least 6 characters" in short.stderr
    assert short.stderr.count("\n") == 1
    assert job_id in listed.stdout
    assert run(["cancel", new_id], url).returncode == 0


def test_ask_without_a_worker_says_so_and_ctrl_c_cancels_its_job(plain):
    proc = start(["ask", "nobody listens"], plain.url)
    assert proc.stderr is not None
    line = proc.stderr.readline()  # pytest's timeout guards the wait: the line comes, or the test fails
    assert line.startswith(f"messenger: {NO_WORKER} (job "), line  # the words health and the dashboard use
    job_id = line.split("(job ")[1].split(";")[0]
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=30)[1]
    assert proc.returncode == 130 and f"job {job_id} cancelled" in rest and "Traceback" not in rest, rest
    assert json.loads(run(["job", job_id], plain.url).stdout)["status"] == "cancelled"


def test_with_a_worker_ask_health_top_and_retry_say_what_is_true(plain, tmp_path: Path):
    workers = WorkerProcesses(plain, tmp_path)
    workers.start(plain.url)
    try:
        url = plain.url
        asked, failed, health, top = run_all(
            [["ask", "hello"], ["ask", "hi", "--model", "no-such-model"], ["health"], ["top", "--once"]], url
        )
        assert asked.returncode == 0 and asked.stdout.startswith("Mock answer to: hello"), asked.stderr
        assert failed.returncode == 1 and "unknown model" in failed.stderr
        assert health.returncode == 0, health.stdout
        assert "mock  reachable" in health.stdout and "0 running" in health.stdout
        assert "workers 1 live" in top.stdout and "mock reachable" in top.stdout, top.stdout
        failed_id = failed.stderr.split("job ")[1].split()[0]
        retried = run(["retry", failed_id[:10]], url)
        tailed = run(["tail", retried.stdout.strip()[:8]], url)
        assert tailed.returncode == 1 and "unknown model" in tailed.stderr  # the same request, run again
    finally:
        workers.stop_all()
