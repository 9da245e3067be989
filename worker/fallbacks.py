"""MODEL_FALLBACKS: when a model fails in a way another model may not (HTTP 429 past what waiting
allows, 5xx, a timeout, no connection), the job goes on with the next model of its chain.

The chain of a model is itself, then its MODEL_FALLBACKS entry (or the "*" entry), not followed any
further. Only the job's first model turn falls back, and only while that turn has streamed nothing:
  - a model that already streamed text is not replaced (the caller holds its words; a second answer
    spliced after them would be neither), the job fails as it did before;
  - a later turn (after tool calls) stays on the model that began the job, so the job's usage and
    cost belong to one model, the one that answered, and are counted under it.
A failed try costs nothing to count (no token came back). The result's `model` is the model that
answered and `fallbackFrom` the one first asked.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace

from shared.errors import McpQueueError
from shared.settings import ALL_TENANTS, Settings
from worker.providers import ModelCall, ProviderError, StreamEnd

log = logging.getLogger("worker.fallbacks")

Turn = Callable[[ModelCall, bool], Awaitable[StreamEnd | None]]  # (the call, whether a model comes after)


def chain(settings: Settings, model: str) -> list[str]:
    """The models a job asking for `model` may run on, in order."""
    more = settings.model_fallbacks.get(model)
    if more is None:
        more = settings.model_fallbacks.get(ALL_TENANTS, [])
    return list(dict.fromkeys([model, *more]))


def replaceable(e: McpQueueError) -> bool:
    """A failure another model may not have: rate limited past the wait, the provider down or slow.
    (worker/capacity.py's RateLimited, when present, is a retryable ProviderError or says so.)"""
    return bool(getattr(e, "retryable", False))


async def first_turn(
    settings: Settings, job_id: str, call: ModelCall, streamed: list[str], turn: Turn
) -> tuple[StreamEnd | None, ModelCall, str | None]:
    """Run the job's first model turn down the chain; answers how it ended, the call as it ran (its
    model is the one the later turns use) and the model first asked when another one answered.
    `streamed`: the text the turn has yielded so far; `turn` is told whether a model comes after
    the one it runs (a fallback: it waits less for its model's limits)."""
    models = chain(settings, call.model)
    failures: list[str] = []
    first_failed = ""
    for i, model in enumerate(models):
        this = call if model == call.model else replace(call, model=model)  # (frozen: the same call)
        try:
            end = await turn(this, i + 1 < len(models))
        except McpQueueError as e:
            if i and not replaceable(e):  # a fallback failed for good: say which, and after what
                e.message = f"fallback model {model!r} (after {first_failed}): {e.message}"
                e.args = (e.message,)
            if not replaceable(e) or streamed or len(models) == 1:
                raise
            failures.append(f"{model}: {e.message}")
            first_failed = first_failed or f"{model!r} failed: {_status(e)}"
            if i + 1 == len(models):
                raise ProviderError(
                    f"every model of the fallback chain failed: {'; '.join(failures)}", retryable=True
                ) from None
            log.warning("job %s: model %s failed (%s); falling back to %s",
                        job_id, model, _status(e), models[i + 1])  # fmt: skip
            continue
        return end, this, models[0] if i else None
    raise AssertionError("unreachable: the loop returns or raises")


def _status(e: McpQueueError) -> str:
    status = getattr(e, "status", None)
    return f"HTTP {status}" if status else type(e).__name__
