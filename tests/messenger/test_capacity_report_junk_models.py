"""With a "*" MODEL_LIMITS entry every model name a caller sends lands in mcpq:capacity:models. A
tenant sending fifty made-up names that sort first must not push the configured models (and the
ones jobs wait for) out of check_health's capacity report and /metrics."""

from __future__ import annotations

from messenger.health import CAPACITY_MODELS_SHOWN, capacity
from shared import keys
from shared.connection import connect
from shared.settings import load_settings


async def test_configured_and_waited_for_models_are_shown_before_names_callers_made_up(redis_url):
    redis = connect(redis_url)
    try:
        await redis.sadd(
            keys.CAPACITY_MODELS, *(f"0-made-up-{i:03}" for i in range(CAPACITY_MODELS_SHOWN + 10))
        )
        await redis.sadd(keys.CAPACITY_MODELS, "gpt-4o-mini")
        settings = load_settings(
            redis_url=redis_url, model_limits={"gpt-4o": {"rpm": 500}, "*": {"concurrency": 4}}
        )
        report = await capacity(redis, settings, [{"capacity_waiting": {"llama-3": 2}}])
    finally:
        await redis.aclose()
    assert len(report) == CAPACITY_MODELS_SHOWN
    assert report["gpt-4o"]["limits"]["rpm"] == 500
    assert report["llama-3"]["waiting"] == 2
