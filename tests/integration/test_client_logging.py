"""A job's lifecycle as MCP log messages, with real worker processes and real Redis: a 2025-11-25
session sets its level with logging/setLevel on one replica and every replica behind a round-robin
proxy honours it; the 2026-07-28 era advertises no logging and sends messages only to a request that
opted in."""

from __future__ import annotations

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_helpers import messenger_env, running_messengers
from processes import worker_ids
from proxy import round_robin_proxy
from readers import text_of

from shared import keys

pytestmark = pytest.mark.filterwarnings(
    "ignore::mcp.shared.exceptions.MCPDeprecationWarning"
)  # logging, in 2026


class Logs:
    """A logging_callback: every notifications/message the client got, as (level, text)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    async def __call__(self, params) -> None:
        self.seen.append((params.level, params.data))
        assert params.logger == "mcp-queue"

    def take(self) -> list[tuple[str, str]]:
        seen, self.seen = self.seen, []
        return seen


async def ask(client: Client, message: str) -> str:
    result = await client.call_tool("send_message_to_ai", {"message": message})
    assert not result.is_error, text_of(result)
    return result.structured_content["jobId"]  # type: ignore[index]


def lifecycle(job_id: str, worker: str) -> list[tuple[str, str]]:
    return [("info", f"job {job_id} queued"), ("info", f"job {job_id} started on worker {worker}")]


async def test_legacy_level_set_on_one_replica_holds_on_every_replica(
    redis_url, redis_server, workers, tmp_path
):
    workers.start(redis_url, count=1, MOCK_TOKEN_DELAY_MS="1")
    (worker,) = worker_ids(redis_server.client())
    logs = Logs()
    with running_messengers(tmp_path) as messengers, anyio.fail_after(90):
        urls = [messengers.http(messenger_env(redis_url)).url for _ in range(2)]
        async with (
            round_robin_proxy(urls) as proxy,
            httpx2.AsyncClient(timeout=30) as http,
            Client(
                streamable_http_client(proxy.url, http_client=http), mode="legacy", logging_callback=logs
            ) as client,
        ):
            assert client.server_capabilities.logging is not None, "2025-11-25 advertises logging"
            first = await ask(client, "no level set yet")
            unset = logs.take()
            await client.set_logging_level("warning")
            quiet = [await ask(client, f"quiet call {i}") for i in range(2)]  # one on each replica
            at_warning = logs.take()
            await client.set_logging_level("debug")
            loud = await ask(client, "loud again")
            at_debug = logs.take()

    assert set(proxy.backends_of("tools/call")) == {0, 1}
    assert unset[:2] == lifecycle(first, worker) and unset[2][0] == "info"
    assert unset[2][1].startswith(f"job {first} completed: ") and len(unset) == 3, "info and above by default"
    assert len(quiet) == 2 and at_warning == [], "warning set on one replica: no info from either"
    assert at_debug[:2] == lifecycle(loud, worker) and at_debug[2][1].startswith(f"job {loud} completed")
    stored = [k for k in redis_server.client().scan_iter(keys.log_level("*"))]
    assert len(stored) == 1 and redis_server.client().get(stored[0]) == b"debug"
    assert 0 < redis_server.client().ttl(stored[0]) <= keys.LOG_LEVEL_TTL_SECONDS


async def test_2026_advertises_no_logging_and_logs_only_to_a_request_that_opted_in(
    redis_url, redis_server, workers, tmp_path
):
    workers.start(redis_url, count=1, MOCK_TOKEN_DELAY_MS="1")
    (worker,) = worker_ids(redis_server.client())
    plain, opted = Logs(), Logs()
    with running_messengers(tmp_path) as messengers, anyio.fail_after(60):
        url = messengers.http(messenger_env(redis_url)).url
        async with (
            Client(url, mode="auto", logging_callback=plain) as client,
            Client(url, mode="auto", logging_callback=opted, log_level="info") as opting,
        ):
            assert client.protocol_version == "2026-07-28"
            assert client.server_capabilities.logging is None
            with pytest.raises(MCPError):
                await client.session.set_logging_level("info")  # pyright: ignore[reportDeprecated]
            await ask(client, "no opt-in")
            job_id = await ask(opting, "opted in")
    assert plain.seen == []
    assert opted.seen[:2] == lifecycle(job_id, worker)
    assert opted.seen[-1][1].startswith(f"job {job_id} completed: ")
