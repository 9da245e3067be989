"""How the `messenger` and `worker` commands end on an error: one line a person can act on, and an
exit code that says what kind of failure it was. Never a traceback (LOG_LEVEL=DEBUG logs it)."""

from __future__ import annotations

from pydantic import ValidationError
from redis.exceptions import AuthenticationError, RedisError, ResponseError

from shared import damaged
from shared.connection import redacted, tls_refusal
from shared.errors import InvalidRequest, McpQueueError, ProviderError, validation_message
from shared.logs import redact

FAILED = 1  # the work failed or was refused, or Redis could not be reached
WRONG_INPUT = 2  # a setting or argument is wrong, or the provider cannot be used as configured
INTERRUPTED = 130  # Ctrl-C


def failure(e: BaseException, redis_url: str) -> tuple[str, int]:
    """`e` as one line (secrets masked) and the exit code for it."""
    if isinstance(e, McpQueueError):
        line, code = e.message, WRONG_INPUT if isinstance(e, InvalidRequest | ProviderError) else FAILED
    elif isinstance(e, ValidationError):
        line, code = validation_message(e), WRONG_INPUT
    elif isinstance(e, ResponseError):
        line, code = damaged.refused(e), FAILED
    elif (tls := tls_refusal(e, redis_url)) is not None:
        line, code = tls, WRONG_INPUT
    elif isinstance(e, RedisError | ConnectionError | TimeoutError):
        line, code = redis_failure(e, redis_url), FAILED
    else:
        line, code = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__, FAILED
    return redact(" ".join(line.split())), code


def redis_failure(e: BaseException, redis_url: str) -> str:
    """Why Redis did not serve us, naming what to fix (REDIS_URL, almost always)."""
    at, said = redacted(redis_url), str(e).strip() or type(e).__name__
    if isinstance(e, AuthenticationError):
        if "required" in said.lower():
            return f"Redis at {at} requires a password and REDIS_URL gives none: put user:password@ before the host"
        return f"Redis at {at} refused the user or password in REDIS_URL ({said.rstrip('.')})"
    if isinstance(e, TimeoutError) or "Timeout" in said:
        tls = " (and that it serves TLS: REDIS_URL says rediss://)" if redis_url.startswith("rediss:") else ""
        return f"Redis at {at} did not answer in time: check the host and port in REDIS_URL{tls}"
    if "Protocol error" in said:
        return f"{at} does not answer as Redis does ({said}): check the host and port in REDIS_URL"
    if "Connect call failed" in said or "refused" in said.lower():
        said = "connection refused"
    return f"cannot reach Redis at {at}: {said.rstrip('.')} (is redis-server running? check REDIS_URL)"
