"""MODEL_PRICES and PRICES_FILE add or replace price-table entries; a bad one stops start-up by name.

(Aliases, snapshots and unknown models with the built-in table: tests/shared/test_prices.py.)
"""

from __future__ import annotations

import json

import pytest

from shared import prices
from shared.prices import Price
from shared.settings import SettingsError, load_settings


def test_configure_adds_and_replaces_entries_and_none_restores_the_other_sources():
    before = {m: prices.lookup(m) for m in ("gpt-4o", "gpt-4o-mini", "mock-1")}
    prices.configure({"My-Finetune": (1.0, 3.0), "gpt-4o": (5.0, 20.0)})
    assert prices.price("my-finetune") == Price(1.0, 3.0)  # names match case-insensitively
    assert prices.cost("MY-FINETUNE", 1_000_000, 1_000_000) == pytest.approx(4.0)
    assert prices.lookup("gpt-4o") == (Price(5.0, 20.0), "MODEL_PRICES"), "on top of genai-prices"
    assert prices.price("gpt-4o-2024-08-06") == Price(5.0, 20.0), "snapshots follow the replaced entry"
    assert prices.lookup("gpt-4o-mini") == before["gpt-4o-mini"], "other entries stay"

    prices.configure({"other": (0.5, 0.5)})  # each configure replaces every MODEL_PRICES entry
    assert prices.price("my-finetune") is None
    assert prices.lookup("gpt-4o") == before["gpt-4o"]

    prices.configure(None)
    assert {m: prices.lookup(m) for m in before} == before
    assert prices.cost("my-finetune", 10, 10) is None


def test_model_prices_comes_from_the_environment(clean_env):
    clean_env.setenv("MODEL_PRICES", json.dumps({"llama3.1:8b": [0.1, 0.2]}))
    assert load_settings().model_prices == {"llama3.1:8b": (0.1, 0.2)}
    clean_env.setenv("MODEL_PRICES", "not json")
    with pytest.raises(SettingsError, match="MODEL_PRICES"):
        load_settings()
    clean_env.setenv("MODEL_PRICES", json.dumps({"x": [1]}))
    with pytest.raises(SettingsError, match="MODEL_PRICES"):
        load_settings()


def test_prices_file_is_read_and_model_prices_wins(clean_env, tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"house-model": [1, 2], "gpt-4o": [3, 4]}))
    clean_env.setenv("PRICES_FILE", str(path))
    assert load_settings().model_prices == {"house-model": (1.0, 2.0), "gpt-4o": (3.0, 4.0)}
    clean_env.setenv("MODEL_PRICES", json.dumps({"gpt-4o": [9, 9]}))
    settings = load_settings()
    assert settings.model_prices == {"house-model": (1.0, 2.0), "gpt-4o": (9.0, 9.0)}
    prices.configure(settings.model_prices)
    assert prices.price("house-model") == Price(1.0, 2.0)
    assert prices.price("gpt-4o-2024-08-06") == Price(9.0, 9.0)


@pytest.mark.parametrize(
    "content",
    [
        None,
        "{not json",
        json.dumps(["gpt-4o", 1, 2]),
        json.dumps({"gpt-4o": [1]}),
        json.dumps({"m": "cheap"}),
    ],
    ids=["missing", "not-json", "a-list", "one-price", "not-numbers"],
)
def test_a_bad_prices_file_is_a_settings_error_naming_it(clean_env, tmp_path, content):
    path = tmp_path / "prices.json"
    if content is not None:
        path.write_text(content)
    clean_env.setenv("PRICES_FILE", str(path))
    with pytest.raises(SettingsError, match="PRICES_FILE") as raised:
        load_settings()
    assert "\n" not in str(raised.value)
