"""What the usage tests share: a runtime on the test Redis, waiting for stored results, MCP calls."""

from __future__ import annotations

import json
from pathlib import Path

from openai_server import eventually
from processes import process_env

from messenger.runtime import open_runtime
from shared.settings import load_settings

API_KEY = "sk-test"
ROOT = Path(__file__).resolve().parents[2]


def subprocess_env(redis_url: str, **extra: str) -> dict[str, str]:
    """The root conftest's environment for a subprocess: mock provider, no developer .env."""
    return process_env(redis_url, **extra)


def runtime_for(redis_url: str, **settings):
    return open_runtime(load_settings(redis_url=redis_url, **settings))


def start_openai_workers(workers, redis_url, server, count=1, **env):
    return workers.start(
        redis_url,
        count=count,
        AI_PROVIDER="openai",
        OPENAI_BASE_URL=server.base_url,
        OPENAI_API_KEY=API_KEY,
        **env,
    )


async def stored_result(client, job_id: str, timeout: float = 30) -> dict:
    """The JobResult arq stored; the worker counts usage before it returns the result."""
    raw = await eventually(lambda: client.get(f"arq:result:{job_id}"), timeout=timeout)
    return json.loads(raw)["r"]


def worker_ids(client) -> set[str]:
    return {json.loads(client.get(key))["worker_id"] for key in client.scan_iter("mcpq:worker:*")}


def text_of(result) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


async def call(client, tool: str, **arguments) -> dict:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, text_of(result)
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(text_of(result))
