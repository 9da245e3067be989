"""tests/proxy.py itself: each request to the next backend, responses streamed as they come, and a
client that drops closes the backend's stream too (what the replica tests rely on)."""

from __future__ import annotations

import subprocess
import sys

import httpx2
import pytest
from openai_server import OpenAIServer
from processes import ROOT
from proxy import proxy_in_thread, round_robin_proxy

CHAT = {"model": "test-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def two_servers():
    servers = [OpenAIServer(), OpenAIServer()]
    for s in servers:
        s.start()
    yield servers
    for s in servers:
        s.stop()


async def test_requests_alternate_and_a_dropped_stream_reaches_the_backend(two_servers):
    for s in two_servers:
        s.script(reply="one two three four five six", token_delay=0.2)
    async with (
        round_robin_proxy([s.base_url for s in two_servers]) as proxy,
        httpx2.AsyncClient(timeout=10) as http,
    ):
        assert proxy.url.endswith("/v1")
        for _ in range(4):
            assert (await http.get(proxy.url + "/models")).status_code == 200
        assert [s.backend for s in proxy.served] == [0, 1, 0, 1]
        async with http.stream("POST", proxy.url + "/chat/completions", json=CHAT) as response:
            lines = response.aiter_lines()
            first = await anext(line async for line in lines if line.startswith("data:"))
            assert '"role"' in first  # the first chunk arrived before the stream's end: it streams
        await two_servers[0].wait_until(lambda: two_servers[0].disconnects)
        assert (proxy.served[-1].backend, proxy.served[-1].status) == (0, 200)


def test_a_refused_backend_is_skipped_and_the_cli_serves(two_servers, tmp_path):
    dead = "http://127.0.0.1:9/v1"  # discard port: nothing listens
    with proxy_in_thread([dead, two_servers[1].base_url]) as proxy:
        for _ in range(3):
            assert httpx2.get(proxy.url + "/models", timeout=10).status_code == 200
        assert {s.backend for s in proxy.served} == {1}
    cli = subprocess.Popen(
        [sys.executable, "tests/proxy.py", "--listen", "127.0.0.1:0", two_servers[0].base_url],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert cli.stdout is not None
        url = cli.stdout.readline().split()[-1]
        assert httpx2.get(url + "/models", timeout=10).status_code == 200
        assert "backend 0: GET /v1/models" in cli.stdout.readline()
    finally:
        cli.terminate()
        cli.wait(10)
