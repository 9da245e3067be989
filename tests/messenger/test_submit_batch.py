"""Submits made at the same moment share one pipeline (shared.connection.Batch): each still gets its
own answer, a full queue or a duplicate id is that submit's error alone, and a flushed script cache
costs an EVAL, never a lost or doubled job."""

from __future__ import annotations

import asyncio
import os
import uuid
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from runtimes import runtime_for

from messenger.queue import new_job_id
from shared import keys
from shared.errors import InvalidRequest, QueueFull
from shared.models import ChatRequest


async def test_submits_at_once_after_a_script_flush_each_queue_their_job_once(redis_url):
    async with runtime_for(redis_url) as runtime:
        await runtime.redis.script_flush()
        ids = await asyncio.gather(
            *(runtime.queue.submit(ChatRequest(message=f"m{i}"), caller="alice") for i in range(50))
        )
        queued = await runtime.redis.zrange(keys.QUEUE, 0, -1)
        assert sorted(j.encode() for j in ids) == sorted(queued)
        assert len(set(ids)) == 50


async def test_a_duplicate_or_a_full_queue_fails_only_its_own_submit(redis_url):
    async with runtime_for(redis_url, max_queue_depth=3) as runtime:
        first = await runtime.queue.submit(ChatRequest(message="first"), caller="alice")
        outcomes = await asyncio.gather(
            runtime.queue.submit(ChatRequest(message="again"), caller="alice", job_id=first),
            runtime.queue.submit(ChatRequest(message="second"), caller="alice"),
            runtime.queue.submit(ChatRequest(message="third"), caller="alice"),
            runtime.queue.submit(ChatRequest(message="fourth"), caller="alice"),
            return_exceptions=True,
        )
        assert isinstance(outcomes[0], InvalidRequest)
        assert all(isinstance(o, str) for o in outcomes[1:3])
        assert isinstance(outcomes[3], QueueFull)
        assert await runtime.redis.zcard(keys.QUEUE) == 3
        with pytest.raises(QueueFull):
            await runtime.queue.submit(ChatRequest(message="fifth"), caller="alice")


@settings(max_examples=300)
@given(st.binary(min_size=16, max_size=16))
def test_a_new_job_id_is_uuid4_hex_of_the_same_random_bytes(random: bytes):
    with mock.patch.object(os, "urandom", lambda n: random[:n]):
        assert new_job_id() == uuid.UUID(bytes=random, version=4).hex
