"""Model names find their price and its source: MODEL_PRICES on top, then genai-prices' kept list,
then the built-in table (snapshots, prefixes, Bedrock ids); an unknown model is unpriced, not free."""

from __future__ import annotations

import subprocess
import sys

import genai_prices
import pytest
from processes import ROOT

from shared import prices
from shared.prices import BUILT_IN, PRICES, PROVIDER_MODELS, Price, cost, lookup, source

LIBRARY = f"genai-prices {genai_prices.__version__}"


@pytest.fixture(autouse=True)
def no_overrides():
    prices.configure(None)
    yield
    prices.configure(None)


@pytest.mark.parametrize(
    ("model", "usd_in", "usd_out"),
    [  # the models the built-in table never knew: gpt-5, the o-series, Claude 4 (direct and on Bedrock)
        ("gpt-5", 1.25, 10.0),
        ("gpt-5-mini", 0.25, 2.0),
        ("o3", 2.0, 8.0),
        ("o1", 15.0, 60.0),
        ("openai/gpt-5", 1.25, 10.0),
        ("claude-opus-4-1", 15.0, 75.0),
        ("anthropic.claude-sonnet-4-20250514-v1:0", 3.0, 15.0),
        ("us.anthropic.claude-3-5-haiku-20241022-v1:0", 0.8, 4.0),
        ("bedrock/anthropic.claude-opus-4-1-20250805-v1:0", 15.0, 75.0),
    ],
)
def test_newer_models_are_priced_by_genai_prices(model, usd_in, usd_out):
    assert lookup(model) == (Price(usd_in, usd_out), LIBRARY)


@pytest.mark.parametrize("name", ["mock-1", "anthropic.claude-3-5-haiku", "anthropic.claude-sonnet-4"])
def test_the_built_in_table_answers_what_genai_prices_does_not_know(name):
    assert lookup(name) == (PRICES[name], BUILT_IN)


@pytest.mark.parametrize(
    ("model", "entry"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano"),
        ("o3-mini-2025-01-31", "o3-mini"),
        ("openai/gpt-4o", "gpt-4o"),
        ("GPT-4o", "gpt-4o"),
        ("  gpt-4o  ", "gpt-4o"),
        ("eu.anthropic.claude-3-haiku-20240307-v1:0", "anthropic.claude-3-haiku"),
        ("global.anthropic.claude-sonnet-4-20250514-v1:0", "anthropic.claude-sonnet-4"),
        ("anthropic.claude-3-5-sonnet-20241022-v2:0", "anthropic.claude-3-5-sonnet"),
    ],
)
def test_variants_cost_what_their_base_entry_costs(model, entry):
    assert prices.price(model) == PRICES[entry]


def test_the_built_in_table_is_the_fallback_without_genai_prices(monkeypatch):
    monkeypatch.setattr(prices, "_library", lambda: None)
    prices._from_library.cache_clear()
    try:
        assert lookup("gpt-4o-2024-08-06") == (PRICES["gpt-4o"], BUILT_IN)
        assert lookup("gpt-5") is None
    finally:
        prices._from_library.cache_clear()


@pytest.mark.parametrize(
    "model",
    ["", "llama3.1:8b", "deepseek-r1:7b", "claude-3-5-haiku:latest", "mock-2", "mock", "4o", "my-finetune"],
)
def test_unknown_and_local_models_are_unpriced_never_free(model):
    assert lookup(model) is None and source(model) is None
    assert cost(model, 1000, 1000) is None and cost(model, 0, 0) is None


@pytest.mark.parametrize(
    ("model", "prompt", "completion", "usd"),
    [
        ("gpt-4o", 1000, 500, 0.0075),  # $2.50 in, $10.00 out per 1M
        ("gpt-4o-mini", 1_000_000, 1_000_000, 0.75),
        ("us.anthropic.claude-3-5-haiku-20241022-v1:0", 12_345, 678, 0.012588),  # $0.80 / $4.00
        ("gpt-5", 2000, 1000, 0.0125),  # $1.25 / $10
        ("mock-1", 5000, 5000, 0.0),
    ],
)
def test_cost_matches_hand_computed_values(model, prompt, completion, usd):
    assert cost(model, prompt, completion) == pytest.approx(usd, abs=1e-12)


def test_every_listed_provider_model_has_a_price():
    for provider, models in PROVIDER_MODELS.items():
        assert models, provider
        assert all(cost(model, 1, 1) is not None for model in models), provider
    assert {"gpt-5", "o3", "o4-mini"} <= set(PROVIDER_MODELS["openai"])
    assert all(m.startswith("anthropic.") for m in PROVIDER_MODELS["bedrock"])


def test_the_mock_and_a_cli_never_load_genai_prices():
    """It takes about a second to load; the mock's models and a plain import must not pay for it."""
    code = "import sys; from shared import prices; prices.cost('mock-1', 1, 1); print('genai_prices' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr
