"""`REDIS_URL=redis+sentinel://…`: every process asks the Sentinels which Redis is the primary, and asks
again whenever a connection breaks, so a failover is followed without a restart.

    redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/<master-name>[/<db>]

The user and password are the primary's (and its replicas'); the Sentinels themselves are asked
without one. A port left out is Sentinel's 26379.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import weakref
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
)
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, RedisError, ResponseError, TimeoutError

SCHEME = "redis+sentinel://"
DEFAULT_PORT = 26379
FORM = "redis+sentinel://[[user]:password@]host:port[,host:port…]/<master-name>[/<db>]"
_NAME = re.compile(
    r"[A-Za-z0-9_.:-]{1,128}"
)  # what sentinel.conf's `sentinel monitor <name>` takes in practice
_HOST = re.compile(r"\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9_.-]+)")
# a Sentinel that does not answer within this is skipped for the next one (they answer in microseconds)
SENTINEL_TIMEOUT_SECONDS = 2.0
FOLLOW_SECONDS = 1.0  # how often a process asks whether the primary changed (one SENTINEL MASTERS)

log = logging.getLogger("mcpq.sentinel")


@dataclass(frozen=True)
class SentinelUrl:
    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int
    username: str | None
    password: str | None

    def where(self) -> str:
        return ",".join(f"{host}:{port}" for host, port in self.sentinels)


class UnknownMaster(RedisError):
    """The Sentinels that answered watch no primary of the name REDIS_URL gives: waiting will not fix it.
    Not a ConnectionError, so no connect retry hides it (a running process's own loops still retry)."""


def is_sentinel_url(url: str) -> bool:
    return url.startswith(SCHEME)


def parse_sentinel_url(url: str) -> SentinelUrl:
    """The parts of a redis+sentinel:// URL; a ValueError names the first wrong part (never the password)."""
    rest = url[len(SCHEME) :]
    if "?" in rest or "#" in rest:
        raise ValueError(f"takes no ?options or #fragment; the form is {FORM}")
    userinfo, at, rest = rest.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        if not colon:
            raise ValueError(f"before '@' give user:password or :password; the form is {FORM}")
        username, password = unquote(user) or None, unquote(secret)
    hosts, slash, path = rest.partition("/")
    if not slash or not path:
        raise ValueError(f"names no master after the Sentinel addresses; the form is {FORM}")
    master, _, db_part = path.partition("/")
    master = unquote(master)
    if not _NAME.fullmatch(master):
        raise ValueError(
            f"master name {master[:40]!r} is not a Sentinel master name (letters, digits, . _ : -)"
        )
    if db_part and not (db_part.isdigit() and int(db_part) < 1_000_000):
        raise ValueError(f"database {db_part[:20]!r} after the master name is not a number")
    return SentinelUrl(_addresses(hosts), master, int(db_part or 0), username, password)


def _addresses(hosts: str) -> tuple[tuple[str, int], ...]:
    found = []
    for part in hosts.split(","):
        match = _HOST.match(part)
        if not part or not match:
            raise ValueError(f"Sentinel address {part[:60]!r} is not host:port; the form is {FORM}")
        port = part[match.end() :]
        if port and not (port[0] == ":" and port[1:].isdigit() and 0 < int(port[1:]) < 65536):
            raise ValueError(f"Sentinel address {part[:60]!r} has no valid port (1-65535)")
        found.append((match.group(1) or match.group(2), int(port[1:]) if port else DEFAULT_PORT))
    return tuple(found)


class _Sentinels(Sentinel):
    """redis-py's Sentinel client, with errors that say which case it is: no Sentinel answered (wait),
    the primary is down or being replaced (wait), or no Sentinel knows the master name (fix REDIS_URL)."""

    def __init__(self, url: SentinelUrl, **connection_kwargs: Any):
        # no socket_timeout: redis-py sends under asyncio.wait_for then, which on Python 3.11 can swallow a
        # cancel (a process stopping hung for ever); discover_master bounds each question itself
        timeouts = {"socket_connect_timeout": SENTINEL_TIMEOUT_SECONDS}
        super().__init__(url.sentinels, sentinel_kwargs=timeouts, **connection_kwargs)
        self.url = url

    async def discover_master(self, service_name: str):
        unreachable, known, answered = [], set(), 0
        for number, sentinel in enumerate(self.sentinels):
            try:
                async with asyncio.timeout(SENTINEL_TIMEOUT_SECONDS):
                    masters = await sentinel.sentinel_masters()
            except (
                ConnectionError,
                TimeoutError,
                ResponseError,
                OSError,
            ) as e:  # OSError: the builtin timeout
                kwargs = sentinel.connection_pool.connection_kwargs
                unreachable.append(f"{kwargs['host']}:{kwargs['port']} ({type(e).__name__})")
                continue
            answered += 1
            known.update(masters)
            state = masters.get(service_name)
            if state and self.check_master_state(state, service_name):
                self.sentinels[0], self.sentinels[number] = (
                    sentinel,
                    self.sentinels[0],
                )  # ask it first next time
                return state["ip"], state["port"]
        if answered and service_name not in known:  # a Sentinel that answers knows every master it watches
            names = ", ".join(sorted(map(str, known))) or "none"
            raise UnknownMaster(
                f"no Sentinel that answered ({answered} of {len(self.sentinels)} at {self.url.where()}) "
                f"watches a master named {service_name!r} (they watch: {names}); fix the master name in REDIS_URL"
            )
        if not answered:
            raise MasterNotFoundError(f"no Sentinel answered: {', '.join(unreachable)}")
        raise MasterNotFoundError(
            f"the Sentinels report master {service_name!r} down (a failover under way?)"
        )


class _PrimaryConnection(SentinelManagedConnection):
    """Every try of a connect asks the Sentinels again. redis-py nests its connect retry inside the
    Sentinel one, so the pool's backoff (about 9 s) was spent dialling the dead primary's address while
    the promoted replica already served; here the inner connect tries once."""

    async def connect(self):
        retry, self.retry = self.retry, Retry(NoBackoff(), 0)
        try:
            await retry.call_with_retry(self._connect_retry, lambda _error: asyncio.sleep(0))
        finally:
            self.retry = retry
        pool = self.connection_pool
        if hasattr(pool, "follow"):  # a FollowingPool, through the weak proxy redis-py keeps
            pool.follow()


class FollowingPool(SentinelConnectionPool):
    """Asks the Sentinels every FOLLOW_SECONDS which Redis is the primary, and when they name another,
    drops every connection to the old one, those waiting for a reply too. A primary that stops
    answering without closing its connections (a machine lost, a network cut, a frozen VM) would
    otherwise keep every command and subscription waiting on it for as long as TCP takes to notice
    (hours), whatever the Sentinels decided."""

    _watcher: asyncio.Task[None] | None = None

    def follow(self) -> None:
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(
                _follow(weakref.ref(self)), name="sentinel"
            )

    async def disconnect(self, inuse_connections: bool = True) -> None:
        if inuse_connections and self._watcher is not None:  # the pool is being closed
            self._watcher.cancel()
        await super().disconnect(inuse_connections)

    async def get_master_address(self):
        """The primary the Sentinels name now; when it is another, every connection to the old one is
        dropped, whoever asked first (a connection being made, or the once-a-second watcher). redis-py's
        own update dropped only the idle ones, and the watcher then found the address already new and
        dropped nothing: the connections waiting on a frozen primary (the event hub's subscription, a
        pipeline) waited for good, and the calls that needed them with them."""
        address = await self.sentinel_manager.discover_master(self.service_name)
        if self.master_address is not None and tuple(address) != tuple(self.master_address):
            await self.leave(address)
        self.master_address = address
        return address

    async def leave(self, address: tuple[str, int]) -> None:
        old, self.master_address = self.master_address, address
        was = f"{old[0]}:{old[1]}" if old else "?"
        log.warning("the Sentinels name %s:%s the primary now, not %s; reconnecting", *address, was)
        for connection in [*self._available_connections, *self._in_use_connections]:
            if (getattr(connection, "host", None), getattr(connection, "port", None)) != tuple(address):
                await connection.disconnect(nowait=True)


async def _follow(pool_ref: weakref.ref[FollowingPool]) -> None:
    while True:
        await asyncio.sleep(FOLLOW_SECONDS)
        pool = pool_ref()
        if pool is None:
            return
        with contextlib.suppress(RedisError, OSError):  # none answered, or a failover under way
            await pool.get_master_address()  # (leaves the old primary when the Sentinels name another)
        del pool


def sentinel_pool(
    url: str, pool_class: type[SentinelConnectionPool] = FollowingPool, **connection_kwargs: Any
) -> SentinelConnectionPool:
    """A pool whose every new connection goes to the primary the Sentinels name at that moment; a
    connection that breaks, or finds its server demoted to a replica (READONLY), reconnects the same way."""
    parsed = parse_sentinel_url(url)
    sentinels = _Sentinels(parsed)
    return pool_class(
        parsed.master, sentinels, db=parsed.db, username=parsed.username, password=parsed.password,
        connection_class=_PrimaryConnection, **connection_kwargs,
    )  # fmt: skip
