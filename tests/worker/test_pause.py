"""The pause's Redis side in one process (fakeredis): parking, answering in either order, a cancel
before the park, expiry, and which tools TOOL_APPROVAL asks about."""

from __future__ import annotations

import json
import time

import pytest
from mcp_clock_server import PREFIX
from readers import job_events
from runtimes import clock_worker

from messenger.approvals import _answer
from shared import keys
from shared.approvals import RESUME_SCORE, Answer, read
from shared.handoff import offer
from shared.models import ChatRequest, Question
from shared.settings import load_settings
from worker.job import chat
from worker.pause import Park, needs_approval, park, wake_expired

JOB = "job1"
KEY = f"{JOB}:2"


@pytest.mark.parametrize(
    ("rule", "read_only", "destructive", "asks"),
    [
        ("none", None, True, False),
        ("all", True, False, True),
        ("destructive", None, None, True),  # the MCP spec's defaults: may be destructive
        ("destructive", None, True, True),
        ("destructive", True, None, False),
        ("destructive", False, False, False),
    ],
)
def test_tool_approval_asks_unless_a_tool_says_it_is_harmless(rule, read_only, destructive, asks):
    assert needs_approval(rule, read_only, destructive) is asks


async def asking(redis, expires_at: float | None = None) -> None:
    """A job that has asked (its worker still holds it): queued, leased, its question in its record."""
    question = Question(
        key=KEY, step=2, server="ledger", tool="charge", arguments={"amount": 5}, question="Allow?",
        asked_at=time.time(), expires_at=expires_at or time.time() + 60,
    )  # fmt: skip
    await redis.set(keys.job(JOB), b"{}", px=10_000)
    await redis.zadd(keys.QUEUE, {JOB: 5})
    await redis.set(keys.in_progress(JOB), b"1", px=10_000)
    await redis.set(keys.retry(JOB), b"1")
    await redis.hset(keys.input_request(JOB), "question", question.model_dump_json())


async def answer(redis, key: str = KEY) -> list[bytes]:
    return await _answer(
        redis, record=keys.input_request(JOB), job=keys.job(JOB), waiting=keys.INPUT_WAITING, queue=keys.QUEUE,
        wakeup=keys.WAKEUP_CHANNEL, job_id=JOB, key=key, score=RESUME_SCORE,
        answer=Answer(approved=True, answered_at=1.0).model_dump_json(),
    )  # fmt: skip


async def park_it(redis, expires_at: float | None = None) -> int:
    how = Park(job_try=1, expires_at=expires_at or time.time() + 60)
    return await park(redis, JOB, how, load_settings(redis_url="memory://"), offer("w", 1000))


async def test_a_parked_job_leaves_the_queue_and_an_answer_puts_it_back_at_the_head(redis):
    await asking(redis)
    assert await park_it(redis) == 1
    assert await redis.zscore(keys.QUEUE, JOB) is None and await redis.zscore(keys.INPUT_WAITING, JOB)
    assert not await redis.exists(keys.in_progress(JOB), keys.retry(JOB))
    assert await redis.pttl(keys.job(JOB)) > 60_000, "its keys outlive its question"

    assert await answer(redis, f"{JOB}:9") == [b"wrong", KEY.encode()]
    assert await answer(redis) == [b"ok", KEY.encode()]
    assert await redis.zscore(keys.QUEUE, JOB) == RESUME_SCORE
    assert await redis.zscore(keys.INPUT_WAITING, JOB) is None
    record = await read(redis, JOB)
    assert record.question is None and record.answers[2].approved and record.base == 1 and not record.parked
    assert await answer(redis) == [b"none"], "an answer is taken once"


async def test_an_answer_before_the_park_makes_the_park_wake_the_job(redis):
    await asking(redis)
    assert await answer(redis) == [b"ok", KEY.encode()]  # the worker is still letting go
    assert await redis.zscore(keys.QUEUE, JOB) == 5, "not queued twice"
    assert await park_it(redis) == 0
    assert await redis.zscore(keys.QUEUE, JOB) == 5 and not await redis.exists(keys.in_progress(JOB))
    assert await redis.zscore(keys.INPUT_WAITING, JOB) is None


async def test_a_cancel_before_the_park_leaves_the_job_to_arqs_abort(redis):
    await asking(redis)
    await redis.set(keys.cancel(JOB), b"1")
    assert await park_it(redis) == 0
    assert await redis.zscore(keys.QUEUE, JOB) == 5 and await redis.zscore(keys.INPUT_WAITING, JOB) is None


async def test_an_expired_question_puts_its_job_back_on_the_queue(redis):
    await asking(redis, expires_at=time.time() - 1)
    assert await park_it(redis, expires_at=time.time() - 1) == 1
    assert await wake_expired(redis) == 1
    assert await redis.zscore(keys.QUEUE, JOB) == RESUME_SCORE
    assert (await read(redis, JOB)).question is not None, "still unanswered: the run fails, saying so"
    assert await wake_expired(redis) == 0


