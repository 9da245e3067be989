"""One way to reach Redis for both sides: an arq pool with the JSON serializer.

`memory://` gives an in-process fakeredis server, shared by everything in the process, so the
embedded messenger and its worker talk through exactly the same code as separate processes would.
`rediss://` takes redis-py's ssl_* query parameters in every process; a certificate either side
refuses is one line naming the REDIS_URL parameter to fix, not a retry loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import math
import ssl
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from arq.connections import ArqRedis
from hiredis import pack_command
from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
from redis.asyncio import ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import (
    AuthenticationError,
    ConnectionError,
    NoPermissionError,
    RedisError,
    ResponseError,
    TimeoutError,
)

from shared import damaged, keys
from shared.errors import QueueUnavailable, SettingsError
from shared.logs import redact
from shared.sentinel import FollowingPool, UnknownMaster, is_sentinel_url, sentinel_pool
from shared.serializer import deserialize, serialize
from shared.settings import MEMORY_URL

if TYPE_CHECKING:
    from fakeredis import FakeServer

_memory_server: FakeServer | None = None
log = logging.getLogger("mcpq.redis")


class RetryPolicy(NamedTuple):
    """How long one Redis command rides out a lost connection: redis-py retries it `retries` times,
    waiting 0.05 s doubling up to `cap`; a hand loop (a subscription's reader) waits the same
    (`delay`). One policy per process kind, not a loop of ours around redis-py's retries."""

    retries: int
    cap: float
    connect_timeout: float | None  # seconds for one TCP (and TLS) connect; None: the OS's (minutes)
    # seconds a process may wait for Redis's first answers before it says Redis cannot be used (None:
    # it waits): more than every connect attempt, so a host that never answers is caught by the
    # attempts, and one that takes the connection and then says nothing (frozen) by this
    give_up: float | None = None

    def backoff(self) -> ExponentialBackoff:
        return ExponentialBackoff(cap=self.cap, base=0.05)

    def delay(self, failures: int) -> float:
        return self.backoff().compute(failures)


SERVICE = RetryPolicy(retries=8, cap=2.0, connect_timeout=None)  # servers, workers: outlive a restart
# a worker's claims: one new connection for one that was dropped, never an outage ridden out in
# retries (a claim that lands as Redis comes back could take a job whose live holder has not yet
# renewed the lease that lapsed meanwhile; it fails instead, and the worker waits: failed_within)
CLAIM = RetryPolicy(retries=1, cap=0.0, connect_timeout=None)
# a CLI command: an operator has the one-line answer within start-up + 2.5 s, whatever Redis does
COMMAND = RetryPolicy(retries=1, cap=0.25, connect_timeout=1.0, give_up=2.5)


# subscribe_forever's liveness check: a subscription quiet this long is asked a PING, and one that then
# reads nothing for STUCK_SECONDS is taken for half-open and made again. Why: a connection a frozen
# proxy or NAT holds (no answer, no RST) still counts as a subscriber in Redis, which PUBLISHes into it
# for good (a worker's hand-offs too); a PING a few seconds is nothing to an idle worker.
QUIET_SECONDS = 2.0
STUCK_SECONDS = 5.0  # (above a loaded box's slowest answer: a PING unanswered as long is no hiccup)


class SubscriptionStuck(ConnectionError):
    """A subscription's connection did not answer a PING in STUCK_SECONDS: it was closed."""


async def subscribe_forever(
    redis,
    handlers: dict[str, Callable[[bytes], None]],
    *,
    on_subscribed: Callable[[], None],
    what: str,
    on_stuck: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Hand every message published on each channel of `handlers` to that channel's handler, on one
    connection (so in the order they were published), for as long as the task runs. A lost
    subscription is made again, waiting `SERVICE.delay` between tries, with one WARNING per outage;
    `on_subscribed` runs on each (re)subscribe: what was published meanwhile is gone, so the caller
    looks again. Messages are read straight off the connection: every worker reads every
    wake-up, and redis-py's `listen()` wraps each read in its retry and health-check layers (a lost
    connection raises here and is subscribed again, as above); the messages a read brought in with
    the first are taken from the parser (`buffered_reply`), without a timer each. A connection that
    answers nothing to a PING (see QUIET_SECONDS) is closed and subscribed again, `on_stuck` first."""
    by_channel = {channel.encode(): handler for channel, handler in handlers.items()}
    failures = 0
    while True:
        pubsub = redis.pubsub()
        try:
            await pubsub.subscribe(*handlers)
            failures = 0
            on_subscribed()
            connection = pubsub.connection
            pinged = False
            while True:
                # a timeout of its own (as listen(): none): the connection's socket_timeout (REDIS_URL)
                # would end a quiet subscription every socket_timeout; a quiet read returns None here
                reply = await connection.read_response(
                    timeout=STUCK_SECONDS if pinged else QUIET_SECONDS,
                    disconnect_on_error=False,
                    push_request=True,
                )
                if reply is None and pinged:
                    await connection.disconnect(nowait=True)
                    raise SubscriptionStuck(f"no reply to a PING in {STUCK_SECONDS:g} s")
                if reply is None:  # (subscribed, Redis answers a PING with a 'pong' reply, not a message)
                    await connection.send_command("PING", check_health=False)
                    pinged = True
                    continue
                pinged = False
                while reply is not None:
                    if type(reply) is list and len(reply) == 3 and reply[0] == b"message":
                        handler = by_channel.get(reply[1])
                        if handler is not None and isinstance(reply[2], bytes):
                            handler(reply[2])
                    reply = buffered_reply(connection)
                # the tasks the handlers started (a job handed to this worker) take their first step
                # before the next read is armed (its timer, the parser's read): what arrives meanwhile
                # waits in the socket's buffer, and the job starts that much sooner
                await asyncio.sleep(0)
        except SubscriptionStuck as e:
            failures = 1
            log.warning("%s subscription stuck (%s); connecting again", what, e)
            if on_stuck is not None:
                await on_stuck()
            await asyncio.sleep(SERVICE.delay(failures))
        except (RedisError, OSError) as e:
            failures += 1
            if failures > 1:  # subscribing again failed too: Redis is away
                note_failure()
            level = logging.WARNING if failures == 1 else logging.DEBUG
            log.log(level, "%s subscription lost (%s); retrying until Redis answers", what, type(e).__name__)
            await asyncio.sleep(SERVICE.delay(failures))
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()


def buffered_reply(connection):
    """The next reply `connection` has already read from its socket, or None (none whole yet, or not
    the hiredis parser). A burst of 1,000 messages costs one read_response (health check, retry
    wrapper, a timer), not 1,000. An error reply is raised, as read_response raises it."""
    parser = getattr(connection, "_parser", None)
    if type(parser) is not _AsyncHiredisParser or not parser._connected or parser._reader is None:
        return None
    reader = parser._reader
    try:
        response = reader.gets()
    except Exception:  # a protocol error: the reader is spoilt (redis-py would disconnect too)
        parser.on_disconnect()
        raise
    if response is NOT_ENOUGH_DATA:
        return None
    if isinstance(response, Exception):  # (NOPERM for a SUBSCRIBE an ACL refuses, LOADING…)
        raise response
    if type(response) is list and response and isinstance(response[0], ConnectionError):
        raise response[0]
    return response


_failed_at = [-math.inf]  # time.monotonic() when a Redis command or subscription of this process last failed


def note_failure() -> None:
    _failed_at[0] = time.monotonic()


def failed_within(seconds: float) -> bool:
    """Whether Redis was away for this process in the last `seconds`: a command or a subscription
    failed twice in a row (its new connection too). Why: a worker whose poll rode out an outage inside redis-py's retries saw no
    error, yet the leases of running jobs may have lapsed meanwhile (worker/wakeups.py waits before
    it claims, so live holders renew theirs first)."""
    return time.monotonic() - _failed_at[0] < seconds


class _Retry(Retry):
    """redis-py's Retry, except that a refused password or user is final: retrying it only delays
    the one line that says so (nested in redis-py's connect, it took minutes); Redis away is noted
    (`failed_within`)."""

    async def call_with_retry(self, do, fail):
        failures = 0

        async def noted(error):
            nonlocal failures
            failures += 1
            if failures > 1:  # a new connection failed too: Redis is away (not one closed for idling)
                note_failure()
            await fail(error)

        async def once():
            try:
                return await do()
            except AuthenticationError as e:
                with contextlib.suppress(Exception):
                    await fail(e)
                raise _Final(e) from None

        try:
            return await super().call_with_retry(once, noted)
        except _Final as final:
            error = final.error
        raise error  # outside the except: the error's context stays its own (no cycle through _Final)


class _Final(Exception):
    def __init__(self, error: Exception):
        self.error = error


class QuickCheckout(ConnectionPool):
    """A pool whose checkout neither locks nor probes a connection that is known to be clean.

    Why: redis-py 5's `get_connection` holds one pool-wide lock across its liveness probe, a socket
    read under a zero timeout that lasts a whole event-loop turn. With a thousand tasks on the loop,
    every Redis command of the process queued behind that lock, one loop turn each (1,000 MCP callers
    on one messenger: first token 9 s late, at 1 CPU). Here a connected connection with no unread byte
    (socket buffer, parser) is handed out at once; a new, closed or dirty one goes through the usual
    connect-and-probe, outside any lock. Taking it from the pool has no await, so it stays atomic.
    """

    async def get_connection(self, command_name=None, *keys, **options):
        connection = self.get_available_connection()
        try:
            if not _clean(connection):
                await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection


def _clean(connection) -> bool:
    """Connected, and nothing left to read: no byte buffered from the socket, none in the parser."""
    reader = getattr(connection, "_reader", None)
    if reader is None or getattr(connection, "_writer", None) is None:
        return False
    if reader.at_eof() or len(getattr(reader, "_buffer", b"x")):
        return False
    parser = getattr(connection._parser, "_reader", None)  # hiredis; the pure-Python parser: probe it
    return parser is not None and hasattr(parser, "has_data") and not parser.has_data()


@functools.cache
def _memory_arq_redis() -> type[ArqRedis]:
    from fakeredis.aioredis import FakeAsyncRedisMixin  # only embedded mode pays for fakeredis

    # fakeredis's mixin narrows `from_url`, which this class never calls
    class MemoryArqRedis(FakeAsyncRedisMixin, ArqRedis):  # pyright: ignore[reportIncompatibleMethodOverride]
        """ArqRedis whose connections go to an in-process fakeredis server."""

    return MemoryArqRedis


def memory_server() -> FakeServer:
    global _memory_server
    if _memory_server is None:
        from fakeredis import FakeServer

        _memory_server = FakeServer()
    return _memory_server


def connect(redis_url: str, policy: RetryPolicy = SERVICE, **options: Any) -> ArqRedis:
    """An arq pool for `redis_url`; connections are made lazily and retried by `policy`. `options`
    (redis-py connection arguments) replace the defaults, e.g. for a one-shot start-up probe."""
    if redis_url == MEMORY_URL:
        redis: ArqRedis = _memory_arq_redis()(server=memory_server())
    else:
        options = {
            # OSError too: a refused connect (Redis restarting) is a builtin ConnectionRefusedError
            "retry": _Retry(policy.backoff(), retries=policy.retries),
            "retry_on_error": [ConnectionError, TimeoutError, OSError],
            "socket_connect_timeout": policy.connect_timeout,
            "socket_keepalive": True,
            "health_check_interval": 15,
            "lib_name": None,  # no CLIENT SETINFO: the least-privilege ACL user is granted no CLIENT
            "lib_version": None,
            **options,
        }
        redis = ArqRedis(_pool(redis_url, options))
    redis.job_serializer = serialize
    redis.job_deserializer = deserialize
    return redis


class _QuickSentinelPool(QuickCheckout, FollowingPool):
    """The Sentinel pool (shared/sentinel.py) with the same lock-free checkout."""


def _pool(redis_url: str, options: dict[str, Any]) -> ConnectionPool:
    if is_sentinel_url(redis_url):  # the primary is whichever the Sentinels name now (shared/sentinel.py)
        pool = sentinel_pool(redis_url, _QuickSentinelPool, **options)
    else:
        pool = QuickCheckout.from_url(redis_url, **options)
    pool.connection_class = _packed_by_hiredis(pool.connection_class)  # TCP, TLS, unix or Sentinel's
    return pool


class _HiredisPacking:
    """A command packed by hiredis (C) instead of redis-py 5's Python loop, which was the worker's
    largest single cost at 1,000 no-op jobs/s (6-9 % of its CPU, a job's usage script alone has 50
    arguments). The same bytes; anything hiredis does not take (a bool or None, which redis-py refuses
    with its own error; a command name with a space, which redis-py splits) goes the usual way."""

    def pack_command(self, *args: Any) -> list[bytes]:
        name = args[0]
        if not (b" " in name if isinstance(name, bytes) else " " in str(name)):
            try:  # (not contextlib.suppress: a context manager object a command, 0.5 µs of 0.4-1.0)
                return [pack_command(args)]
            except TypeError:
                pass
        return super().pack_command(*args)  # type: ignore[misc]  # the connection class it is mixed into


@functools.cache
def _packed_by_hiredis(connection_class: type) -> type:
    return type(connection_class.__name__, (_HiredisPacking, connection_class), {})


BATCH_STUCK_SECONDS = 20.0  # a Batch pipeline's longest wait (Redis retries included) before its callers fail


class Batch:
    """Commands of many callers go to Redis together: one pipeline at a time, holding whatever came
    while the one before was in flight.

    Why: a round trip per command (a pool checkout, the command, its reply, two wake-ups) was a fifth
    of the messenger's CPU with 300 callers streaming, and a burst of 1,000 calls opened hundreds of
    connections. Commands go out in the order `run` was called (one pipeline at a time), so one
    key's writes keep their order; each caller's reply comes back as if it had sent alone.
    """

    def __init__(self, redis):
        self.redis = redis
        self.pending: list[tuple[tuple[tuple[Any, ...], ...], _ReplyTo, bool]] = []
        self.flusher: asyncio.Task[None] | None = None

    @classmethod
    def of(cls, redis) -> Batch:
        """The one Batch of this Redis client, so every user of it in the process shares its pipelines."""
        batch = _BATCHES.get(redis)
        if batch is None:
            batch = _BATCHES[redis] = cls(redis)
        return batch

    async def run(self, *commands: tuple[Any, ...]) -> Any:
        """Send `commands` (each one command's arguments) in the next pipeline: the first one's reply,
        raised if it is an error (the others' replies are not looked at)."""
        return await self._submit(commands, False)

    async def run_each(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Send `commands` in the next pipeline: every one's reply, an error one as its exception
        (not raised; a pipeline that failed as a whole raises)."""
        return await self._submit(commands, True)

    def send(self, *commands: tuple[Any, ...]) -> asyncio.Future[Any]:
        """run() without a coroutine to await it: the future of the first command's reply (an error
        reply as its exception), for a read that starts now and is awaited later, or never."""
        return self._submit(commands, False)

    def send_each(self, *commands: tuple[Any, ...]) -> asyncio.Future[list[Any]]:
        """run_each() without a coroutine to await it: the future of every command's replies, for a
        caller that puts many callers' commands in the next pipeline before it waits for one of them."""
        return self._submit(commands, True)

    def send_to(self, to: Callable[[Any], None], *commands: tuple[Any, ...]) -> None:
        """send() whose reply goes to `to` (the first command's reply, an error reply or the
        pipeline's failure as its exception) as the pipeline's flush reads it, not in a future's
        done-callback a loop turn later: a caller that only hands the reply on (a submit's, 1,000 a
        second) saves the future and the callback. `to` must not block; what it raises is the loop's
        exception handler's, and the other callers are answered all the same."""
        self._queue(commands, to, False)

    def _submit(self, commands: tuple[tuple[Any, ...], ...], each: bool) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue(commands, future, each)
        return future

    def _queue(self, commands: tuple[tuple[Any, ...], ...], to: _ReplyTo, each: bool) -> None:
        self.pending.append((commands, to, each))
        if self.flusher is None or self.flusher.done():
            self.flusher = asyncio.create_task(self._flush(), name="redis-batch")

    async def _flush(self) -> None:
        while self.pending:
            batch, self.pending = self.pending, []
            pipe = self.redis.pipeline(transaction=False)
            pipe._execute_pipeline = functools.partial(_read_lean, pipe)  # pyright: ignore[reportAttributeAccessIssue]
            for commands, _, _ in batch:
                for args in commands:
                    pipe.execute_command(*args)
            replies: list | BaseException
            try:
                # every caller waits for this one pipeline: one on a dead connection (half-open TCP
                # after a failover: no RST, and the pool has no socket_timeout) must not hold all
                # of them for the kernel's ~15 min; cancelled, redis-py drops that connection
                async with asyncio.timeout(BATCH_STUCK_SECONDS):
                    replies = await pipe.execute(raise_on_error=False)
            except Exception as e:  # each waiting caller gets it: none may wait for ever
                replies = e
            at = 0
            for commands, future, each in batch:
                if isinstance(replies, BaseException):
                    reply: Any = replies
                elif each:
                    reply = replies[at : at + len(commands)]
                else:
                    reply = replies[at]
                at += len(commands)
                if not isinstance(future, asyncio.Future):  # (send_to's)
                    _hand(future, reply)
                elif future.done():  # its caller went away meanwhile
                    continue
                elif isinstance(reply, BaseException):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)


_ReplyTo = asyncio.Future[Any] | Callable[[Any], None]  # where a Batch command's reply goes


def _hand(to: Callable[[Any], None], reply: Any) -> None:
    """A send_to reply handed over; what its callee raises goes to the loop's exception handler."""
    try:
        to(reply)
    except Exception as e:
        asyncio.get_running_loop().call_exception_handler(
            {"message": f"Batch reply callback {to!r} failed", "exception": e}
        )


_BATCHES: weakref.WeakKeyDictionary[Any, Batch] = weakref.WeakKeyDictionary()


def _packed(connection, commands: list[tuple[Any, ...]]) -> list[bytes]:
    """The pipeline's commands packed by hiredis into one buffer (redis-py's pack_commands cuts and
    joins them in Python, command by command); anything hiredis does not take goes redis-py's way."""
    if all(type(args[0]) is str and " " not in args[0] for args in commands):
        try:
            return [b"".join([pack_command(args) for args in commands])]
        except TypeError:
            pass
    return connection.pack_commands(commands)


async def _read_lean(pipe, connection, commands, raise_on_error: bool) -> list[Any]:
    """redis-py's `Pipeline._execute_pipeline` for a Batch's pipeline, each reply taken straight from
    the hiredis reader when the socket read that brought an earlier one brought it too (a pipeline's
    replies mostly come in one read); only a reply not read yet goes through `read_response`. The
    commands go packed by hiredis into one buffer (`_packed`).

    Why: per command redis-py's way is four nested awaits (the pipeline's and the client's
    `parse_response`, the connection's and the parser's `read_response`: its host string, a loop time,
    a try per reply), a sixth of a Batch pipeline's CPU beside its packing and its write, and the
    messenger's Batch carries every stored notification of every call. The same replies (each one
    through the client's response callback), an error reply in its command's place, and a reply that
    says the connection is unusable (or a protocol error) closes it and is raised, as redis-py's read."""
    parser = connection._parser
    if type(parser) is not _AsyncHiredisParser or any(options for _, options in commands):
        return await type(pipe)._execute_pipeline(pipe, connection, commands, raise_on_error)
    await connection.send_packed_command(_packed(connection, [args for args, _ in commands]))
    callbacks = pipe.response_callbacks
    replies: list[Any] = []
    for args, _ in commands:
        try:
            reader = parser._reader
            reply = reader.gets() if parser._connected and reader is not None else NOT_ENOUGH_DATA
            if isinstance(reply, ConnectionError) or (
                type(reply) is list and reply and isinstance(reply[0], ConnectionError)
            ):
                raise reply if isinstance(reply, ConnectionError) else reply[0]
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        if reply is NOT_ENOUGH_DATA:
            try:
                reply = await connection.read_response()
            except ResponseError as e:
                replies.append(e)
                continue
        elif isinstance(reply, ResponseError):
            replies.append(reply)
            continue
        callback = callbacks.get(args[0]) if isinstance(args[0], str) else None
        if callback is not None:
            reply = callback(reply)
            if inspect.isawaitable(reply):
                reply = await reply
        replies.append(reply)
    if connection.health_check_interval:  # as each read_response does
        connection.next_health_check = asyncio.get_running_loop().time() + connection.health_check_interval
    if raise_on_error:
        pipe.raise_first_error(commands, replies)
    return replies


def redacted(redis_url: str) -> str:
    """The URL without its credentials, for logs, errors and health output (see shared.logs.redact)."""
    return redact(redis_url)


def tls_refusal(error: BaseException, redis_url: str) -> str | None:
    """One line naming what to fix in REDIS_URL when `error` is a refused TLS handshake, else None."""
    cause: BaseException | None = error
    seen: set[int] = set()  # a chain can loop (an error re-raised in its own handler)
    while cause is not None and not isinstance(cause, ssl.SSLError) and id(cause) not in seen:
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    if cause is not None and not isinstance(cause, ssl.SSLError):
        cause = None
    if cause is None:
        return None
    at = f"Redis at {redacted(redis_url)}"  # a space after it: redaction masks a query up to one
    if isinstance(cause, ssl.SSLCertVerificationError):
        return (
            f"the TLS certificate of {at} was refused ({cause.verify_message}); set ssl_ca_certs in REDIS_URL "
            "to the CA file that signed it (or ssl_cert_reqs=none to skip the check)"
        )
    reason = getattr(cause, "reason", None) or type(cause).__name__  # not every SSLError has one
    if "ALERT" in reason:  # the server's alert: it refused our client certificate
        return f"{at} refused this client's TLS certificate ({reason}); set ssl_certfile and ssl_keyfile in REDIS_URL to a certificate its CA signed"
    return f"TLS with {at} failed ({reason}); check rediss:// (the server's TLS port) and the ssl_* parameters in REDIS_URL"


PROBE_CHANNEL = keys.EVENTS_PREFIX + "~access"  # nobody listens: a PUBLISH on it only tests the permission


async def probe_access(redis) -> None:
    """Use the keys and channels the README's ACL line grants once, so a user without them is
    refused at start-up (NOPERM names what is missing) rather than on some later call."""
    await redis.exists(keys.QUEUE, keys.RECENT_JOBS)
    await redis.publish(PROBE_CHANNEL, "")
    await redis.pubsub_numsub(PROBE_CHANNEL)  # the enqueue asks whether an idle worker is still there
    pubsub = redis.pubsub()  # the event hub and the workers' wake-ups SUBSCRIBE, and retry a refusal
    try:
        await pubsub.subscribe(PROBE_CHANNEL)
        await pubsub.get_message(timeout=5)  # the confirmation, or the NOPERM raised here
    finally:
        await pubsub.aclose()


async def check_access(redis_url: str) -> None:
    """A start-up check of what waiting cannot fix, each one line: a refused TLS certificate
    (SettingsError), an ACL user without mcp-queue's keys or channels (QueueUnavailable). Anything
    else (Redis not up yet) is left to the callers' retries."""
    if redis_url == MEMORY_URL:
        return
    client = connect(redis_url, socket_connect_timeout=5, socket_timeout=5, retry=Retry(NoBackoff(), 0))
    try:
        await probe_access(client)
    except NoPermissionError as e:
        raise QueueUnavailable(damaged.refused(e)) from None
    except UnknownMaster as e:  # REDIS_URL names a master no Sentinel watches
        raise QueueUnavailable(str(e)) from None
    except (RedisError, OSError) as e:
        if (line := tls_refusal(e, redis_url)) is not None:
            raise SettingsError(line) from None
    finally:
        await client.aclose()
