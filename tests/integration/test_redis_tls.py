"""TLS (`rediss://`, a managed Redis): the messenger, workers and the CLI reach a Redis that speaks
only TLS and wants a client certificate, with the CA made here by openssl, and every answer is
exact; a CA that did not sign the server's certificate ends each process with one line naming
ssl_ca_certs in REDIS_URL, and exit code 2 (a setting is wrong)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest
import redis as sync_redis
from mcp import Client
from mcp_helpers import messenger_env, running_messengers
from processes import ROOT, WorkerProcesses, process_env
from redis_server import free_port

from worker.providers.mock import mock_reply

CALLS = 10


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(d: Path) -> None:
    """ca.crt signs server.crt (for 127.0.0.1) and client.crt; wrong-ca.crt signs nothing of theirs."""
    for ca in ("ca", "wrong-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={ca}",
                "-keyout", f"{ca}.key", "-out", f"{ca}.crt", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "1", "-out", f"{name}.crt", "-extfile", "san.ext", cwd=d)  # fmt: skip


class TlsRedis:
    """A redis-server that listens only on a TLS port (`--port 0`) and requires client certificates."""

    def __init__(self, d: Path):
        self.dir = d
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(d), "--tls-auth-clients", "yes",
             "--tls-cert-file", "server.crt", "--tls-key-file", "server.key", "--tls-ca-cert-file", "ca.crt"],
            cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                assert self.client().info("server")["process_id"] == self.proc.pid
                return
            except (sync_redis.ConnectionError, OSError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"TLS redis-server did not start on {self.port}") from None
                time.sleep(0.05)

    def url(self, ca: str = "ca.crt") -> str:
        query = {
            "ssl_ca_certs": self.dir / ca,
            "ssl_certfile": self.dir / "client.crt",
            "ssl_keyfile": self.dir / "client.key",
            "ssl_cert_reqs": "required",
        }
        return f"rediss://127.0.0.1:{self.port}/0?{urlencode(query)}"

    def client(self) -> sync_redis.Redis:
        return sync_redis.Redis.from_url(self.url())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    make_certificates(d)
    server = TlsRedis(d)
    yield server
    server.stop()


async def ask_all(url: str) -> list[tuple[str, dict]]:
    async with Client(url) as client:
        prompts = [f"tls call {i}" for i in range(CALLS)]
        results = await asyncio.gather(
            *(client.call_tool("send_message_to_ai", {"message": p}) for p in prompts)
        )
    return [(p, r.structured_content or {}) for p, r in zip(prompts, results, strict=True)]


async def test_10_calls_through_a_tls_only_redis_with_client_certificates_are_exact(tls_redis, tmp_path):
    assert tls_redis.client().config_get("port")["port"] == "0"  # no plain port: TLS is the only way in
    workers = WorkerProcesses(tls_redis, tmp_path)  # type: ignore[arg-type]  (it needs only .client())
    cli = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "messenger.cli",
        "ask",
        "tls from the cli",
        env=process_env(tls_redis.url()),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip  (its job waits in the queue until the worker is up)
    try:
        with running_messengers(tmp_path) as messengers:
            messenger = messengers.http(messenger_env(tls_redis.url()), wait=False)
            workers.start(tls_redis.url())
            messenger.wait_ready()
            async with asyncio.timeout(60):
                answers = await ask_all(messenger.url)
                out, err = await cli.communicate()
    finally:
        workers.stop_all()
    for prompt, result in answers:
        assert result.get("status") == "completed", result
        assert result["aiResponse"] == "".join(mock_reply([{"role": "user", "content": prompt}]))
    assert cli.returncode == 0, err
    assert out.decode().strip() == "".join(mock_reply([{"role": "user", "content": "tls from the cli"}]))


def test_a_ca_that_did_not_sign_the_server_ends_worker_and_messenger_with_one_line_exit_2(tls_redis):
    url = tls_redis.url(ca="wrong-ca.crt")
    commands = ([sys.executable, "-m", "worker.cli"], [sys.executable, "-m", "messenger.cli", "ask", "hi"])
    procs = [
        subprocess.Popen(
            c, env=process_env(url), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for c in commands
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, (out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert "TLS certificate" in lines[0] and "ssl_ca_certs in REDIS_URL" in lines[0], lines[0]
        assert "Traceback" not in out + err and "client.key" not in err
