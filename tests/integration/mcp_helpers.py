"""Run the messenger as a real subprocess for MCP client tests: over stdio, streamable HTTP or SSE.

Every process's output goes to a log file under the test's tmp_path; the log is printed when the
test ends (pytest shows it only for a failing test) and the process is always stopped.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from mcp import StdioServerParameters
from mcp.client.stdio import stdio_client
from processes import process_env
from redis_server import free_port as _free_port

ROOT = Path(__file__).resolve().parents[2]
MESSENGER = [sys.executable, "-m", "messenger.cli", "serve"]


def free_port() -> int:
    return _free_port()


def messenger_env(redis_url: str, **extra: str) -> dict[str, str]:
    """conftest's environment for a subprocess: mock provider, nothing from a developer's .env."""
    return process_env(redis_url, **extra)


class HttpMessenger:
    """`messenger serve --transport http|sse` on a free port, its output in a log file."""

    def __init__(self, env: dict[str, str], log_path: Path, transport: str = "http"):
        self.port = free_port()
        self.transport = transport
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*MESSENGER, "--transport", transport, "--host", "127.0.0.1", "--port", str(self.port)],
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base_url}/sse" if self.transport == "sse" else f"{self.base_url}/mcp"

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(self.base_url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def wait_ready(self, timeout: float = 30) -> dict:
        """Wait until GET /health answers 200; returns the health report."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"messenger exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError):
                status, body = self.get("/health")
                if status == 200:
                    return json.loads(body)
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"messenger did not answer GET /health with 200 in {timeout}s:\n{self.log()}"
                )
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Messengers:
    """What a test gets from the `messengers` fixture: start HTTP/SSE servers, or stdio transports."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.http_servers: list[HttpMessenger] = []
        self.logs: list[Path] = []
        self._files: list[TextIO] = []

    def _log_path(self, kind: str) -> Path:
        path = self.tmp_path / f"messenger-{kind}-{len(self.logs)}.log"
        self.logs.append(path)
        return path

    def http(self, env: dict[str, str], transport: str = "http", wait: bool = True) -> HttpMessenger:
        server = HttpMessenger(env, self._log_path(transport), transport)
        self.http_servers.append(server)
        if wait:
            server.wait_ready()
        return server

    def stdio(self, env: dict[str, str]):
        """A transport for `mcp.Client` that runs `messenger serve` over stdio, stderr to a log file."""
        params = StdioServerParameters(command=MESSENGER[0], args=MESSENGER[1:], env=env, cwd=str(ROOT))
        errlog = open(self._log_path("stdio"), "w")
        self._files.append(errlog)
        return stdio_client(params, errlog=errlog)

    def close(self) -> None:
        for server in self.http_servers:
            server.stop()
        for f in self._files:
            f.close()
        for path in self.logs:
            text = path.read_text(errors="replace") if path.exists() else "(no log)"
            print(f"----- {path.name} -----\n{text[-20_000:]}")


@contextlib.contextmanager
def running_messengers(tmp_path: Path) -> Iterator[Messengers]:
    messengers = Messengers(tmp_path)
    try:
        yield messengers
    finally:
        messengers.close()
