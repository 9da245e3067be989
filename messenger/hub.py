"""One pub/sub connection for every job this messenger follows.

Callers `follow(job_id)` to get a Mailbox of that job's raw events; the subscription is confirmed by
Redis before `follow` returns, so a job enqueued afterwards cannot publish into the void. A job
enqueued `meanwhile` (sent before the SUBSCRIBE) may publish before the subscription is live: those
events are in its stream, which the follower reads after `follow` returns (collector.follow_events
replays first). After a reconnect every follower gets RESYNC and re-reads the job's stream for what
it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable

from redis.exceptions import RedisError

from shared import keys
from shared.connection import SERVICE, RetryPolicy, buffered_reply

log = logging.getLogger("messenger.hub")

RESYNC = object()  # put into every follower's queue after a reconnect
SUBSCRIBE_TIMEOUT = 10.0
KEEPALIVE_CHANNEL = keys.EVENTS_PREFIX + "~hub"  # "~" never occurs in a job id


class Mailbox:
    """One follower's live messages, in the order the hub read them: a deque and the one reader's
    waiter. An asyncio.Queue's bookkeeping (unfinished-task count, its Event, getter and putter
    queues, a loop check per get) cost 1.5-2 µs of every relayed event with 1,000 jobs followed."""

    __slots__ = ("_items", "_waiter", "direct")

    def __init__(self) -> None:
        self._items: deque = deque()
        self._waiter: asyncio.Future[None] | None = None
        # while the reader waits on an empty mailbox: takes a message in the putter's turn (None:
        # taken) or hands back what to queue (collector.follow_events: a token its relay only holds)
        self.direct: Callable[[object], object] | None = None

    def put_nowait(self, item: object) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            self._items.append(item)
            return
        if self.direct is not None and not self._items:
            try:
                left = self.direct(item)
            except Exception as e:  # (the reader's own: it reads the message itself)
                log.debug("a message taken at once failed (%r); queued", e)
                left = item
            if left is None:
                return
            item = left
        self._items.append(item)
        waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)

    def get_nowait(self) -> object:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.popleft()

    async def get(self) -> object:
        """The next message, waiting for it (one reader at a time)."""
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


def _outcome_read(future: asyncio.Future[None]) -> None:
    """Mark a future's exception as read (asyncio logs one nobody read)."""
    if not future.cancelled():
        future.exception()


