"""A task's live state in `statusMessage` (the 2026 tasks extension sends no progress on tasks): its
place in the queue, or its worker, tokens so far and latest words, read by `tasks/get` on another
messenger replica than the one that created it (state from Redis), in both protocol eras."""

from __future__ import annotations

import re

import anyio
import pytest
from mcp import Client
from mcp_helpers import messenger_env, running_messengers
from processes import worker_ids

from messenger.tasks.client import Tasks, cancel_task, get_task, start_task
from messenger.tasks.models import LATEST_CHARS
from worker.providers.mock import mock_reply

ERAS = pytest.mark.parametrize(
    ("mode", "era"), [("auto", "2026-07-28"), ("legacy", "2025-11-25")], ids=["modern", "legacy"]
)
PROMPT = " ".join(f"word{i}" for i in range(40))  # a 56-token answer, ~2.2 s at 40 ms a token
RUNNING = re.compile(r"^running on (\S+): (\d+) tokens so far; latest: …(.+)$")


async def until(client: Client, task_id: str, check) -> str:
    """Poll tasks/get until `check(statusMessage)`; returns that statusMessage."""
    seen: list[str] = []
    with anyio.move_on_after(30):
        while True:
            seen.append((await get_task(client, task_id)).status_message or "")
            if check(seen[-1]):
                return seen[-1]
            await anyio.sleep(0.02)
    raise AssertionError(f"task {task_id} never read as wanted; it read: {sorted(set(seen))}")


@ERAS
async def test_status_message_tells_queue_place_then_worker_tokens_and_latest_words_on_any_replica(
    redis_url, redis_server, workers, tmp_path, mode, era
):
    workers.start(redis_url, count=1, WORKER_CONCURRENCY="1", MOCK_TOKEN_DELAY_MS="40")
    prompts = [f"{name} {PROMPT}" for name in ("first", "second", "third")]
    answer = " ".join("".join(mock_reply([{"role": "user", "content": prompts[0]}])).split())
    with running_messengers(tmp_path) as messengers:
        here, there = (messengers.http(messenger_env(redis_url)).url for _ in range(2))
        with anyio.fail_after(90):
            async with (
                Client(here, mode=mode, extensions=[Tasks()]) as creator,
                Client(there, mode=mode, extensions=[Tasks()]) as reader,
            ):
                assert reader.protocol_version == era
                tasks = [await start_task(creator, "send_message_to_ai", {"message": p}) for p in prompts]
                first, second, third = (t.task_id for t in tasks)
                running = await until(reader, first, lambda m: bool(RUNNING.match(m)))
                queued = [(await get_task(reader, t)).status_message for t in (second, third)]
                late = await until(reader, first, lambda m: bool((r := RUNNING.match(m)) and int(r[2]) >= 25))
                for task_id in (first, second, third):
                    await cancel_task(creator, task_id)

    assert queued == ["queued: next in line", "queued: 1 job ahead"]
    worker, tokens, latest = RUNNING.match(late).groups()  # type: ignore[union-attr]
    assert worker in worker_ids(redis_server.client())
    assert RUNNING.match(running)[1] == worker  # type: ignore[index]
    assert 25 <= int(tokens) < 56
    assert len(latest) == LATEST_CHARS and latest in answer, "the latest words are the answer's, so far"
