"""JSON for everything arq writes (jobs and results), on the pool and on the worker alike.

arq's default is pickle; JSON keeps every value readable with `redis-cli` and refuses to execute
anything pushed into the queue by hand. A failed job's exception is stored as
`{"error": "<type>", "message": "<text>"}` so the failure stays readable too.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_json


def _default(obj: Any) -> Any:
    if isinstance(obj, BaseException):
        return {"error": type(obj).__name__, "message": str(obj)}
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def serialize(obj: Any) -> bytes:
    return json.dumps(obj, default=_default, ensure_ascii=False, separators=(",", ":")).encode()


def deserialize(data: bytes | str) -> Any:
    return json.loads(data)


def serialize_plain(obj: Any) -> bytes:
    """`serialize` for plain data (what json.loads and a model's dump make, an exception as
    `_default` writes it), as a worker stores a job's result and a submit writes its job: pydantic-core's
    encoder (a no-op job's result 15 → 4 µs), the same JSON but for how some floats are written
    (1.2e-05 as 0.000012, the same number); text with a lone surrogate, which it refuses, by json.dumps."""
    try:
        return to_json(obj, fallback=_default, inf_nan_mode="constants")
    except ValueError:  # (PydanticSerializationError is one)
        return serialize(obj)
