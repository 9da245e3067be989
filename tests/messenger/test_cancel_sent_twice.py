"""A queued job's cancel whose `cancelled` event redis-py sent again (the connection dropped with the
write's reply on the way: a failover, a network blip) is in the job's stream once: a reader of the
stream (redis-cli, a follower resuming by event id) sees no copy."""

from __future__ import annotations

import hashlib

from relays import losing_one_reply
from runtimes import runtime_for

from shared import keys
from shared.events import _append  # pyright: ignore[reportPrivateUsage]
from shared.models import ChatRequest


async def test_a_cancel_event_sent_again_after_its_reply_was_lost_is_stored_once(redis_server, redis_url):
    client = redis_server.client()
    client.script_load(_append.lua)  # type: ignore[attr-defined]  # (the EVALSHA finds it)
    events_write = hashlib.sha1(_append.lua.encode()).hexdigest().encode()  # type: ignore[attr-defined]
    async with losing_one_reply(redis_server.port, events_write) as port:
        async with runtime_for(f"redis://127.0.0.1:{port}/0") as runtime:
            job_id = await runtime.queue.submit(ChatRequest(message="never runs"), caller="operator")
            cancelled = await runtime.jobs.cancel(job_id)
    assert cancelled.status == "cancelled"
    stored = [fields[b"event"] for _, fields in client.xrange(keys.stream(job_id))]
    assert sum(b'"type":"cancelled"' in event for event in stored) == 1, stored
