"""The processes a bench run owns: redis-servers, worker processes and helpers.

Each configuration gets a redis-server of its own (a "site"), so configurations never take each
other's jobs and their worker processes can stay up for the whole run. Every child is started with
PR_SET_PDEATHSIG, and `Lab.close()` stops them all, so nothing outlives the bench.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from redis_server import RedisServer, free_port

from shared import keys
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
_SETTINGS = frozenset(name.upper() for name in Settings.model_fields)  # a child gets only the bench's
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def forget_settings() -> None:
    """Drop mcp-queue settings from this process's environment (the bench chooses every one)."""
    for name in [k for k in os.environ if k.upper() in _SETTINGS]:
        del os.environ[name]


def child_env(**settings: object) -> dict[str, str]:
    """A child's environment: ours, minus any mcp-queue setting, plus `settings`.

    Children run in the bench's temporary directory, so a developer's `.env` does not apply.
    """
    env = {k: v for k, v in os.environ.items() if k.upper() not in _SETTINGS}
    path = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env.update(
        PYTHONPATH=os.pathsep.join(path),
        PYTHONUNBUFFERED="1",
        LOG_LEVEL="WARNING",
        AI_PROVIDER="mock",
        MOCK_TOKEN_DELAY_MS="0",
    )
    env.update({k: str(v) for k, v in settings.items()})
    return env


def cpu_seconds(pid: int) -> float:
    """CPU time of a process so far, in ns precision (schedstat of every live thread)."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def runqueue_seconds(pid: int) -> float:
    """How long the process's threads have waited for a CPU while runnable (a busy box, not us)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/schedstat") as f:
            total += int(f.read().split()[1])
    return total / 1e9


def box_cpu_seconds() -> tuple[float, float]:
    """(busy, stolen) CPU seconds of the whole machine so far, summed over its cores."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of every child it has waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@dataclass
class Site:
    """One configuration: its own redis-server, its worker processes, and later a messenger runtime."""

    name: str
    server: RedisServer
    stock: bool = False
    workers: list[subprocess.Popen] = field(default_factory=list)
    runtime: object = None  # messenger.runtime.Runtime, opened by the caller

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.workers]


class Lab:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.children: list[subprocess.Popen] = []
        self.servers: list[RedisServer] = []
        self.logs: dict[int, Path] = {}

    def site(self, name: str, *, stock: bool = False) -> Site:
        folder = self.tmp / name
        folder.mkdir()
        server = RedisServer(folder)
        server.start()
        self.servers.append(server)
        return Site(name, server, stock=stock)

    def spawn(
        self, name: str, args: list[str], env: dict[str, str], *, program: str = sys.executable, **popen
    ) -> subprocess.Popen:
        log = self.tmp / f"{name}-{len(self.children)}.log"
        with open(log, "wb") as stderr:
            proc = subprocess.Popen(
                [program, *args],
                cwd=self.tmp,
                env=env,
                stderr=stderr,
                preexec_fn=_die_with_parent,
                **popen,
            )
        self.children.append(proc)
        self.logs[proc.pid] = log
        return proc

    def add_workers(self, site: Site, count: int, **settings: object) -> None:
        module = "bench.stock_arq_worker" if site.stock else "worker.cli"
        env = child_env(REDIS_URL=site.url, **settings)
        for _ in range(count):
            site.workers.append(
                self.spawn(f"{site.name}-worker", ["-m", module], env, stdin=subprocess.DEVNULL)
            )

    def messenger(self, site: Site, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
        """A real `messenger serve --transport http` process on the site's Redis: (process, port);
        `env`: its whole environment instead (it must name the site's REDIS_URL)."""
        port = free_port()
        args = [
            "-m",
            "messenger.cli",
            "serve",
            "--transport",
            "http",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        return self.spawn(f"{site.name}-messenger", args, env or child_env(REDIS_URL=site.url)), port

    def wait_healthy(self, proc: subprocess.Popen, port: int, timeout: float = 60) -> None:
        """Until the messenger on `port` answers /health with 200 (blocking: run it in a thread)."""
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the messenger exited:\n{self.log_tail(proc)}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    if r.status == 200:
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the messenger did not get healthy:\n{self.log_tail(proc)}")
            time.sleep(0.1)

    def log_tail(self, proc: subprocess.Popen, lines: int = 15) -> str:
        path = self.logs.get(proc.pid)
        if path is None or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    async def wait_ready(self, site: Site, timeout: float = 90) -> None:
        """Until every worker of the site beats (and, for ours, listens for wake-ups)."""
        redis = site.runtime.redis
        async with asyncio.timeout(timeout):
            while True:
                for proc in site.workers:
                    if proc.poll() is not None:
                        raise RuntimeError(
                            f"a {site.name} worker exited with {proc.returncode}:\n{self.log_tail(proc)}"
                        )
                beats = [k async for k in redis.scan_iter(match=keys.WORKER_PREFIX + "*")]
                ready = len(beats) >= len(site.workers)
                if ready and not site.stock:
                    ready = (await redis.pubsub_numsub(keys.WAKEUP_CHANNEL))[0][1] >= len(site.workers)
                if ready:
                    return
                await asyncio.sleep(0.05)

    def stop(self, procs: list[subprocess.Popen]) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def close(self) -> None:
        self.stop(self.children)
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.stop()


@contextlib.contextmanager
def scratch_lab(prefix: str) -> Iterator[Lab]:
    """A Lab in a fresh temporary directory (no developer's `.env` applies), closed at the end."""
    forget_settings()
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        os.chdir(tmp)
        lab = Lab(Path(tmp))
        try:
            yield lab
        finally:
            lab.close()
