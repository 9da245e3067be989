"""How the `messenger` and `worker` commands end on an error: one line a person can act on, and an
exit code that says what kind of failure it was. Never a traceback (LOG_LEVEL=DEBUG logs it)."""

from __future__ import annotations

from pydantic import ValidationError
from redis.exceptions import RedisError, ResponseError

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
        line, code = f"cannot reach Redis at {redacted(redis_url)}: {str(e) or type(e).__name__}", FAILED
    else:
        line, code = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__, FAILED
    return redact(" ".join(line.split())), code
