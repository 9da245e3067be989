"""A fallback that fails for good (a PROVIDERS entry with a wrong key, or one that cannot be reached)
says which model and which setting to fix: not the default provider's OPENAI_API_KEY, and not the
first model's name. Real openai SDK over HTTP to tests/openai_server.py."""

from __future__ import annotations

import pytest
from processes import OPENAI_TEST_KEY
from test_fallbacks import chat_job
from test_job import make_ctx

from worker.providers import make_providers

pytestmark = pytest.mark.anyio


@pytest.fixture
async def providers_ctx(redis, openai_server, monkeypatch, clean_env):
    openai_server.script(broken_models=("broken", "gone"), expected_api_key=OPENAI_TEST_KEY)
    monkeypatch.setenv("WK", "sk-wrong-secret-123")
    providers = {
        "srv": {"kind": "openai", "base_url": openai_server.base_url, "api_key": OPENAI_TEST_KEY},
        "wk": {"kind": "openai", "base_url": openai_server.base_url, "api_key_env": "WK"},
        "down": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-down"},
    }
    fallbacks = {"srv/broken": ["wk/x", "mock/mock-1"], "srv/gone": ["down/y"]}
    ctx = make_ctx(redis, retry_attempts=1, providers=providers, model_fallbacks=fallbacks)
    ctx["mcpq"].provider = make_providers(ctx["mcpq"].settings)
    yield ctx
    await ctx["mcpq"].provider.aclose()


async def test_a_fallback_with_a_wrong_key_names_itself_and_its_providers_entry(providers_ctx):
    out = await chat_job(providers_ctx, "srv/broken")
    assert out["status"] == "failed"
    error = out["error"]
    assert error.startswith("fallback model 'wk/x' (after 'srv/broken' failed: HTTP 500): "), error
    assert "PROVIDERS 'wk'" in error and "WK" in error and "OPENAI_API_KEY" not in error, error
    assert "sk-wrong" not in error


async def test_an_unreachable_providers_entry_names_its_entry_not_openai_base_url(providers_ctx):
    out = await chat_job(providers_ctx, "srv/gone")
    assert out["status"] == "failed"
    assert (
        "down/y: cannot connect to the provider at http://127.0.0.1:9/v1; check PROVIDERS 'down'"
        in out["error"]
    ), out["error"]
    assert "OPENAI_BASE_URL" not in out["error"]
