"""No planted secret leaks anywhere, and no planted prompt reaches a log, /health, /metrics or an error.

A real messenger and real worker processes run with a Redis password in REDIS_URL, credentials in
OPENAI_BASE_URL (tests/openai_server.py behind it), an MCP server URL with a password, a query key
and a token, tenant and operator keys. They serve a success, provider errors that echo credentials,
an unreachable provider and an unreachable MCP server, and start with mistyped REDIS_URLs. Then
every log (text and JSON), every Redis value, every tool answer and every HTTP page is searched.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest
import redis as sync_redis
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_helpers import ROOT, free_port, running_messengers
from processes import process_env
from readers import text_of
from redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.timeout(300)]

REDIS_PW = "redis-pw-3c9d1e77"
BASE_PW = "base-url-pw-8a2f4401"
PROVIDER_KEY = "sk-provider-key-6d0b7a55"
MCP_URL_PW = "mcp-url-pw-4e1c9902"
MCP_URL_KEY = "mcp-url-query-77aa3b10"
MCP_TOKEN = "mcp-bearer-token-29f0c4e8"
ALICE_KEY = "tenant-key-alice-51c2d3a9"
OPERATOR_KEY = "operator-key-0b6e8f17"
WRONG_REDIS_PW = "wrong-redis-pw-5e6f7081"
BASIC = base64.b64encode(f"svc:{BASE_PW}".encode()).decode()  # how httpx sends the URL's user:password
SECRETS = [REDIS_PW, BASE_PW, PROVIDER_KEY, MCP_URL_PW, MCP_URL_KEY, MCP_TOKEN, ALICE_KEY, OPERATOR_KEY,
           WRONG_REDIS_PW, BASIC]  # fmt: skip
PROMPT = "planted-prompt-blue-lagoon-41d7"
TOOLS_READ = ["list_jobs", "list_mcp_servers", "list_models", "check_health", "get_ai_usage_stats",
              "get_conversation_history", "get_received_messages"]  # fmt: skip


def leaks(text: str, planted: list[str]) -> list[str]:
    return [p for p in planted if p in text]


class PasswordRedis(RedisServer):
    """A redis-server of this module's own that wants REDIS_PW."""

    def start(self) -> None:
        super().start()
        sync_redis.Redis(port=self.port).config_set("requirepass", REDIS_PW)

    def client(self) -> sync_redis.Redis:
        return sync_redis.Redis(port=self.port, password=REDIS_PW)

    @property
    def url(self) -> str:
        return f"redis://:{REDIS_PW}@127.0.0.1:{self.port}/0"


class Stack:
    """The processes of one run, their logs under `tmp`, and the environment they share."""

    def __init__(self, redis: PasswordRedis, tmp: Path, env: dict[str, str]):
        self.redis, self.tmp, self.env = redis, tmp, env
        self.workers: list[subprocess.Popen] = []

    def worker(self, **extra: str) -> subprocess.Popen:
        before = self.heartbeats()
        log = open(self.tmp / f"worker-{len(self.workers)}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "worker.cli"], env=self.env | extra, cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        self.workers.append(proc)
        deadline = time.monotonic() + 30
        while self.heartbeats() <= before:
            assert proc.poll() is None and time.monotonic() < deadline, "the worker did not start"
            time.sleep(0.05)
        return proc

    def heartbeats(self) -> int:
        return len(list(self.redis.client().scan_iter("mcpq:worker:*")))

    def stop(self, proc: subprocess.Popen) -> None:
        proc.terminate()
        proc.wait(30)
        for key in self.redis.client().scan_iter("mcpq:worker:*"):  # its heartbeat, if it left one
            self.redis.client().delete(key)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.tmp.glob("*.log")))


