"""A redis-server process owned by the caller (tests, benchmarks), on a free port of its own.

Its pid is checked against the port before use, so nothing ever writes into somebody else's Redis.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import redis as sync_redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server process the tests own; `restart()` keeps the port (for fault tests)."""

    def __init__(self, tmp: Path, persistent: bool = False, args: tuple[str, ...] = ()):
        self.port = free_port()
        self.tmp = tmp
        self.persistent = persistent  # append-only file: data survives a restart, as in production
        self.args = args  # more redis-server options, e.g. ("--replicaof", host, port)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += (
            ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        )
        args += self.args
        self.proc = subprocess.Popen(
            ["redis-server", *args, "--dir", str(self.tmp)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = sync_redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.info("persistence")["loading"] == 0:  # a persistent restart reloads its data first
                    info = client.info("server")
                    break
            except (sync_redis.ConnectionError, sync_redis.BusyLoadingError):
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"redis-server did not start on port {self.port}") from None
            time.sleep(0.02)
        if info["process_id"] != self.proc.pid:
            raise RuntimeError(f"port {self.port} is served by another Redis (pid {info['process_id']})")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self) -> sync_redis.Redis:
        return sync_redis.Redis(port=self.port)
