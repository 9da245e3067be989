"""MODEL_FALLBACKS and PROVIDERS end to end: `worker` processes calling tests/openai_server.py over
HTTP with the real `openai` SDK, a model there that always answers HTTP 500, and callers reading the
results through the messenger (in-process runtime, and an MCP client over HTTP)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

from mcp import Client
from mcp_helpers import messenger_env, running_messengers
from processes import OPENAI_TEST_KEY, ROOT, process_env, start_openai_workers
from runtimes import runtime_for

from shared import keys
from shared.models import ChatRequest
from worker.providers.mock import mock_reply

JOBS = 12


async def test_every_job_of_a_broken_model_completes_on_its_fallback_labelled(
    redis_url, redis_server, workers, openai_server, clean_env
):
    openai_server.script(reply="the spare answers", broken_models=("broken-model",))
    start_openai_workers(
        workers, redis_url, openai_server, count=2, RETRY_ATTEMPTS="1",
        MODEL_FALLBACKS=json.dumps({"broken-model": ["test-model"]}),
    )  # fmt: skip
    async with runtime_for(redis_url) as runtime, asyncio.timeout(120):
        results = await asyncio.gather(
            *(runtime.jobs.run(ChatRequest(message=f"q {i}", model="broken-model")) for i in range(JOBS))
        )
        for result in results:
            assert result.status == "completed", result.error
            assert (result.model, result.fallback_from) == ("test-model", "broken-model")
            assert result.ai_response == "the spare answers"
            got = await runtime.jobs.get(result.job_id)
            assert (got.model, got.fallback_from, got.ai_response) == (
                "test-model",
                "broken-model",
                result.ai_response,
            )
    asked = [r.body["model"] for r in openai_server.chat_requests]
    assert asked.count("test-model") == JOBS and asked.count("broken-model") >= JOBS  # (the SDK retried 500s)
    client = redis_server.client()
    assert client.hget(keys.usage_model("test-model"), "requests") == str(JOBS).encode()
    assert client.hget(keys.usage_model("test-model"), "completion_tokens") == str(3 * JOBS).encode()
    assert not client.exists(keys.usage_model("broken-model"))  # a 500 returned no tokens: nothing to count


async def test_a_fallback_crosses_providers_by_prefix_and_providers_table(
    redis_url, redis_server, workers, openai_server, tmp_path, clean_env
):
    """openai-compatible -> a PROVIDERS entry (the same server under another name) -> the mock."""
    openai_server.script(broken_models=("broken-model", "also-broken"))
    providers = {"spare": {"kind": "openai", "base_url": openai_server.base_url, "api_key_env": "SPARE_KEY"}}
    env = {
        "RETRY_ATTEMPTS": "1", "PROVIDERS": json.dumps(providers), "SPARE_KEY": OPENAI_TEST_KEY,
        "MODEL_FALLBACKS": json.dumps({"broken-model": ["spare/also-broken", "mock/mock-1"], "good": ["mock/mock-1"]}),
    }  # fmt: skip
    start_openai_workers(workers, redis_url, openai_server, count=1, **env)
    with running_messengers(tmp_path) as messengers:
        url = messengers.http(messenger_env(redis_url)).url
        async with Client(url) as client, asyncio.timeout(60):
            answer = await client.call_tool(
                "send_message_to_ai", {"message": "hello there", "model": "broken-model"}
            )
            out = answer.structured_content
            assert out is not None and out["status"] == "completed", out
            assert (out["model"], out["fallbackFrom"]) == ("mock/mock-1", "broken-model")
            assert out["aiResponse"] == "".join(mock_reply([{"role": "user", "content": "hello there"}]))
            got = (await client.call_tool("get_job", {"job_id": out["jobId"]})).structured_content
            assert got is not None and (got["model"], got["fallbackFrom"]) == ("mock/mock-1", "broken-model")
            plain = (
                await client.call_tool("send_message_to_ai", {"message": "hi", "model": "good"})
            ).structured_content
            assert plain is not None and (plain["model"], plain["fallbackFrom"]) == (
                "good",
                None,
            )  # no fallback needed
    asked = [(r.body["model"], r.api_key) for r in openai_server.chat_requests]
    assert ("also-broken", OPENAI_TEST_KEY) in asked  # the PROVIDERS entry was tried, with its own key
    assert redis_server.client().hget(keys.usage_model("mock/mock-1"), "requests") == b"1"


def test_a_fallback_the_worker_cannot_call_stops_its_start_in_one_line(redis_url, tmp_path):
    """`openai/…` with no OPENAI_API_KEY: the worker refuses to start, not a job an hour later."""
    log = tmp_path / "worker.log"
    env = process_env(redis_url, MODEL_FALLBACKS=json.dumps({"mock-1": ["openai/gpt-4o"]}))
    proc = subprocess.Popen([sys.executable, "-m", "worker.cli"], env=env, cwd=ROOT,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # fmt: skip
    assert proc.wait(60) != 0
    out = log.read_text()
    lines = [line for line in out.splitlines() if line.startswith("worker: ")]
    assert len(lines) == 1 and "OPENAI_API_KEY" in lines[0], out
    assert "Traceback" not in out
