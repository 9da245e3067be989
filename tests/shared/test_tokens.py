"""The one token estimate: about four characters a token, or at most one token a byte."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shared.tokens import estimate_tokens


def test_about_four_characters_make_a_token():
    assert estimate_tokens("") == 0
    assert estimate_tokens("abc") == 0
    assert estimate_tokens("a" * 400) == 100


def test_the_worst_case_counts_a_token_a_byte():
    assert estimate_tokens("hello", worst_case=True) == 5
    assert estimate_tokens("café", worst_case=True) == 5  # é is two bytes in UTF-8
    assert estimate_tokens("🙂", worst_case=True) == 4


@given(st.text())
def test_the_worst_case_is_never_below_the_estimate(text):
    assert estimate_tokens(text, worst_case=True) >= estimate_tokens(text)
