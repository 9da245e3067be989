"""What operators see: JSON logs one object a line (never a secret), Prometheus /metrics on the
messenger and on each worker whose numbers match the jobs run, and a traceparent header that
follows the job into another process."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_helpers import free_port, messenger_env, running_messengers
from openai_server import eventually
from prometheus_client.parser import text_string_to_metric_families
from readers import text_of

from messenger.runtime import open_runtime
from shared.models import ChatRequest
from shared.settings import load_settings

API_KEY = "sk-observability-secret"
JOB_FIELDS = {"job_id", "worker_id", "model", "outcome", "attempt", "prompt_tokens", "completion_tokens"}
JOB_FIELDS |= {"total_tokens", "cost_usd", "duration_s"}
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


def scrape(url: str, headers: dict[str, str] | None = None) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} from a Prometheus text endpoint."""
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def json_lines(log: str) -> list[dict]:
    lines = [line for line in log.splitlines() if line.strip()]
    assert lines, "the worker logged nothing"
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            pytest.fail(f"a log line is not JSON: {line!r}")
    return out


async def test_json_logs_and_worker_metrics_match_the_jobs_run_and_hold_no_secret(
    redis_url, workers, openai_server, clean_env
):
    openai_server.script(reply="Counted tokens arrive.", usage=(40, 7), expected_api_key=API_KEY)
    workers.start(
        redis_url, AI_PROVIDER="openai", OPENAI_BASE_URL=openai_server.base_url, OPENAI_API_KEY=API_KEY,
        LOG_FORMAT="json", WORKER_METRICS_PORT="0",
    )  # fmt: skip
    async with open_runtime(load_settings(redis_url=redis_url)) as runtime, asyncio.timeout(30):
        results = [
            await runtime.jobs.run(ChatRequest(message=f"job {i}", model="gpt-4o-mini")) for i in range(3)
        ]
    assert {r.status for r in results} == {"completed"}

    logs = json_lines(workers.logs())
    (ready,) = [line for line in logs if "metrics_port" in line]
    assert ready["metrics_port"] > 0, "WORKER_METRICS_PORT=0 picks a free port and logs it"
    job_lines = {line["job_id"]: line for line in logs if "job_id" in line and "outcome" in line}
    assert set(job_lines) == {r.job_id for r in results}
    for result in results:
        line = job_lines[result.job_id]
        assert JOB_FIELDS <= set(line)
        assert line["outcome"] == "completed" and line["model"] == result.model
        assert line["worker_id"] == result.worker_id
        assert line["completion_tokens"] == 7 and line["total_tokens"] == 47
        assert line["cost_usd"] == pytest.approx(result.usage.estimated_cost)
    assert API_KEY not in workers.logs()

    worker_url = f"http://127.0.0.1:{ready['metrics_port']}/metrics"
    metrics = scrape(worker_url)
    model = results[0].model
    assert metrics["mcpq_worker_jobs_total", (("outcome", "completed"),)] == len(results)
    assert metrics["mcpq_worker_tokens_total", (("kind", "completion"), ("model", model))] == sum(
        r.usage.completion_tokens for r in results
    )
    assert metrics["mcpq_worker_cost_usd_total", (("model", model),)] == pytest.approx(
        sum(r.usage.estimated_cost for r in results)
    )
    assert metrics["mcpq_worker_job_duration_seconds_count", ()] == len(results)
    assert metrics["mcpq_worker_first_token_seconds_count", ()] == len(results)
    in_flight = lambda: scrape(worker_url)["mcpq_worker_jobs_in_flight", ()] == 0  # noqa: E731
    assert await eventually(in_flight, timeout=5), "the last job leaves its slot just after 'done'"
    assert metrics["mcpq_worker_heartbeat_timestamp_seconds", ()] > 0


async def test_messenger_metrics_count_tool_calls_and_a_traceparent_header_reaches_the_worker(
    redis_server, redis_url, workers, tmp_path, monkeypatch
):
    # a client that traces by header only: once another test in this process has set an OpenTelemetry
    # SDK provider, the SDK's client would also put its own (new) trace into every request's _meta,
    # and _meta wins over the header
    monkeypatch.setattr("mcp.shared.jsonrpc_dispatcher.inject_trace_context", lambda meta: None)
    worker_port = free_port()
    workers.start(redis_url, LOG_FORMAT="json", WORKER_METRICS_PORT=str(worker_port))
    calls = 4
    with running_messengers(tmp_path) as messengers:
        server = messengers.http(messenger_env(redis_url, MCP_API_KEY="tok1", MCP_ADMIN_KEY="ops-key"))
        assert server.get("/metrics")[0] == 401, "with keys set, /metrics wants a key"
        assert server.get("/metrics", {"Authorization": "Bearer tok1"})[0] == 403, "and the operator's"
        auth = {"Authorization": "Bearer tok1", "traceparent": f"00-{TRACE_ID}-b7ad6b7169203331-01"}
        async with (
            asyncio.timeout(60),
            httpx2.AsyncClient(headers=auth, timeout=30) as http,
            Client(streamable_http_client(server.url, http_client=http)) as client,
        ):
            results = []
            for i in range(calls):
                result = await client.call_tool("send_message_to_ai", {"message": f"count me {i}"})
                assert not result.is_error, text_of(result)
                results.append(result.structured_content)
            missing = await client.call_tool("get_job", {"job_id": "0" * 32})
            assert missing.is_error
        metrics = scrape(f"{server.base_url}/metrics", {"Authorization": "Bearer ops-key"})

    requests = "mcpq_messenger_requests_total"
    assert metrics[requests, (("outcome", "ok"), ("tool", "send_message_to_ai"))] == calls
    assert metrics[requests, (("outcome", "error"), ("tool", "get_job"))] == 1
    assert metrics["mcpq_queue_depth", ()] == 0
    assert metrics["mcpq_workers_live", ()] == 1
    assert metrics["mcpq_messenger_jobs_followed", ()] == 0

    on_worker = scrape(f"http://127.0.0.1:{worker_port}/metrics")
    assert on_worker["mcpq_worker_jobs_total", (("outcome", "completed"),)] == calls
    assert sum(v for (name, _), v in on_worker.items() if name == "mcpq_worker_tokens_total") == sum(
        r["usage"]["totalTokens"] for r in results
    )
    job_lines = [line for line in json_lines(workers.logs()) if "outcome" in line]
    assert len(job_lines) == calls
    assert {line["trace_id"] for line in job_lines} == {TRACE_ID}, "the worker joined the caller's trace"
