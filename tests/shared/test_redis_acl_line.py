"""The README's ACL SETUSER line grants every command a Lua script of ours runs: Redis checks each
`redis.call` inside a script against the caller's ACL, so a script that gains a command the line
lacks would fail with NOPERM only under the least-privilege user."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def granted() -> set[str]:
    (line,) = [x for x in (ROOT / "README.md").read_text().splitlines() if x.startswith("ACL SETUSER")]
    return {
        word[1:].lower().split("|")[0] for word in line.split() if word.startswith("+")
    }  # (pubsub|numsub)


def test_every_command_our_scripts_call_is_in_the_readme_acl_line():
    called = {
        name.lower()
        for package in ("shared", "worker", "messenger")
        for path in (ROOT / package).rglob("*.py")
        for name in re.findall(r"""call\(['"]([A-Za-z]+)['"]""", path.read_text())
    }
    assert len(called) > 20, called  # the pattern still finds the scripts' commands
    assert called - granted() == set()
