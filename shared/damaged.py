"""A Redis key holding the wrong type (written by hand, or damaged) is damage of that one key, not
Redis being down: a reader skips it, names it once in a WARNING and answers from the rest."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

from redis.exceptions import NoPermissionError, ResponseError

log = logging.getLogger("mcpq.damaged")

T = TypeVar("T")


def wrong_type(e: BaseException) -> bool:
    return isinstance(e, ResponseError) and str(e).startswith("WRONGTYPE")


def wrong_type_message(key: str) -> str:
    return f"Redis key {key} holds the wrong type (damaged? written by hand?)"


def refused(e: ResponseError) -> str:
    """A command Redis answered with an error (a wrong-type key, say) as one line: Redis is up."""
    said = (str(e).splitlines() or [type(e).__name__])[0].split(" script: ")[0][:200]
    if isinstance(e, NoPermissionError):  # Redis names the command, or says "keys" or "channels"
        return (
            f"the Redis user in REDIS_URL lacks a permission: NOPERM {said}; give it the README's "
            "ACL SETUSER line (keys ~arq:* ~mcpq:*, channels &mcpq:*, and the commands it lists)"
        )
    return f"Redis refused a command: {said} (a key damaged or written by hand?)"


def warn(key: str, why: str = "") -> None:
    log.warning("skipped Redis key %s: %s", key, why or "it holds the wrong type (damaged? written by hand?)")


async def read(reply: Awaitable[T], key: str, default: T) -> T:
    """Await one read of `key`; a wrong-type key is logged and read as `default`."""
    try:
        return await reply
    except ResponseError as e:
        if not wrong_type(e):
            raise
        warn(key)
        return default


def replies(found: Sequence[Any], names: Sequence[str], defaults: Sequence[Any]) -> list[Any]:
    """A pipeline's replies (executed with raise_on_error=False): a wrong-type key's error is logged
    and replaced by its default; any other error is raised."""
    out = []
    for reply, key, default in zip(found, names, defaults, strict=True):
        if isinstance(reply, ResponseError) and wrong_type(reply):
            warn(key)
            reply = default
        elif isinstance(reply, BaseException):
            raise reply
        out.append(reply)
    return out
