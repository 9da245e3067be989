"""Lua scripts as typed async functions: the Lua body beside its named KEYS and ARGV.

A script read by position (`KEYS[9]`, `ARGV[13]`) is a promise nobody can check; here each key and
argument is a keyword parameter, the Lua body gets a `local` of the same name, and the call site
reads like any other call:

    @script('''
    if redis.call('EXISTS', lease) == 1 then return 0 end
    redis.call('PSETEX', lease, lease_ms, owner)
    return 1
    ''')
    async def take_lease(redis: Redis, *, lease: Key, lease_ms: Arg[int], owner: Arg[str]) -> int:
        "Why this is atomic."
        ...

    await take_lease(redis, lease=keys.lease(job_id), lease_ms=10_000, owner=worker_id)

Parameters after the client are keyword-only and annotated `Key` (a KEYS slot), `Arg[T]` (one ARGV
slot, T one of str, bytes, int, float, bool, optionally `| None`) or `Args` (the rest of ARGV, last).
In Lua, an int/float argument arrives as a number, a bool as a boolean, None as nil, and `Args` as a
table of strings; lifetimes (TTLs) are arguments too, so a number lives in one place in Python. A
float that a Redis command stores (an INCRBYFLOAT amount) is best an `Arg[str]` of `repr(x)`: Lua
turns a number back into text with fewer digits than Python.

The script's text and SHA1 are fixed when the module is imported. A call is one EVALSHA; when the
server does not know the script (first use, a SCRIPT FLUSH, a restarted Redis) it falls back to EVAL,
which also caches it. This works the same on redis-py's asyncio client, arq's pool and fakeredis.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import operator
import types
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, TypeVar, Union, cast, get_args, get_origin, get_type_hints

from redis.exceptions import NoScriptError


class _KeyMark:
    """`Annotated` metadata: one KEYS slot."""


class _ArgMark:
    """`Annotated` metadata: one ARGV slot."""


class _ArgsMark:
    """`Annotated` metadata: every ARGV slot left, as a Lua table."""


T = TypeVar("T", bound=str | bytes | int | float | None)  # bool is an int

Key = Annotated[str, _KeyMark]
Arg = Annotated[T, _ArgMark]
Args = Annotated[Sequence[str | bytes | int | float], _ArgsMark]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


_TEXT = frozenset({bytes, str})  # argument types Redis takes as they are
# ...and an int: redis-py and hiredis write it as str() does, so a command leaves it be (its str() and
# the check that found it cost more than the packing: a submit's enqueue has 8)
_AS_IS = frozenset({bytes, str, int})


def _encode(value: object) -> str | bytes:
    """One ARGV value as Redis will see it; `_decoder` reads it back in Lua."""
    if type(value) is bytes or type(value) is str:  # most values: first (an event write has thousands)
        return value
    if value is None:
        return ""
    if type(value) is int:  # (not a bool: its type is bool)
        return str(value)
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)  # exact: repr round-trips, str() may not on older Pythons
    if isinstance(value, str | bytes):
        return value
    if isinstance(value, int):
        return str(value)
    raise TypeError(
        f"a script argument must be str, bytes, int, float, bool or None, not {type(value).__name__}"
    )


def _getter(names: list[str]) -> Callable[[dict[str, Any]], Sequence[Any]]:
    """The values of `names` in a dict, in their order, as one C call."""
    if not names:
        return lambda given: ()
    if len(names) == 1:
        name = names[0]
        return lambda given: (given[name],)
    return operator.itemgetter(*names)


def _decoder(hint: Any) -> str:
    """The Lua expression that reads ARGV[{}] as the parameter's Python type."""
    kinds = set(get_args(hint)) if get_origin(hint) in (Union, types.UnionType) else {hint}
    optional = type(None) in kinds
    kinds.discard(type(None))
    if kinds <= {int, float}:
        return "tonumber(ARGV[{}])"  # '' (None) -> nil
    if kinds == {bool}:
        return "(ARGV[{0}] == '1')" if not optional else "(ARGV[{0}] ~= '' and ARGV[{0}] == '1' or nil)"
    return "(ARGV[{0}] ~= '' and ARGV[{0}] or nil)" if optional else "ARGV[{}]"