async def test_junk_in_the_record_reads_as_no_question(redis):
    await redis.set(keys.input_request(JOB), b"junk")
    assert (await read(redis, JOB)).question is None
    assert await answer(redis) == [b"none"]
    await redis.delete(keys.input_request(JOB))
    await redis.hset(
        keys.input_request(JOB), mapping={"question": b"{", "answer:2": json.dumps({"approved": 1})}
    )
    record = await read(redis, JOB)
    assert record.question is None and record.answers[2].approved


async def test_junk_in_the_waiting_set_is_started_afresh_and_loses_no_job(redis):
    """`mcpq:input:waiting` overwritten by hand (not a sorted set): a park, an answer and the expiry
    sweep each start it afresh instead of failing half-way (a failed script keeps its earlier writes:
    the job was off the queue and in no waiting set, lost)."""
    await redis.set(keys.INPUT_WAITING, b"junk")
    assert await wake_expired(redis) == 0
    await redis.set(keys.INPUT_WAITING, b"junk")
    await asking(redis)
    assert await park_it(redis) == 1
    assert await redis.zscore(keys.INPUT_WAITING, JOB), "parked, not lost"
    await redis.set(keys.INPUT_WAITING, b"junk")
    assert await answer(redis) == [b"ok", KEY.encode()]
    assert await redis.zscore(keys.QUEUE, JOB) == RESUME_SCORE, "answered: back on the queue"


@pytest.fixture
async def worker_state(clean_env, monkeypatch):
    """A worker with the mock model, the clock server and TOOL_APPROVAL=all."""
    async with clock_worker(monkeypatch, tool_approval="all") as found:
        yield found


async def run_chat(redis, state) -> dict:
    """One attempt, as arq starts it (its try counted, as arq's INCR does), parked if it paused."""
    job_try = await redis.incr(keys.retry(JOB))
    request = ChatRequest(message="what is the time now?", mcp_servers=["clock"]).model_dump(
        exclude_none=True
    )
    out = await chat({"mcpq": state, "job_id": JOB, "job_try": job_try, "redis": redis}, request)
    if (how := state.paused.pop(JOB, None)) is not None:
        await park(redis, JOB, how, state.settings, offer(state.worker_id, 1000))
    return out


async def test_a_job_pauses_before_the_call_and_an_answer_runs_it(worker_state):
    redis, state = worker_state
    await redis.set(keys.job(JOB), b"{}")
    await redis.zadd(keys.QUEUE, {JOB: 5})
    paused = await run_chat(redis, state)
    assert paused == {"job_id": JOB, "status": "input_required", "key": KEY}
    assert JOB not in state.running and await redis.zscore(keys.INPUT_WAITING, JOB)
    assert [e.type for e in await job_events(redis, JOB)] == ["start", "tool_call", "input_required"]

    assert await answer(redis) == [b"ok", KEY.encode()]
    done = await run_chat(redis, state)
    assert done["status"] == "completed" and done["attempt"] == 2, done
    assert done["toolCalls"][0]["result"].startswith(PREFIX)
    assert not await redis.exists(keys.input_request(JOB)), "the record went with the ending"


async def test_a_parked_job_whose_question_was_damaged_is_asked_again_after_an_answer(worker_state):
    """Junk written over a parked job's question: nobody could answer it until it expired. An answer
    puts the job back on the queue instead, and its re-run asks the same question anew."""
    redis, state = worker_state
    await redis.set(keys.job(JOB), b"{}")
    await redis.zadd(keys.QUEUE, {JOB: 5})
    assert (await run_chat(redis, state))["status"] == "input_required"
    await redis.hset(keys.input_request(JOB), "question", b"{damaged")
    assert await answer(redis) == [b"asked_again"]
    assert await redis.zscore(keys.QUEUE, JOB) == RESUME_SCORE and not await redis.zscore(
        keys.INPUT_WAITING, JOB
    )
    assert (await run_chat(redis, state))["status"] == "input_required", "asked anew"
    assert (await read(redis, JOB)).question.key == KEY  # type: ignore[union-attr]
    assert await answer(redis) == [b"ok", KEY.encode()]
    assert (await run_chat(redis, state))["status"] == "completed"


async def test_a_job_cancelled_as_it_paused_ends_cancelled_when_it_runs_again(worker_state):
    """The cancel came while its worker let go (the park then left it on the queue): its next run ends
    it, instead of asking again and again while the cancel stands."""
    redis, state = worker_state
    await redis.set(keys.job(JOB), b"{}")
    await redis.set(keys.cancel(JOB), b"1")
    assert (await run_chat(redis, state))["status"] == "input_required"
    ended = await run_chat(redis, state)
    assert ended["status"] == "cancelled" and ended["attempt"] == 2, ended
