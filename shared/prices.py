"""Model prices in USD per million tokens, where each came from, and how a model name finds its price.

Three sources, first match wins: MODEL_PRICES / PRICES_FILE (`configure`), then the kept price list
of the `genai-prices` package (bundled data, read offline, never fetched), then the small built-in
table below. Dated snapshots (`gpt-4o-2024-08-06`), Bedrock ids
(`us.anthropic.claude-3-5-haiku-20241022-v1:0`) and provider prefixes (`openai/…`) find their base
entry. A model with no price is *unpriced* (None), never $0; a local model tagged the Ollama way
(`llama3.1:8b`) is never given a cloud provider's price by name.

genai-prices takes about a second to load, so it is loaded on the first lookup that needs it (the
mock's models never do), or ahead of time by `warm()` in a server or worker.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from datetime import UTC, date, datetime
from typing import Any, NamedTuple

log = logging.getLogger("shared.prices")


class Price(NamedTuple):
    input: float  # USD per 1M prompt tokens
    output: float  # USD per 1M completion tokens


class Priced(NamedTuple):
    price: Price
    source: str  # OVERRIDE, "genai-prices <version>" or BUILT_IN


OVERRIDE = "MODEL_PRICES"
BUILT_IN = "built-in"

PRICES: dict[str, Price] = {  # the fallback when genai-prices does not know a model
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
PROVIDER_MODELS = {  # what list_models shows for a provider's own API, besides the default
    "mock": ["mock-1"],
    "openai": [
        "gpt-5", "gpt-5-mini", "gpt-5-nano", "o3", "o1",
        *(m for m in PRICES if m.startswith(("gpt-", "o3", "o4"))),
    ],
    "bedrock": [
        "anthropic.claude-sonnet-4-5-20250929-v1:0", "anthropic.claude-opus-4-1-20250805-v1:0",
        *(m for m in PRICES if m.startswith("anthropic.")),
    ],
}  # fmt: skip

_DATE_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8})$")
_BEDROCK_VERSION = re.compile(r"-v\d+(:\d+)?$")
_BEDROCK_REGION = re.compile(r"^(us|eu|apac|global)\.")
_BEDROCK_ID = re.compile(r"^[a-z][a-z0-9-]*\.[a-z]")  # vendor.model (anthropic.claude-…, us.amazon.nova-…)
_OURS = ("mock",)  # the mock provider's models: built-in only, no library load

_overrides: dict[str, Price] = {}
_loading = threading.Lock()


def configure(overrides: dict[str, tuple[float, float]] | None) -> None:
    """Set the MODEL_PRICES entries (names are matched case-insensitively); each call replaces all."""
    _overrides.clear()
    for name, (inp, out) in (overrides or {}).items():
        _overrides[name.strip().lower()] = Price(float(inp), float(out))


def lookup(model: str) -> Priced | None:
    """The price of `model` and its source, or None if no source knows it."""
    names, unprefixed = _names(model)
    for name in names:
        if name in _overrides:
            return Priced(_overrides[name], OVERRIDE)
    # (a price the list dates, a change announced ahead, applies that day)
    if not unprefixed.startswith(_OURS) and (found := _from_library(unprefixed, datetime.now(UTC).date())):
        return found
    for name in names:
        if name in PRICES:
            return Priced(PRICES[name], BUILT_IN)
    return None


def price(model: str) -> Price | None:
    found = lookup(model)
    return found.price if found else None


def source(model: str) -> str | None:
    """Where `model`'s price comes from: "MODEL_PRICES", "genai-prices <version>", "built-in", or None."""
    found = lookup(model)
    return found.source if found else None


def cost(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """USD for one call, or None when the model is unpriced."""
    p = price(model)
    if p is None:
        return None
    return round((prompt_tokens * p.input + completion_tokens * p.output) / 1_000_000, 8)


WARM_AFTER_SECONDS = 1.0  # past a process's start-up, which the load would slow (one GIL)


def warm(default_model: str) -> None:
    """Load genai-prices in the background soon after start-up, so the first priced request does
    not wait for it; not for the mock's default model (its tests start many processes that never
    need it)."""
    if not default_model.strip().lower().startswith(_OURS):
        timer = threading.Timer(WARM_AFTER_SECONDS, _library)
        timer.daemon = True
        timer.start()


@functools.lru_cache(maxsize=4096)  # bounded: model names come from callers
def _names(model: str) -> tuple[tuple[str, ...], str]:
    """The names `model` is looked up by, first match wins, and its name without a provider prefix;
    made once a model (a job's ending looks its price up twice: its cost, then where the price came from)."""
    names = tuple(dict.fromkeys(_candidates(model.strip().lower())))
    return names, names[0].split("/")[-1]


def _candidates(name: str):
    yield name
    name = name.split("/")[-1]  # "openai/gpt-4o" style prefixes
    yield name
    name = _BEDROCK_REGION.sub("", name)
    name = _BEDROCK_VERSION.sub("", name)
    yield name
    yield _DATE_SUFFIX.sub("", name)


@functools.lru_cache(maxsize=4096)  # bounded: model names come from callers
def _from_library(name: str, day: date) -> Priced | None:
    """genai-prices' price for `name` on `day`: a Bedrock id from its AWS list, another name from
    the provider whose names it matches; a tiered price at its base tier."""
    library = _library()
    bedrock = bool(_BEDROCK_ID.match(name))
    if library is None or (":" in name and not bedrock):
        return None
    version, providers = library
    try:
        provider = next(
            (
                p
                for p in providers
                if (p.id == "aws" if bedrock else p.model_match and p.model_match.is_match(name))
            ),
            None,
        )
        model = provider.find_model(name, all_providers=providers) if provider else None
        if model is None:
            return None
        prices: Any = model.get_prices(datetime(day.year, day.month, day.day, 12, tzinfo=UTC))
        inp, out = (getattr(v, "base", v) for v in (prices.input_mtok, prices.output_mtok))
        if inp is None:
            return None  # not priced by the token (an image or audio model)
        return Priced(Price(float(inp), float(out or 0)), version)
    except Exception as e:  # a data shape this code does not know: the built-in table still answers
        log.warning("genai-prices could not price %s: %s", name[:80], type(e).__name__)
        return None


@functools.cache
def _library() -> tuple[str, list] | None:
    """(its source name, its providers), or None where the package is missing or broken."""
    with _loading:
        try:
            import genai_prices
            from genai_prices import data_snapshot

            return f"genai-prices {genai_prices.__version__}", data_snapshot.get_snapshot().providers
        except Exception as e:
            log.warning("genai-prices is not usable (%s); prices come from the built-in table", e)
            return None
