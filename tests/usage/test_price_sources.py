"""Prices come from genai-prices' kept list, with MODEL_PRICES on top and the built-in table below:
with budgets on, gpt-5, the o-series and Claude 4 are priced and admitted, and list_models says
where each price came from."""

from __future__ import annotations

import genai_prices
import pytest
from mcp import Client
from runtimes import runtime_for

from messenger.admission import Refused
from messenger.queue import ANONYMOUS
from messenger.server import build_server
from shared.models import ChatRequest

LIBRARY = f"genai-prices {genai_prices.__version__}"
NEWER = ["gpt-5", "gpt-5-mini", "o3", "o1", "claude-opus-4-1", "anthropic.claude-sonnet-4-5-20250929-v1:0",
         "us.anthropic.claude-sonnet-4-20250514-v1:0"]  # fmt: skip


async def test_with_budgets_on_newer_models_are_priced_and_admitted(redis_url, redis_server, clean_env):
    client = redis_server.client()
    async with runtime_for(redis_url, budget_daily_usd=100.0) as runtime:
        for model in NEWER:
            await runtime.queue.submit(
                ChatRequest(message="hi", model=model, max_tokens=100), caller=ANONYMOUS
            )
        with pytest.raises(Refused, match="MODEL_PRICES"):
            await runtime.queue.submit(ChatRequest(message="hi", model="llama3.1:8b"), caller=ANONYMOUS)
    held = [float(v) for v in client.hvals("mcpq:budget:reserved")]
    assert len(held) == len(NEWER) and all(v > 0 for v in held), "each newer model's worst case is reserved"


async def test_list_models_says_where_each_price_came_from(redis_url, clean_env):
    async with runtime_for(redis_url, ai_provider="openai", model_prices={"gpt-4o": (1.0, 2.0)}) as runtime:
        async with Client(build_server(runtime)) as client:
            result = await client.call_tool("list_models", {})
    rows = {row["id"]: row for row in result.structured_content["models"]}
    assert rows["gpt-5"]["price_source"] == LIBRARY and rows["gpt-5"]["input_usd_per_mtok"] == 1.25
    assert rows["o3"]["price_source"] == LIBRARY
    assert rows["gpt-4o"]["price_source"] == "MODEL_PRICES" and rows["gpt-4o"]["output_usd_per_mtok"] == 2.0
    assert all(row["price_source"] for row in rows.values()), "every listed model is priced"