def _slots(fn: Callable[..., Any]) -> tuple[list[str], list[tuple[str, Any]], str | None]:
    """The function's KEYS names, ARGV names with their types, and the variadic tail's name."""
    params = list(inspect.signature(fn).parameters.values())
    hints = get_type_hints(fn, include_extras=True)
    if not params or params[0].kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD:
        raise TypeError(f"{fn.__qualname__}: the first parameter must be the Redis client")
    keys: list[str] = []
    args: list[tuple[str, Any]] = []
    rest: str | None = None
    for param in params[1:]:
        hint = hints.get(param.name)
        marks = getattr(hint, "__metadata__", ())
        if param.kind is not inspect.Parameter.KEYWORD_ONLY or not marks:
            raise TypeError(
                f"{fn.__qualname__}.{param.name}: must be keyword-only and a Key, Arg[...] or Args"
            )
        if rest is not None:
            raise TypeError(f"{fn.__qualname__}.{param.name}: Args ({rest}) must be the last parameter")
        if _KeyMark in marks:
            keys.append(param.name)
        elif _ArgMark in marks:
            args.append((param.name, get_args(hint)[0]))
        elif _ArgsMark in marks:
            rest = param.name
    return keys, args, rest


def _preamble(keys: list[str], args: list[tuple[str, Any]], rest: str | None) -> str:
    lines = [f"local {name} = KEYS[{i}]" for i, name in enumerate(keys, 1)]
    lines += [f"local {name} = {_decoder(hint).format(i)}" for i, (name, hint) in enumerate(args, 1)]
    if rest is not None and not args:  # (ARGV itself: an event write's has thousands, not copied)
        lines.append(f"local {rest} = ARGV")
    elif rest is not None:
        lines.append(f"local {rest} = {{}}")
        lines.append(f"for i = {len(args) + 1}, #ARGV do {rest}[#{rest} + 1] = ARGV[i] end")
    return "\n".join(lines)


def script(body: str) -> Callable[[F], F]:
    """Make the decorated stub a call of the Lua `body` with its parameters bound by name."""

    def decorate(fn: F) -> F:
        keys, args, rest = _slots(fn)
        lua = f"{_preamble(keys, args, rest)}\n{inspect.cleandoc(body)}\n"
        sha = hashlib.sha1(lua.encode()).hexdigest()
        names = {*keys, *(name for name, _ in args), *([rest] if rest else [])}
        # each slot's value taken by one C call (operator.itemgetter), not a lookup and a call each: a
        # submit's enqueue has 28 slots (its command 6.0 -> 2.4 µs, ints left as they are)
        key_values = _getter(keys)
        arg_values = _getter([name for name, _ in args])

        def slots(given: dict[str, Any]) -> list:
            if len(given) != len(names) or not names.issuperset(given):
                missing, extra = sorted(names - given.keys()), sorted(given.keys() - names)
                raise TypeError(f"{fn.__qualname__}: missing {missing}, unexpected {extra}")
            argv = arg_values(given)
            if not _AS_IS.issuperset(map(type, argv)):  # (checked in C)
                argv = [
                    v if type(v) is bytes or type(v) is str or type(v) is int else _encode(v) for v in argv
                ]
            if rest is not None:  # (most are text already: no call each, an event write has thousands)
                values = given[rest]
                if _TEXT.issuperset(map(type, values)):  # (all text: checked in C, ~4x the listcomp's speed)
                    argv = [*argv, *values]
                else:
                    argv = [*argv, *(v if type(v) is bytes or type(v) is str else _encode(v) for v in values)]
            return [*key_values(given), *argv]

        @functools.wraps(fn)
        async def call(redis: Any, **given: Any) -> Any:
            bound = slots(given)
            try:
                return await redis.evalsha(sha, len(keys), *bound)
            except NoScriptError:  # first use on this server, or its script cache was flushed
                return await redis.eval(lua, len(keys), *bound)

        call.lua = lua  # type: ignore[attr-defined]  # the full text, for tests and redis-cli users
        # the call as one command, for a pipeline or MULTI (its caller handles a NOSCRIPT reply by
        # calling the script the usual way), of a dict of its parameters: a submit keeps its dict for
        # its retry, and copying 28 slots into keywords and back was 0.9 µs
        call.command = lambda given: ("EVALSHA", sha, len(keys), *slots(given))  # type: ignore[attr-defined]
        return cast(F, call)

    return decorate
