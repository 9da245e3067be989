"""One way to reach Redis for both sides: an arq pool with the JSON serializer.

`memory://` gives an in-process fakeredis server, shared by everything in the process, so the
embedded messenger and its worker talk through exactly the same code as separate processes would.
"""

from __future__ import annotations

from typing import Any

from arq.connections import ArqRedis
from fakeredis import FakeServer
from fakeredis.aioredis import FakeAsyncRedisMixin
from redis.asyncio import ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError

from shared.logs import redact
from shared.sentinel import is_sentinel_url, sentinel_pool
from shared.serializer import deserialize, serialize
from shared.settings import MEMORY_URL

_memory_server: FakeServer | None = None


# fakeredis's mixin narrows `from_url`, which this class never calls
class _MemoryArqRedis(FakeAsyncRedisMixin, ArqRedis):  # pyright: ignore[reportIncompatibleMethodOverride]
    """ArqRedis whose connections go to an in-process fakeredis server."""


def memory_server() -> FakeServer:
    global _memory_server
    if _memory_server is None:
        _memory_server = FakeServer()
    return _memory_server


def connect(redis_url: str, **options: Any) -> ArqRedis:
    """An arq pool for `redis_url`; connections are made lazily and retried with backoff. `options`
    (redis-py connection arguments) replace the defaults, e.g. for a one-shot start-up probe."""
    if redis_url == MEMORY_URL:
        redis: ArqRedis = _MemoryArqRedis(server=memory_server())
    else:
        options = {
            # OSError too: a refused connect (Redis restarting) is a builtin ConnectionRefusedError
            "retry": Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=8),
            "retry_on_error": [ConnectionError, TimeoutError, OSError],
            "socket_keepalive": True,
            "health_check_interval": 15,
            **options,
        }
        redis = ArqRedis(_pool(redis_url, options))
    redis.job_serializer = serialize
    redis.job_deserializer = deserialize
    return redis


def _pool(redis_url: str, options: dict[str, Any]) -> ConnectionPool:
    if is_sentinel_url(redis_url):  # the primary is whichever the Sentinels name now (shared/sentinel.py)
        return sentinel_pool(redis_url, **options)
    return ConnectionPool.from_url(redis_url, **options)


def redacted(redis_url: str) -> str:
    """The URL without its credentials, for logs, errors and health output (see shared.logs.redact)."""
    return redact(redis_url)
