"""MODEL_FALLBACKS inside one `chat` job: which failures move to the next model, and which do not."""

from __future__ import annotations

import json

import pytest
from readers import job_events
from test_job import JOB, make_ctx

from shared import keys
from shared.settings import SettingsError, load_settings
from worker.fallbacks import chain
from worker.providers import ModelCall, Provider, ProviderError, Providers, StreamEnd, make_providers
from worker.providers.mock import mock_reply

pytestmark = pytest.mark.anyio

DOWN = ProviderError("the provider failed (HTTP 503).", retryable=True, status=503)


class PerModel(Provider):
    """Fails each model named in `failures` (after streaming `before` pieces); others answer 'ok <model>'."""

    name = "per-model"

    def __init__(self, failures: dict[str, ProviderError], before: list[str] | None = None):
        self.failures, self.before, self.asked = failures, before or [], []

    async def stream(self, call: ModelCall):
        self.asked.append(call.model)
        if call.model in self.failures:
            for piece in self.before:
                yield piece
            raise self.failures[call.model]
        yield f"ok {call.model}"
        yield StreamEnd(model=call.model, finish_reason="stop")


FALLBACKS = {"big": ["middle", "small"], "*": ["small"]}


def test_the_chain_is_the_model_then_its_entry_or_the_star_entry():
    settings = load_settings(redis_url="memory://", model_fallbacks=FALLBACKS)
    assert chain(settings, "big") == ["big", "middle", "small"]
    assert chain(settings, "other") == ["other", "small"]
    assert chain(settings, "small") == ["small"]  # itself once


async def test_a_retryable_failure_moves_on_and_the_result_says_from_what(redis, clean_env):
    provider = PerModel({"big": DOWN, "middle": ProviderError("HTTP 429", retryable=True, status=429)})
    ctx = make_ctx(redis, provider, model_fallbacks=FALLBACKS)
    out = await chat_job(ctx, "big")
    assert out["status"] == "completed", out["error"]
    assert (out["model"], out["fallbackFrom"], out["aiResponse"]) == ("small", "big", "ok small")
    assert provider.asked == ["big", "middle", "small"]
    done = (await job_events(redis, JOB))[-1]
    assert (done.type, done.model, done.fallback_from) == ("done", "small", "big")
    counted = await redis.hgetall(keys.usage_model("small"))
    assert counted[b"requests"] == b"1" and not await redis.exists(keys.usage_model("big"))
    metrics = ctx["mcpq"].metrics.registry
    assert (
        metrics.get_sample_value("mcpq_worker_fallbacks_total", {"from_model": "big", "model": "small"}) == 1
    )


async def test_a_model_that_streamed_text_is_not_replaced(redis, clean_env):
    provider = PerModel({"big": DOWN}, before=["half an "])
    out = await chat_job(make_ctx(redis, provider, model_fallbacks=FALLBACKS), "big")
    assert (out["status"], out["aiResponse"], out["fallbackFrom"]) == ("failed", "half an ", None)
    assert provider.asked == ["big"]


async def test_a_refusal_is_not_retried_elsewhere(redis, clean_env):
    provider = PerModel({"big": ProviderError("the provider refused the request (HTTP 400).", status=400)})
    out = await chat_job(make_ctx(redis, provider, model_fallbacks=FALLBACKS), "big")
    assert out["status"] == "failed" and out["error"].startswith("the provider refused")
    assert provider.asked == ["big"]


async def test_when_every_model_fails_the_error_names_each(redis, clean_env):
    provider = PerModel({"big": DOWN, "middle": DOWN, "small": DOWN})
    out = await chat_job(make_ctx(redis, provider, model_fallbacks=FALLBACKS), "big")
    assert out["status"] == "failed"
    assert out["error"].startswith("every model of the fallback chain failed: big: ")
    assert "middle: " in out["error"] and "small: " in out["error"]


async def test_a_prefix_routes_to_another_provider_and_stays_in_the_name(redis, clean_env):
    settings = load_settings(
        redis_url="memory://", ai_provider="mock", mock_token_delay_ms=0,
        providers={"spare": {"kind": "mock"}}, model_fallbacks={"nope": ["spare/mock-1"]},
    )  # fmt: skip
    providers = make_providers(settings)
    assert providers.route("spare/mock-1") == ("spare", "mock-1")
    assert providers.route("mock/mock-1") == (None, "mock/mock-1")  # the default's own kind: a name
    assert providers.route("openai/gpt-4o") == ("openai", "gpt-4o")
    assert providers.route("meta-llama/Llama-3") == (None, "meta-llama/Llama-3")
    ctx = make_ctx(
        redis, providers, providers={"spare": {"kind": "mock"}}, model_fallbacks={"nope": ["spare/mock-1"]}
    )
    out = await chat_job(ctx, "nope")  # the mock refuses an unknown model: not retryable, no fallback
    assert out["status"] == "failed"
    out = await chat_job(ctx, "spare/mock-1", job_id="job-2")
    assert out["status"] == "completed" and out["model"] == "spare/mock-1"
    assert out["aiResponse"] == "".join(mock_reply([{"role": "user", "content": "hi"}]))
    await providers.aclose()


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"MODEL_FALLBACKS": "[1]"}, "MODEL_FALLBACKS: must be JSON like"),
        ({"MODEL_FALLBACKS": json.dumps({"a": ["bad name!"]})}, "is not a model name"),
        ({"PROVIDERS": json.dumps({"x": {"kind": "vertex"}})}, "PROVIDERS: x.kind:"),
        ({"PROVIDERS": json.dumps({"x": {"kind": "openai", "api_key": "sk-secret-1"}, "y": {"kind": "openai"}})},
         "'y' (openai) needs base_url"),
    ],
)  # fmt: skip
def test_bad_settings_are_one_line_without_secrets(monkeypatch, clean_env, env, says):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings(redis_url="memory://")
    assert (
        says in str(caught.value) and "\n" not in str(caught.value) and "sk-secret" not in str(caught.value)
    )


async def chat_job(ctx: dict, model: str, job_id: str = JOB) -> dict:
    from worker.job import chat

    return await chat({**ctx, "job_id": job_id}, {"message": "hi", "model": model})


assert Providers  # the router is public: the worker's provider is one
