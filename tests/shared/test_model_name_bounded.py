"""A request's model name becomes Redis keys (usage, capacity) and a set member that stays: a
megabyte of made-up name is refused with one line before it is queued."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.models import MAX_MODEL_CHARS, ChatRequest


def test_a_model_name_past_the_bound_is_refused_and_a_long_real_one_is_not():
    arn = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/" + "a" * 40
    assert ChatRequest(message="hi", model=arn).model == arn
    with pytest.raises(ValidationError) as caught:
        ChatRequest(message="hi", model="m" * 1_000_000)
    assert f"at most {MAX_MODEL_CHARS} characters" in str(caught.value)
