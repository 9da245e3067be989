"""configure_ai_model stores defaults in Redis; a running worker uses them from its next job on."""

from __future__ import annotations

import anyio
from mcp import Client
from processes import start_openai_workers
from readers import text_of
from runtimes import runtime_for
from usage_helpers import call

from messenger.server import build_server
from shared.models import ChatRequest

DEFAULTS_KEY = "mcpq:config:model-defaults"


async def test_configure_ai_model_reaches_a_running_worker_without_restart(
    redis_url, workers, openai_server, clean_env, redis_server
):
    (proc,) = start_openai_workers(workers, redis_url, openai_server)
    client = redis_server.client()

    def last_sent() -> tuple:
        body = openai_server.chat_requests[-1].body
        return body["model"], body["temperature"], body["max_tokens"]

    async with runtime_for(redis_url) as runtime:
        with anyio.fail_after(60):
            async with Client(build_server(runtime)) as mcp:
                before = await runtime.jobs.run(ChatRequest(message="before"), timeout=30)
                sent_before = last_sent()

                configured = await call(
                    mcp, "configure_ai_model", default_model="gpt-4o", temperature=0.3, max_tokens=77
                )
                after = await runtime.jobs.run(ChatRequest(message="after"), timeout=30)
                sent_after = last_sent()
                stored = client.get(DEFAULTS_KEY)

                refusals = {
                    field: await mcp.call_tool("configure_ai_model", {field: value})
                    for field, value in (
                        ("temperature", 5),
                        ("max_tokens", 0),
                        ("default_model", "bad name!"),
                    )
                }
                unchanged = client.get(DEFAULTS_KEY)
                still = await runtime.jobs.run(ChatRequest(message="still"), timeout=30)
                sent_still = last_sent()

                partial = await call(mcp, "configure_ai_model", temperature=1.1)
                explicit = await runtime.jobs.run(
                    ChatRequest(message="mine", model="gpt-4o-mini", temperature=0.0, max_tokens=9),
                    timeout=30,
                )
                sent_explicit = last_sent()
                partly = await runtime.jobs.run(ChatRequest(message="partly"), timeout=30)
                sent_partly = last_sent()

    assert proc.poll() is None, "the same worker process ran every job"
    assert before.worker_id == after.worker_id == still.worker_id == partly.worker_id
    assert sent_before == ("gpt-4o-mini", 0.7, 1024)  # the settings' defaults
    assert configured["stored"] == {"default_model": "gpt-4o", "temperature": 0.3, "max_tokens": 77}
    assert configured["effective"] == {"default_model": "gpt-4o", "temperature": 0.3, "max_tokens": 77}
    assert sent_after == ("gpt-4o", 0.3, 77)
    assert after.model == "gpt-4o" and after.status == "completed"

    for field, result in refusals.items():
        assert result.is_error, field
        assert field in text_of(result)
    assert "less than or equal to 2" in text_of(refusals["temperature"])
    assert "greater than or equal to 1" in text_of(refusals["max_tokens"])
    assert "letters, digits" in text_of(refusals["default_model"])
    assert unchanged == stored, "a refused change stores nothing"
    assert sent_still == ("gpt-4o", 0.3, 77)

    assert partial["stored"] == {"default_model": "gpt-4o", "temperature": 1.1, "max_tokens": 77}
    assert sent_explicit == ("gpt-4o-mini", 0.0, 9), "a request's own values win over the defaults"
    assert explicit.status == "completed" and explicit.model == "gpt-4o-mini"
    assert sent_partly == ("gpt-4o", 1.1, 77)
