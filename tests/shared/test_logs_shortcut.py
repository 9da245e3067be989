"""The ':', '=' or space shortcut in shared.logs.redact masks exactly what the four patterns
mask (random strings from the patterns' own words and marks, and Unicode look-alikes)."""

from __future__ import annotations

import random

from shared import logs

PARTS = [
    "bearer",
    "Basic",
    "password",
    "PWD",
    "token",
    "tokens",
    "secret",
    "api_key",
    "apikey",
    "api-key",
    "ſecret",
    "\u212aey",
    "://",
    "redis",
    "http",
    "u",
    "p",
    "@",
    "?",
    "#",
    "=",
    ":",
    " ",
    "\t",
    "\u00a0",
    "\u2028",
    "\u3000",
    "\x1c",
    "\x85",
    "sk-abc123",
    "'",
    '"',
    ",",
    ";",
    "&",
    "/",
    "-",
    "_",
    "x",
    "\n",
]


def unshortcut(text: str) -> str:
    for pattern, replacement in logs._PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def test_the_shortcut_masks_what_the_patterns_mask():
    rng = random.Random(7)
    for _ in range(20_000):
        text = "".join(rng.choice(PARTS) for _ in range(rng.randint(1, 9)))
        assert logs.redact(text) == unshortcut(text), repr(text)
