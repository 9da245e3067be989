"""The one token estimate, for when no tokenizer or provider count is at hand.

Two questions need two answers: "about how many" (usage a provider did not report, the history
budget) takes about four characters a token, OpenAI's rule of thumb for English; "at most how many"
(the budget reservation, which must never be too small) takes one token a byte, since no tokenizer
makes a token of less than one byte.
"""

from __future__ import annotations

CHARS_PER_TOKEN = 4


def estimate_tokens(text: str, *, worst_case: bool = False) -> int:
    """About how many tokens `text` is; with `worst_case`, an upper bound."""
    return len(text.encode()) if worst_case else len(text) // CHARS_PER_TOKEN


def well_formed(text: str) -> str:
    """`text` with each lone surrogate as U+FFFD. Why: a model server may send a broken `\\ud800`
    escape, which JSON decoding keeps as a lone surrogate; UTF-8 (Redis, JSON out, every client)
    cannot carry one, so the event write and the result would fail on it."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)
    return text
