"""A tool loop's journal, in one process: the `chat` job called as arq calls it (fakeredis, the real
stdio ledger server), an attempt that dies mid-answer or mid-call, and the attempt after it.

The re-run goes on from the last finished step: a tool that answered is not called again, a finished
model turn is not asked again, the job's stream tells each step once, and every tools/call carries
the same idempotency key on every attempt."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest
from mcp_ledger_server import PREFIX, read_ledger
from openai_server import eventually
from readers import job_events

from messenger.collector import Transcript
from shared import keys
from shared.connection import connect
from shared.events import TokenUsage
from shared.settings import load_settings
from shared.tool_client import ToolServers
from shared.tool_config import ToolServerConfig
from worker import accounting, journal
from worker.job import WorkerState, call_tool, chat
from worker.providers import ModelCall, Provider, StreamEnd, ToolCall
from worker.publisher import EventWriter

pytestmark = pytest.mark.anyio

LEDGER = str(Path(__file__).resolve().parents[1] / "mcp_ledger_server.py")
JOB = "job-journal"
REQUEST = {"message": "charge me", "mcp_servers": ["ledger"]}
PREAMBLE = "Let me charge that. "
ANSWER = f"{PREAMBLE}Done: it says {PREFIX} charged 5"


class ToolLoop(Provider):
    """Turn 1: a preamble, then one `charge` call; turn 2: an answer that ends with the tool's result.
    `die_after`: in turn 2, once that many pieces reached the stream, the attempt dies (as a worker
    that is shut down does: a CancelledError that is no user's cancel)."""

    name = "loop"

    def __init__(self, redis, seconds: float = 0, die_after: int | None = None):
        self.redis, self.seconds, self.die_after = redis, seconds, die_after
        self.calls: list[ModelCall] = []

    async def stream(self, call: ModelCall) -> AsyncGenerator[str | StreamEnd, None]:
        self.calls.append(call)
        results = [m["content"] for m in call.messages if m["role"] == "tool"]
        if not results:
            yield PREAMBLE
            arguments = json.dumps({"amount": 5, "seconds": self.seconds})
            usage = TokenUsage(prompt_tokens=10, completion_tokens=3, total_tokens=13)
            yield StreamEnd("mock-1", "tool_calls", usage, (ToolCall("c1", "ledger__charge", arguments),))
            return
        pieces = ["Done: ", "it ", "says ", *results]
        for i, piece in enumerate(pieces):
            if i == self.die_after:
                await eventually(lambda n=i: _tokens_written(self.redis, n))
                raise asyncio.CancelledError  # the worker went away mid-answer
            yield piece
        usage = TokenUsage(prompt_tokens=20, completion_tokens=len(pieces), total_tokens=20 + len(pieces))
        yield StreamEnd("mock-1", "stop", usage)


async def _tokens_written(redis, count: int) -> bool:
    text = "".join(e.text for e in await job_events(redis, JOB) if e.type == "token")
    return text.count(" ") >= len(PREAMBLE.split()) + count


@pytest.fixture
async def world(clean_env, monkeypatch, tmp_path):
    """A Redis, the ledger server (its calls logged), and `attempt(n, provider)` running the job."""
    monkeypatch.setattr("shared.connection._memory_server", None)
    redis = connect("memory://")
    ledger = tmp_path / "ledger.jsonl"
    config = load_settings(
        redis_url="memory://", ai_provider="mock",
        mcp_servers={"ledger": {"command": sys.executable, "args": [LEDGER], "env": {"LEDGER": str(ledger)}}},
    )  # fmt: skip
    servers = ToolServers(config.mcp_servers, config.tool_call_timeout_seconds)

    async def attempt(job_try: int, provider: Provider, job=chat, request: dict = REQUEST) -> dict:
        state = WorkerState(config, provider, f"worker-{job_try}", EventWriter(redis), tool_servers=servers)
        return await job({"mcpq": state, "job_id": JOB, "job_try": job_try, "redis": redis}, dict(request))

    def calls() -> list[dict]:
        return read_ledger(ledger)

    yield redis, attempt, calls
    await servers.aclose()
    await redis.aclose()


async def told(redis) -> Transcript:
    """The job's story as a caller's follower tells it from the stream."""
    transcript = Transcript(JOB)
    for event in await job_events(redis, JOB):
        transcript.apply(event)
    return transcript


async def test_each_step_is_journaled_with_its_event_and_each_call_carries_its_idempotency_key(world):
    redis, attempt, calls = world
    result = await attempt(1, ToolLoop(redis))

    assert result["status"] == "completed", result["error"]
    assert result["aiResponse"] == ANSWER
    assert [c["key"] for c in calls()] == [f"{JOB}:2"]  # step 1 is the turn, step 2 its one call
    journal = {int(k): json.loads(v) for k, v in (await redis.hgetall(keys.journal(JOB))).items()}
    assert sorted(journal) == [1, 2]
    assert journal[1]["kind"] == "turn" and journal[1]["text"] == PREAMBLE
    assert journal[1]["end"]["tool_calls"] == [["c1", "ledger__charge", '{"amount": 5, "seconds": 0}']]
    assert journal[2]["kind"] == "tool" and journal[2]["result"] == f"{PREFIX} charged 5"
    events = await job_events(redis, JOB)
    assert [(e.type, getattr(e, "step", None)) for e in events if e.type.startswith("tool")] == [
        ("tool_call", 1), ("tool_result", 2),
    ]  # fmt: skip
    assert 0 < await redis.ttl(keys.journal(JOB)) <= keys.ENDED_STREAM_SECONDS  # it goes with the job


async def test_a_rerun_after_a_death_mid_answer_reuses_the_tool_result_and_asks_only_the_unfinished_turn(
    world,
):
    redis, attempt, calls = world
    with pytest.raises(asyncio.CancelledError):
        await attempt(1, ToolLoop(redis, die_after=2))
    second = ToolLoop(redis)
    result = await attempt(2, second)

    assert result["status"] == "completed", result["error"]
    assert [c["key"] for c in calls()] == [f"{JOB}:2"], "the tool that had answered is not called again"
    assert len(second.calls) == 1, "the finished turn is not asked again"
    assert second.calls[0].messages[-1] == {
        "role": "tool",
        "tool_call_id": "c1",
        "content": f"{PREFIX} charged 5",
    }
    assert result["aiResponse"] == ANSWER
    assert [r["result"] for r in result["toolCalls"]] == [f"{PREFIX} charged 5"]
    # usage: the journaled turn's (reported) plus the answer's; the dead tail is counted apart
    assert (result["usage"]["promptTokens"], result["usage"]["completionTokens"]) == (30, 3 + 4)

    events = await job_events(redis, JOB)
    rerun = [e for e in events if e.attempt == 2]
    assert rerun[0].type == "start" and rerun[0].resumed == 2
    assert not [e for e in rerun if e.type.startswith("tool")], "no step is told twice"
    assert [e.type for e in events].count("tool_call") == 1 and [e.type for e in events].count(
        "tool_result"
    ) == 1
    transcript = await told(redis)
    assert transcript.text == result["aiResponse"], (
        "the follower keeps the journaled text, drops the dead tail"
    )
    assert [r.model_dump(mode="json", by_alias=True) for r in transcript.tool_calls.values()] == result[
        "toolCalls"
    ]

    dead = await accounting.dead_attempts(redis, JOB, 2, REQUEST)
    assert dead is not None and dead["completion_tokens"] == 1, "only the dead turn's piece, not the preamble"


async def test_a_rerun_after_a_death_mid_call_calls_it_again_with_the_same_idempotency_key(world):
    redis, attempt, calls = world
    first = asyncio.create_task(attempt(1, ToolLoop(redis, seconds=1)))
    await eventually(calls)  # the tool is running (for a second: the re-run calls it with the same arguments)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    result = await attempt(2, ToolLoop(redis))

    assert result["status"] == "completed", result["error"]
    assert [c["key"] for c in calls()] == [f"{JOB}:2", f"{JOB}:2"], "sent again, with the same key"
    assert result["aiResponse"] == ANSWER
    events = await job_events(redis, JOB)
    assert [(e.type, e.attempt) for e in events if e.type.startswith("tool")] == [
        ("tool_call", 1), ("tool_result", 2),
    ]  # fmt: skip
    assert (await told(redis)).text == result["aiResponse"]


async def test_a_journal_key_of_the_wrong_type_fails_the_job_naming_it(world):
    redis, attempt, calls = world
    await redis.set(keys.journal(JOB), "junk")
    result = await attempt(1, ToolLoop(redis))
    assert result["status"] == "failed"
    assert f"{keys.journal(JOB)} holds a value that is not a hash" in result["error"]
    assert calls() == [], "no tool ran with a journal that cannot hold its result"


async def test_junk_in_the_journal_ends_the_replay_there_and_the_entries_after_it_go(redis, caplog):
    turn = {"kind": "turn", "text": PREAMBLE, "model": "mock-1", "fallback_from": None,
            "end": {"model": "mock-1", "finish_reason": "tool_calls", "usage": None,
                    "tool_calls": [["c1", "ledger__charge", "{}"]]}}  # fmt: skip
    later = {
        "kind": "tool",
        "call_id": "c9",
        "server": "ledger",
        "tool": "charge",
        "arguments": {},
        "round": 2,
    }
    await redis.hset(
        keys.journal(JOB), mapping={"1": json.dumps(turn), "2": "{not json", "5": json.dumps(later)}
    )

    replay = await journal.read(redis, JOB)

    assert list(replay.turns) == [1] and replay.results == {} and replay.last_step == 1
    assert replay.turns[1].text == PREAMBLE and replay.turns[1].end.tool_calls[0].name == "ledger__charge"
    assert await redis.hkeys(keys.journal(JOB)) == [b"1"], "the junk and the step after it are gone"
    assert "not JSON" in caplog.text and "removing 2 journal entries" in caplog.text


async def test_a_tool_call_job_rerun_after_its_result_was_journaled_does_not_call_again(world):
    redis, attempt, calls = world
    request = {"server": "ledger", "tool": "charge", "arguments": {"amount": 7}}
    first = await attempt(1, ToolLoop(redis), call_tool, request)
    again = await attempt(2, ToolLoop(redis), call_tool, request)  # its worker died before arq stored it

    assert first["aiResponse"] == again["aiResponse"] == f"{PREFIX} charged 7"
    assert [c["key"] for c in calls()] == [f"{JOB}:1"], "the call that answered is not sent again"
    events = await job_events(redis, JOB)
    assert [(e.type, e.attempt) for e in events] == [
        ("start", 1), ("tool_call", 1), ("tool_result", 1), ("done", 1), ("start", 2), ("done", 2),
    ]  # fmt: skip
    assert (await told(redis)).result().tool_calls[0].result == f"{PREFIX} charged 7"


def readme_payments_server(tmp_path: Path) -> tuple[Path, Path]:
    """The README's deduping tool as a stdio server file, its `bill` writing one x per charge."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("\n### Durable tool loops", 1)[1].split("\n## ", 1)[0]
    (example,) = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    server, bills = tmp_path / "payments.py", tmp_path / "bills"
    server.write_text(
        f"def bill(customer, cents):\n    open({str(bills)!r}, 'a').write('x')\n    return 'R1'\n\n"
        f"{example}\nmcp.run('stdio')\n"
    )
    return server, bills


async def test_the_readmes_deduping_tool_charges_once_per_idempotency_key(tmp_path):
    server, bills = readme_payments_server(tmp_path)
    servers = ToolServers({"payments": ToolServerConfig(command=sys.executable, args=[str(server)])})
    try:
        answers = [
            await servers.call("payments", "charge", {"customer": "ada", "cents": 250}, idempotency_key=key)
            for key in ("job-1:2", "job-1:2", "job-1:4")
        ]
    finally:
        await servers.aclose()
    assert [a.text for a in answers] == ["charged ada 250 cents, receipt R1"] * 3
    assert bills.read_text() == "xx", "the same step sent again charged nothing; another step did"
