"""Model prices in USD per million tokens, and how a model name finds its price.

Dated snapshots (`gpt-4o-2024-08-06`), Bedrock ids (`us.anthropic.claude-3-5-haiku-20241022-v1:0`)
and provider prefixes resolve to the base entry. A model with no price is *unpriced* (None), never $0.
MODEL_PRICES / PRICES_FILE add or replace entries at start-up (`configure`).
"""

from __future__ import annotations

import re
from typing import NamedTuple


class Price(NamedTuple):
    input: float  # USD per 1M prompt tokens
    output: float  # USD per 1M completion tokens


PRICES: dict[str, Price] = {
    "mock-1": Price(0.0, 0.0),
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "gpt-4-turbo": Price(10.00, 30.00),
    "gpt-3.5-turbo": Price(0.50, 1.50),
    "o3-mini": Price(1.10, 4.40),
    "o4-mini": Price(1.10, 4.40),
    "anthropic.claude-3-5-haiku": Price(0.80, 4.00),
    "anthropic.claude-3-5-sonnet": Price(3.00, 15.00),
    "anthropic.claude-3-haiku": Price(0.25, 1.25),
    "anthropic.claude-sonnet-4": Price(3.00, 15.00),
}
PROVIDER_MODELS = {
    "mock": ["mock-1"],
    "openai": [m for m in PRICES if m.startswith(("gpt-", "o3", "o4"))],
    "bedrock": [m for m in PRICES if m.startswith("anthropic.")],
}

_DATE_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8})$")
_BEDROCK_VERSION = re.compile(r"-v\d+(:\d+)?$")
_BEDROCK_REGION = re.compile(r"^(us|eu|apac|global)\.")


_DEFAULTS = dict(PRICES)


def configure(overrides: dict[str, tuple[float, float]] | None) -> None:
    """Set the table to the built-in prices plus `overrides` (names are matched case-insensitively)."""
    PRICES.clear()
    PRICES.update(_DEFAULTS)
    for name, (inp, out) in (overrides or {}).items():
        PRICES[name.strip().lower()] = Price(float(inp), float(out))


def price(model: str) -> Price | None:
    key = resolve(model)
    return PRICES[key] if key else None


def resolve(model: str) -> str | None:
    """The price-table name for `model`, or None if it has no known price."""
    name = model.strip().lower()
    for candidate in _candidates(name):
        if candidate in PRICES:
            return candidate
    return None


def _candidates(name: str):
    yield name
    name = name.split("/")[-1]  # "openai/gpt-4o" style prefixes
    yield name
    name = _BEDROCK_REGION.sub("", name)
    name = _BEDROCK_VERSION.sub("", name)
    yield name
    yield _DATE_SUFFIX.sub("", name)


def cost(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """USD for one call, or None when the model is unpriced."""
    p = price(model)
    if p is None:
        return None
    return round((prompt_tokens * p.input + completion_tokens * p.output) / 1_000_000, 8)