class EventHub:
    def __init__(self, redis, policy: RetryPolicy = SERVICE):
        self._redis = redis
        self._policy = policy  # the pool's: a lost subscription is retried as patiently as a command
        self._pubsub = redis.pubsub()
        self._followers: dict[str, set[Mailbox]] = {}
        self._confirmations: dict[str, asyncio.Future[None]] = {}
        self._connected = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._subscribe_lock = asyncio.Lock()  # concurrent first subscribes would each open a connection
        # (SUBSCRIBE|UNSUBSCRIBE, channel, the future its sender waits on: None for an UNSUBSCRIBE)
        self._changes: list[tuple[str, str, asyncio.Future[None] | None]] = []
        self._changer: asyncio.Task[None] | None = None
        self._reads = 0  # messages read so far: a reader that reads is alive, however far behind

    async def start(self) -> None:
        self._reader = asyncio.create_task(self._read(), name="event-hub")

    async def close(self) -> None:
        if self._reader:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()

    @property
    def following(self) -> int:
        return len(self._followers)

    @contextlib.asynccontextmanager
    async def follow(
        self, job_id: str, meanwhile: Callable[[], Awaitable[object]] | None = None
    ) -> AsyncIterator[Mailbox]:
        """`meanwhile` (the job's enqueue) runs at once, while the SUBSCRIBE is sent and confirmed: a
        caller's first token waits for neither (the SUBSCRIBE goes from a task of its own, a loop turn
        later or more: 0.4 ms p50 on a busy box, bench/NOTES.md). Read the job's stream before its live
        events (collector.follow_events does) to see what it published before the confirmation. A
        SUBSCRIBE that cannot be sent fails the follow, as a confirmation that never comes does, with
        the job enqueued. The follows that start in one loop turn share one SUBSCRIBE (and their ends
        one UNSUBSCRIBE, which a follow's end queues and does not wait for: a call's answer went out a
        loop turn or more later, its task woken once more, for a command whose outcome nobody used)."""
        channel = keys.events(job_id)
        queue = Mailbox()
        followers = self._followers.setdefault(channel, set())
        followers.add(queue)
        sent: asyncio.Future[None] | None = None
        try:
            if len(followers) == 1:
                self._confirmations[channel] = asyncio.get_running_loop().create_future()
                if not self._connected.is_set():  # (wait_for would cost a task and a loop turn even so)
                    await asyncio.wait_for(self._connected.wait(), SUBSCRIBE_TIMEOUT)
                sent = self._change("SUBSCRIBE", channel)
            if meanwhile is not None:
                await meanwhile()
            if sent is not None:
                await sent
                sent = None  # (its outcome read: no callback to read it at the end)
            pending = self._confirmations.get(channel)
            if pending is not None:
                await self._confirmed(pending)
            yield queue
        finally:
            if sent is not None:  # (meanwhile or the send raised: nobody else reads its outcome)
                sent.add_done_callback(_outcome_read)
            followers.discard(queue)
            if not followers:  # the UNSUBSCRIBE goes in order with the changes after it; nobody waits for it
                self._followers.pop(channel, None)
                self._confirmations.pop(channel, None)
                self._queue_change("UNSUBSCRIBE", channel, None)

    def _change(self, command: str, channel: str) -> asyncio.Future[None]:
        """Queue a SUBSCRIBE or UNSUBSCRIBE of `channel`: done once sent (or failed as the send did)."""
        future = asyncio.get_running_loop().create_future()
        self._queue_change(command, channel, future)
        return future

    def _queue_change(self, command: str, channel: str, future: asyncio.Future[None] | None) -> None:
        self._changes.append((command, channel, future))
        if self._changer is None or self._changer.done():
            self._changer = asyncio.create_task(self._send_changes(), name="event-hub-subscriptions")

    async def _send_changes(self) -> None:
        """Send the queued changes in order, each run of one command as one command with all its
        channels: 1,000 callers in a second were 2,000 commands, each through redis-py's pub/sub
        layers (about 5 % of a busy messenger's samples)."""
        while self._changes:
            batch, self._changes = self._changes, []
            try:
                await self._send_batch(batch)
            finally:  # (cancelled: the hub is closing) no follow waits for ever on its change
                for *_, future in batch:
                    if future is not None and not future.done():
                        future.cancel()

    async def _send_batch(self, batch: list[tuple[str, str, asyncio.Future[None] | None]]) -> None:
        async with self._subscribe_lock:
            start = 0
            for end in range(1, len(batch) + 1):
                if end < len(batch) and batch[end][0] == batch[start][0]:
                    continue
                run, start = batch[start:end], end
                send = self._pubsub.subscribe if run[0][0] == "SUBSCRIBE" else self._pubsub.unsubscribe
                try:
                    await send(*(channel for _, channel, _ in run))
                except Exception as e:
                    for *_, future in run:
                        if future is not None and not future.done():
                            future.set_exception(e)
                else:
                    for *_, future in run:
                        if future is not None and not future.done():
                            future.set_result(None)

    async def _confirmed(self, pending: asyncio.Future[None]) -> None:
        """Wait for Redis to confirm a subscription for as long as the reader keeps reading: a busy
        messenger (2,000 callers subscribing at once) is slow to reach the confirmation, not broken;
        SUBSCRIBE_TIMEOUT with not one message read is a stuck connection, and fails the caller."""
        while True:
            read = self._reads
            try:
                return await asyncio.wait_for(asyncio.shield(pending), SUBSCRIBE_TIMEOUT)
            except TimeoutError:
                if self._reads == read:
                    await self._drop_stuck()
                    raise

    async def _drop_stuck(self) -> None:
        """Close the connection a confirmation never came on, nothing read: half-open (a partition or
        failover: no answer, no RST), the reader would wait on it for good and every later follow fail
        the same way. Its read then fails and it connects anew: redis-py subscribes every channel again
        and _on_reconnect has each follower re-read its stream."""
        connection = self._pubsub.connection
        if connection is not None:  # (a follow timed out beside it: reads since then keep the new one)
            log.warning("event subscription stuck (no reply in %.0f s); connecting again", SUBSCRIBE_TIMEOUT)
            await connection.disconnect(nowait=True)

    async def _on_reconnect(self, _connection) -> None:
        log.warning("event subscription reconnected; %d jobs re-read their streams", len(self._followers))
        for followers in self._followers.values():
            for queue in followers:
                queue.put_nowait(RESYNC)

    async def _read(self) -> None:
        failures = 0
        while True:
            try:
                if not self._connected.is_set():
                    await self._connect()
                # get_message's first half (blocks; no timer per message): a job's event is dispatched
                # from the reply itself, without redis-py building a message dict for it
                response = await self._pubsub.parse_response(block=True)
                failures = 0
                while response is not None:
                    await self._dispatch(response)
                    response = self._buffered()
            except (RedisError, OSError, RuntimeError) as e:
                failures += 1
                delay = self._policy.delay(failures)
                level = logging.WARNING if failures == 1 else logging.DEBUG  # one line per outage
                log.log(level, "event subscription lost (%s); retrying until Redis answers", e)
                await asyncio.sleep(delay)

    def _buffered(self):
        """The next reply the connection has already read from its socket, or None: a burst of 1,000
        events costs one parse_response (health check, retry wrapper, timeout), not 1,000. An error
        reply is raised, as parse_response raises it, never handed to handle_message as a message."""
        return buffered_reply(self._pubsub.connection)

    async def _dispatch(self, response) -> None:
        self._reads += 1
        if type(response) is list and response[0] == b"message":
            for queue in self._followers.get(response[1].decode(), ()):
                queue.put_nowait(response[2])
            return
        message = await self._pubsub.handle_message(response)  # (redis-py's bookkeeping of the rest)
        if message is not None and message["type"] == "subscribe":
            pending = self._confirmations.pop(message["channel"].decode(), None)
            if pending is not None and not pending.done():
                pending.set_result(None)

    async def _connect(self) -> None:
        """Open the one connection, subscribed for good to a channel nobody publishes on.

        Staying subscribed keeps redis-py from sending a health-check PING and reading its reply
        itself, which would collide with this reader.
        """
        async with self._subscribe_lock:
            await self._pubsub.subscribe(KEEPALIVE_CHANNEL)
            self._pubsub.connection.register_connect_callback(self._on_reconnect)
            self._connected.set()
