"""A prompt larger than its model's whole `tpm` can never fit in a minute: it fails at once with a
line naming the limit, instead of being let through and pushing the model's token schedule hours
ahead, which would make every other tenant's job wait (and fail at its deadline) behind it."""

from __future__ import annotations

import time

import pytest
from test_capacity import CALL, END, MODEL, capacity
from test_capacity_junk_scores import redis  # noqa: F401  (the real-Redis fixture)

from shared.errors import RateLimited
from worker.capacity import prompt_tokens


async def test_a_prompt_over_the_whole_tpm_fails_at_once_and_blocks_no_one(redis):  # noqa: F811
    cap = capacity(tpm=1000)
    huge = CALL.__class__(**{**CALL.__dict__, "messages": [{"role": "user", "content": "word " * 10_000}]})
    assert prompt_tokens(huge) > 1000
    calls = []

    async def stream():
        calls.append(1)
        return END

    with pytest.raises(RateLimited) as caught:
        await cap.turn(
            redis, "big", huge, deadline=time.monotonic() + 30, stream=stream, streamed=lambda: False
        )
    assert caught.value.limit == "tpm" and caught.value.model == MODEL
    assert "MODEL_LIMITS tpm=1000" in caught.value.message and "never" in caught.value.message
    assert calls == [], "the provider was never asked"
    started = time.monotonic()
    assert (
        await cap.turn(
            redis, "small", CALL, deadline=time.monotonic() + 5, stream=stream, streamed=lambda: False
        )
        is END
    )
    assert time.monotonic() - started < 1, "the next job is not held up"
