"""What a worker checks before arq runs a queue entry it claimed: anything arq or our job functions
could choke on is named here, so the entry goes to the dead-letter place (shared.dead_letter) with
a reason a person can act on, instead of raising inside arq's `run_job` and killing the worker.

arq reads `{"f": function, "a": args, "k": kwargs, "t": tries, "et": enqueue ms}`; our functions
take one request (a ChatRequest or ToolCallRequest as JSON) and an optional `trace` carrier.
"""

from __future__ import annotations

import json
import math
from collections.abc import Set as AbstractSet
from typing import Any

from pydantic import BaseModel, ValidationError

from shared.errors import validation_message
from shared.models import ChatRequest, ToolCallRequest

MAX_JOB_BYTES = 1 << 20  # a request of two 100k-character texts fits several times over
MAX_ID_CHARS = 200
MAX_TRIES_FIELD = 1000
LATEST_MS = 253_402_300_799_000  # 9999-12-31: arq turns `et` into a datetime
REQUESTS: dict[str, type[BaseModel]] = {"chat": ChatRequest, "call_tool": ToolCallRequest}
# the key of a job value (read_job's) and of the job's ctx that holds its request as validated here
# (its args[0]'s: the job function's second validation was ~1.5 µs of a no-op job)
VALIDATED = "validated_request"


def job_id_problem(raw_id: bytes) -> str | None:
    """Why this queue member can never be a job id (None: it can)."""
    try:
        job_id = raw_id.decode()
    except UnicodeDecodeError:
        return "the job id is not UTF-8 text"
    # (split() != [job_id]: some character is a space; every worker checks every woken id, so in C)
    if not job_id or len(job_id) > MAX_ID_CHARS or not job_id.isprintable() or job_id.split() != [job_id]:
        return f"the job id is not 1-{MAX_ID_CHARS} printable characters without spaces"
    return None


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _envelope_problem(d: Any, functions: AbstractSet[str]) -> str | None:
    if not isinstance(d, dict) or not {"f", "a", "k", "t", "et"} <= d.keys():
        return "the job is not an arq job object with f, a, k, t and et"
    f, t, et = d["f"], d["t"], d["et"]
    if not isinstance(f, str) or f not in functions:
        return f"function {str(f)[:100]!r} is not one this worker runs ({', '.join(sorted(functions))})"
    if not isinstance(d["a"], list) or not isinstance(d["k"], dict):
        return "the job's args (a) must be a list and its kwargs (k) an object"
    if t is not None and (type(t) is not int or not 0 <= t <= MAX_TRIES_FIELD):
        return f"the job's tries (t) must be empty or a whole number 0-{MAX_TRIES_FIELD}"
    if type(et) not in (int, float) or not (math.isfinite(et) and 0 <= et <= LATEST_MS):
        return "the job's enqueue time (et) must be a time in milliseconds"
    return None


def _arguments_problem(function: str, args: list, kwargs: dict) -> tuple[str | None, BaseModel | None]:
    """(why the arguments cannot be run, None when they can; the request validated)"""
    if len(args) != 1 or not isinstance(args[0], dict):
        return f"invalid request in the queue: {function} takes one request object as its only argument", None
    if not kwargs.keys() <= {"trace"}:
        return (
            f"{function} takes no keyword arguments but trace (got {', '.join(sorted(kwargs))[:100]})",
            None,
        )
    trace = kwargs.get("trace")
    if trace is not None and not (
        isinstance(trace, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in trace.items())
    ):
        return "the job's trace must be an object of strings", None
    model = REQUESTS.get(function)
    if model is None:
        return None, None
    try:
        return None, model.model_validate(args[0])
    except ValidationError as e:
        return validation_message(e, "invalid request in the queue: "), None


# one decoder (json.loads given an argument makes a decoder and its scanner each call: ~1.5 µs a job)
_JSON = json.JSONDecoder(parse_constant=_no_constants)


def read_job(raw: bytes | None, functions: AbstractSet[str]) -> tuple[str | None, str | None, dict | None]:
    """(why this job value cannot be run, its function name when known, the job value read as arq's
    deserializer reads it); (None, name, value) when it can: the worker runs it from this value, not
    from a second parse."""
    if raw is None:
        return (
            "no job definition behind the queue entry (its arq:job key is missing, expired or not a string)",
            None,
            None,
        )
    if len(raw) > MAX_JOB_BYTES:
        return f"the job is {len(raw)} bytes; a job may take at most {MAX_JOB_BYTES}", None, None
    try:  # (as json.loads reads bytes)
        d = _JSON.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except (ValueError, RecursionError):  # (UnicodeDecodeError is a ValueError)
        return "the job is not JSON", None, None
    if problem := _envelope_problem(d, functions):
        return problem, d.get("f") if isinstance(d, dict) and isinstance(d.get("f"), str) else None, None
    problem, request = _arguments_problem(d["f"], d["a"], d["k"])
    if problem:
        return problem, d["f"], None
    if request is not None:  # the job function takes it from arq's ctx, not validating it again
        d[VALIDATED] = request
    return None, d["f"], d
