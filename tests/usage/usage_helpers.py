"""What the usage tests share: a runtime on the test Redis, waiting for stored results, MCP calls."""

from __future__ import annotations

import json
from pathlib import Path

from openai_server import eventually
from processes import OPENAI_TEST_KEY, process_env
from readers import text_of

API_KEY = OPENAI_TEST_KEY
ROOT = Path(__file__).resolve().parents[2]


def subprocess_env(redis_url: str, **extra: str) -> dict[str, str]:
    """The root conftest's environment for a subprocess: mock provider, no developer .env."""
    return process_env(redis_url, **extra)


async def stored_result(client, job_id: str, timeout: float = 30) -> dict:
    """The JobResult arq stored; the worker counts usage before it returns the result."""
    raw = await eventually(lambda: client.get(f"arq:result:{job_id}"), timeout=timeout)
    return json.loads(raw)["r"]


async def call(client, tool: str, **arguments) -> dict:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, text_of(result)
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(text_of(result))
