"""Model names find their price (snapshots, prefixes, Bedrock ids); an unknown model is unpriced, not free."""

from __future__ import annotations

import pytest

from shared.prices import PRICES, PROVIDER_MODELS, cost, resolve


@pytest.mark.parametrize("name", sorted(PRICES))
def test_every_table_entry_resolves_to_itself(name):
    assert resolve(name) == name


@pytest.mark.parametrize(
    ("model", "entry"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-2024-05-13", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4.1-2025-04-14", "gpt-4.1"),
        ("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano"),
        ("o3-mini-2025-01-31", "o3-mini"),
        ("openai/gpt-4o", "gpt-4o"),
        ("openai/gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("GPT-4o", "gpt-4o"),
        ("  gpt-4o  ", "gpt-4o"),
        ("us.anthropic.claude-3-5-haiku-20241022-v1:0", "anthropic.claude-3-5-haiku"),
        ("anthropic.claude-3-5-haiku-20241022-v1:0", "anthropic.claude-3-5-haiku"),
        ("eu.anthropic.claude-3-haiku-20240307-v1:0", "anthropic.claude-3-haiku"),
        ("apac.anthropic.claude-3-5-sonnet-20240620-v1:0", "anthropic.claude-3-5-sonnet"),
        ("global.anthropic.claude-sonnet-4-20250514-v1:0", "anthropic.claude-sonnet-4"),
        ("anthropic.claude-3-5-sonnet-20241022-v2:0", "anthropic.claude-3-5-sonnet"),
        ("bedrock/us.anthropic.claude-3-5-haiku-20241022-v1:0", "anthropic.claude-3-5-haiku"),
    ],
)
def test_variants_resolve_to_the_base_entry(model, entry):
    assert resolve(model) == entry


@pytest.mark.parametrize(
    "model",
    ["", "llama3.1:8b", "gpt-4", "gpt-4o-audio-preview", "gpt-5", "claude-3-5-haiku", "mock-2", "mock", "4o"],
)
def test_unknown_models_resolve_to_none(model):
    assert resolve(model) is None


@pytest.mark.parametrize(
    ("model", "prompt", "completion", "usd"),
    [
        # gpt-4o: $2.50 in, $10.00 out per 1M -> 1000*2.5/1e6 + 500*10/1e6
        ("gpt-4o", 1000, 500, 0.0075),
        ("gpt-4o-2024-08-06", 1000, 500, 0.0075),
        # gpt-4o-mini: $0.15 / $0.60 -> one million of each
        ("gpt-4o-mini", 1_000_000, 1_000_000, 0.75),
        ("gpt-4o-mini-2024-07-18", 2000, 0, 0.0003),
        # Bedrock haiku 3.5: $0.80 / $4.00 -> 12,345 in + 678 out = 0.009876 + 0.002712
        ("us.anthropic.claude-3-5-haiku-20241022-v1:0", 12_345, 678, 0.012588),
        # gpt-4-turbo: $10 / $30 -> 1 in + 1 out = 0.00001 + 0.00003
        ("gpt-4-turbo", 1, 1, 0.00004),
        ("gpt-4.1-nano", 0, 0, 0.0),
        ("mock-1", 5000, 5000, 0.0),
    ],
)
def test_cost_matches_hand_computed_values(model, prompt, completion, usd):
    assert cost(model, prompt, completion) == pytest.approx(usd, abs=1e-12)


@pytest.mark.parametrize("model", ["llama3.1:8b", "my-finetune", "gpt-5"])
def test_unknown_model_cost_is_none_never_zero(model):
    assert cost(model, 1000, 1000) is None
    assert cost(model, 0, 0) is None


def test_every_listed_provider_model_has_a_price():
    for provider, models in PROVIDER_MODELS.items():
        assert models, provider
        for model in models:
            assert resolve(model) == model
            assert cost(model, 1, 1) is not None


def test_provider_model_lists_hold_their_own_family():
    assert PROVIDER_MODELS["mock"] == ["mock-1"]
    assert "gpt-4o" in PROVIDER_MODELS["openai"] and "o3-mini" in PROVIDER_MODELS["openai"]
    assert all(m.startswith("anthropic.") for m in PROVIDER_MODELS["bedrock"])
    assert not set(PROVIDER_MODELS["openai"]) & set(PROVIDER_MODELS["bedrock"])