def redis_values(client: sync_redis.Redis) -> str:
    """Every key and value in Redis as one text."""
    out = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        if kind == "string":
            value = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = client.smembers(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = client.xrange(key)
        else:
            value = kind
        out.append(f"{key!r} {value!r}")
    return "\n".join(out)


@contextlib.asynccontextmanager
async def client_as(url: str, key: str):
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


async def answers(url: str, key: str, calls: list[tuple[str, dict]]) -> list[str]:
    """Each tool call's whole answer (text, structured content, error) as text."""
    got = []
    async with client_as(url, key) as client:
        for tool, arguments in calls:
            result = await client.call_tool(tool, arguments)
            got.append(f"{tool}: {text_of(result)} {json.dumps(result.structured_content)}")
    return got


def start_with_bad_redis_urls(port: int, log_dir: Path) -> str:
    """`messenger serve` and `worker` started with mistyped and wrong REDIS_URLs: their whole output."""
    bad = [f"redis://:{REDIS_PW}@127.0.0.1:{port}x/0", f"redis//:{REDIS_PW}@127.0.0.1:{port}/0",
           f"redis://:{REDIS_PW}@127.0.0.1:{port}/0?socket_timeout=abc",
           f"redis://:{WRONG_REDIS_PW}@127.0.0.1:{port}/0", f"redis://:{REDIS_PW}@127.0.0.1:{free_port()}/0"]  # fmt: skip
    out = []
    for i, url in enumerate(bad):
        for command in (["messenger.cli", "health"], ["worker.cli", "--burst"]):
            out.append(
                run_until_it_gives_up_or_retries(
                    command, process_env(url), log_dir / f"bad-{i}-{command[0]}.txt"
                )
            )
    return "\n".join(out)


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_no_secret_anywhere_and_no_prompt_in_logs_health_metrics_or_errors(
    openai_server, tmp_path, log_format
):
    redis = PasswordRedis(tmp_path)
    redis.start()
    dead = free_port()
    servers = {
        "docs": {"url": f"http://svc:{MCP_URL_PW}@127.0.0.1:{dead}/mcp?key={MCP_URL_KEY}", "token": MCP_TOKEN}
    }
    env = process_env(
        redis.url, AI_PROVIDER="openai", OPENAI_API_KEY=PROVIDER_KEY, OPENAI_DEFAULT_MODEL="gpt-4o-mini",
        OPENAI_BASE_URL=openai_server.base_url.replace("http://", f"http://svc:{BASE_PW}@"),
        MCP_SERVERS=json.dumps(servers), MCP_EXPOSE_SERVERS="docs", RETRY_ATTEMPTS="1",
        MCP_API_KEYS=json.dumps({"alice": ALICE_KEY}), MCP_ADMIN_KEY=OPERATOR_KEY,
        LOG_FORMAT=log_format, LOG_LEVEL="INFO", WORKER_METRICS_PORT="0",
    )  # fmt: skip
    stack = Stack(redis, tmp_path, env)
    pages, tool_answers = [], []
    try:
        with running_messengers(tmp_path) as messengers:
            messenger = messengers.http(env)
            worker = stack.worker()
            ok = await answers(messenger.url, ALICE_KEY, [("send_message_to_ai", {"message": PROMPT})])
            assert '"status": "completed"' in ok[0], ok
            failures = []
            for status in (401, 500):  # a proxy that echoes everything it was given
                openai_server.script(status=status, error_message=(
                    f"denied http://svc:{BASE_PW}@127.0.0.1/v1 key {PROVIDER_KEY} Authorization: Basic {BASIC}"))  # fmt: skip
                failures += await answers(
                    messenger.url, ALICE_KEY, [("send_message_to_ai", {"message": PROMPT})]
                )
            openai_server.script(status=None)
            failures += await answers(messenger.url, ALICE_KEY, [
                ("send_message_to_ai", {"message": PROMPT, "mcp_servers": ["docs"]})])  # fmt: skip
            stack.stop(worker)
            stack.worker(OPENAI_BASE_URL=f"http://svc:{BASE_PW}@127.0.0.1:{dead}/v1")  # unreachable
            failures += await answers(messenger.url, ALICE_KEY, [("send_message_to_ai", {"message": PROMPT})])
            assert all("failed" in f for f in failures), failures
            for key in (ALICE_KEY, OPERATOR_KEY):
                tool_answers += await answers(messenger.url, key, [(t, {}) for t in TOOLS_READ])
            tool_answers += ok + failures
            auth = {"Authorization": f"Bearer {OPERATOR_KEY}"}
            for path in ("/health", "/metrics", "/dashboard", "/mcp", "/dashboard/events?token=wrong"):
                pages.append(f"{path} {messenger.get(path, auth if path != '/health' else None)}")
            pages.append(first_snapshot(messenger.base_url))
            pages.append(worker_metrics(stack.logs()))
            health_and_metrics = pages[0] + pages[1] + pages[-1]
        startup = start_with_bad_redis_urls(redis.port, tmp_path)
        logs = stack.logs() + startup
        stored = redis_values(redis.client())
    finally:
        for proc in stack.workers:
            if proc.poll() is None:
                proc.kill()
        redis.stop()

    # every path was taken: the base URL's credentials were in use, each failure is the one planted
    assert openai_server.requests[0].headers["authorization"] == f"Basic {BASIC}"
    assert "HTTP 401" in failures[0] and "HTTP 500" in failures[1], failures
    assert "docs" in failures[2] and "cannot connect to the provider" in failures[3], failures
    assert "MCP_HOST" not in startup and startup.count("REDIS_URL") >= 4, startup
    assert leaks(logs, SECRETS) == []
    assert leaks(stored, SECRETS) == []
    assert leaks("\n".join(tool_answers), SECRETS) == []
    assert leaks("\n".join(pages), SECRETS) == []
    assert leaks(logs, [PROMPT]) == [], "a prompt in a log line at INFO or above"
    assert leaks(health_and_metrics, [PROMPT]) == []
    assert leaks("\n".join(failures), [PROMPT]) == []
    assert PROMPT in stored  # the search did read the job records: the prompt is stored there by design


def run_until_it_gives_up_or_retries(command: list[str], env: dict[str, str], path: Path) -> str:
    """Run a command until it exits or says it is retrying (a worker waits for Redis to come back)."""
    with open(path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", *command], env=env, cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 60
    try:
        while proc.poll() is None and "retrying" not in path.read_text(errors="replace"):
            assert time.monotonic() < deadline, path.read_text(errors="replace")
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(20)
    return path.read_text(errors="replace")


def first_snapshot(base_url: str) -> str:
    """The dashboard stream's first snapshot, read as the operator."""
    with httpx2.Client(timeout=20) as http:
        url = f"{base_url}/dashboard/events"
        with http.stream("GET", url, headers={"Authorization": f"Bearer {OPERATOR_KEY}"}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    return line
    raise AssertionError("no snapshot")


def worker_metrics(logs: str) -> str:
    """The last worker's /metrics (its port is in its start-up log line)."""
    port = re.findall(r'metrics at http://[^:]+:(\d+)/metrics|"metrics_port": (\d+)', logs)[-1]
    return httpx2.get(f"http://127.0.0.1:{port[0] or port[1]}/metrics", timeout=10).text
