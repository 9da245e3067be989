"""The lifecycle log's pieces without a network: the one private SDK hook (logging/setLevel on the
lowlevel server) is pinned, the level store reads junk as the default, each event reads as one line,
and reading the level does not hold back the job's enqueue."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from mcp import Client
from openai_server import eventually

from messenger.client_log import DEFAULT_LEVEL, LevelStore, describe
from messenger.collector import Transcript
from messenger.progress import NOTICE_CHARS, TOOL_CALL, tool_meta
from messenger.server import build_server
from shared import events, keys
from shared.connection import connect
from shared.events import DoneEvent, StartEvent, TokenEvent, TokenUsage, ToolCallEvent, ToolResultEvent

pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")


async def test_the_level_is_read_while_the_job_is_enqueued_not_before(embedded_runtime, monkeypatch):
    """A 2025-11-25 session's level is a Redis read; the caller's first token does not wait for it
    before the enqueue. Here the read answers only once the job has ended: the job ran meanwhile, and
    the log still tells its whole lifecycle, in order."""
    read = LevelStore.reading

    def after_the_job_ended(self, request):
        async def later():
            await eventually(lambda: embedded_runtime.redis.keys(keys.result("*")))
            return await read(self, request)

        return asyncio.ensure_future(later())

    monkeypatch.setattr(LevelStore, "reading", after_the_job_ended)
    logs: list[str] = []

    async def on_log(params) -> None:
        logs.append(params.data)

    async with Client(build_server(embedded_runtime), mode="legacy", logging_callback=on_log) as client:
        result = await client.call_tool("send_message_to_ai", {"message": "a slow level read"})
    job_id = result.structured_content["jobId"]  # type: ignore[index]
    assert result.structured_content["status"] == "completed"  # type: ignore[index]
    assert logs[0] == f"job {job_id} queued" and logs[-1].startswith(f"job {job_id} completed")


class Request:
    def __init__(self, sid: str | None):
        self.headers = {} if sid is None else {"mcp-session-id": sid}


async def test_set_level_is_served_and_advertised_on_2025_only(embedded_runtime):
    server = build_server(embedded_runtime)
    assert server._lowlevel_server.get_request_handler("logging/setLevel") is not None  # pyright: ignore[reportPrivateUsage]
    async with Client(server, mode="legacy") as legacy:
        assert legacy.server_capabilities.logging is not None
        await legacy.set_logging_level("error")  # stdio / in-memory: one session, kept in the process
    async with Client(server, mode="auto") as modern:
        assert modern.server_capabilities.logging is None


@pytest.mark.parametrize("stored", [b"loud", b"\xff", b"debug\n"])
async def test_a_junk_or_foreign_level_reads_as_the_default(embedded_runtime, stored):
    store = LevelStore(embedded_runtime)
    await embedded_runtime.redis.set(keys.log_level("s1"), stored)
    assert await store.level(Request("s1")) == DEFAULT_LEVEL
    await embedded_runtime.redis.lpush(keys.log_level("s2"), b"debug")  # the wrong type of key
    assert await store.level(Request("s2")) == DEFAULT_LEVEL
    assert await store.level(Request("bad id\n")) == store.local  # not a session id: no Redis key read


def test_each_lifecycle_event_is_one_line_at_its_level():
    t = Transcript("j1")
    assert describe(None, t, first=True) == ("info", "job j1 queued")
    assert describe(None, t, first=False) is None  # keep-alives are not logged
    start = StartEvent(job_id="j1", seq=0, attempt=2, ts=0, worker_id="w2", model="m")
    assert describe(start, t, first=False) == ("warning", "job j1 restarted on worker w2, attempt 2")
    assert describe(TokenEvent(job_id="j1", seq=1, attempt=2, ts=0, text="x"), t, first=False) is None
    result = ToolResultEvent(
        job_id="j1", seq=2, attempt=2, ts=0, call_id="c", server="s", tool="t", result="x" * 500,
        is_error=True, duration_ms=1,
    )  # fmt: skip
    level, text = describe(result, t, first=False)  # type: ignore[misc]
    assert level == "warning" and text.startswith("job j1 tool error s/t: ") and len(text) < 340
    done = DoneEvent(
        job_id="j1", seq=3, attempt=2, ts=0, usage=TokenUsage(completion_tokens=7), cost=None,
        finish_reason="stop", model="m",
    )  # fmt: skip
    assert describe(done, t, first=False) == ("info", "job j1 completed: 7 tokens")
    asked = events.InputRequiredEvent(
        job_id="j1", seq=4, attempt=2, ts=0, key="j1:2", server="s", tool="t", arguments={},
        question="Allow the tool call s/t {}?", expires_at=1,
    )  # fmt: skip
    assert describe(asked, t, first=False) == (
        "notice",
        "job j1 waits for your answer: Allow the tool call s/t {}? (respond_to_job, key j1:2)",
    )
    t.apply(asked)
    resumed = StartEvent(job_id="j1", seq=0, attempt=3, ts=0, worker_id="w3", model="m", resumed=2)
    t.apply(resumed)
    assert describe(resumed, t, first=False) == (
        "info",
        "job j1 resumed after the answer on worker w3, attempt 3",
    ), "going on after an answer is no crash"


def test_a_tool_notice_in_meta_is_cut_however_big_the_arguments():
    big = ToolCallEvent(
        job_id="j1", seq=1, attempt=1, ts=0, call_id="c", server="s", tool="t", arguments={"x": "y" * 10_000},
        round=1,
    )  # fmt: skip
    small = big.model_copy(update={"arguments": {"x": 1}})
    assert tool_meta(small)[TOOL_CALL]["arguments"] == {"x": 1}
    cut = tool_meta(big)[TOOL_CALL]["arguments"]
    assert isinstance(cut, str) and cut.startswith('{"x": "yyy') and len(cut) == NOTICE_CHARS + 1


async def test_a_burst_of_calls_reads_its_levels_without_a_connection_each(redis_url):
    """Calls that arrive together read their sessions' levels in the pipelines the session records
    go in (shared.connection.Batch.of), not each on a pool connection of its own: 300 reads at once
    opened about as many connections before."""
    redis = connect(redis_url)
    try:
        store = LevelStore(SimpleNamespace(redis=redis))  # type: ignore[arg-type]
        await redis.set(keys.log_level("s1"), b"debug")
        levels = await asyncio.gather(*(store.level(Request("s1")) for _ in range(300)))
        pool = redis.connection_pool
        opened = len(pool._available_connections) + len(pool._in_use_connections)  # pyright: ignore[reportAttributeAccessIssue]
    finally:
        await redis.aclose()
    assert levels == ["debug"] * 300
    assert opened <= 2  # the SET's, and the one the pipelines took turns on
