"""Human in the loop (worker/pause.py, messenger/approvals.py) with real worker processes, real Redis,
the OpenAI-compatible test server driving a tool call, and a real stdio MCP server whose `charge`
tool says it is destructive (TOOL_APPROVAL=destructive asks before it): a paused job holds no worker,
an answer resumes it on any worker, approved it charges once, declined never, and the model is told."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mcp_ledger_server import PREFIX, read_ledger
from openai_server import eventually
from processes import ROOT, process_env, start_openai_workers, worker_ids
from readers import parse_stream
from runtimes import runtime_for

from messenger.approvals import respond
from messenger.dashboard.views import rows
from messenger.health import report
from shared import keys
from shared.errors import InvalidRequest, JobNotFound
from shared.models import ChatRequest

LEDGER_SERVER = str(Path(__file__).resolve().parents[1] / "mcp_ledger_server.py")
PREAMBLE = "Let me charge that for you. "
REPLY = "The ledger says"
APPROVAL = {"TOOL_APPROVAL": "destructive"}


def servers(ledger: Path) -> dict:
    return {"ledger": {"command": sys.executable, "args": [LEDGER_SERVER], "env": {"LEDGER": str(ledger)}}}


def charge_script(openai_server, tool: str = "ledger__charge") -> None:
    openai_server.script(
        reply=REPLY, tool_preamble=PREAMBLE, tool_calls=[(tool, json.dumps({"amount": 5}))], token_delay=0
    )


def starts(stream: list[dict]) -> list[tuple[int, str]]:
    """(attempt, worker id) of each attempt's start event."""
    return [(e["attempt"], e["worker_id"]) for e in stream if e["type"] == "start"]


async def test_a_paused_job_resumes_on_another_worker_and_charges_once(
    redis_url, redis_server, workers, openai_server, clean_env, tmp_path
):
    ledger = tmp_path / "ledger.jsonl"
    charge_script(openai_server)
    env = {"MCP_SERVERS": json.dumps(servers(ledger)), **APPROVAL}
    (first,) = start_openai_workers(workers, redis_url, openai_server, **env)
    client = redis_server.client()
    async with runtime_for(redis_url, mcp_servers=servers(ledger)) as runtime, asyncio.timeout(60):
        paused = await runtime.jobs.run(ChatRequest(message="charge 5", mcp_servers=["ledger"]), timeout=30)
        job_id = paused.job_id
        assert paused.status == "input_required", paused
        question = paused.input_request
        assert question is not None and question.key == f"{job_id}:2" and question.tool == "charge"
        assert question.arguments == {"amount": 5}
        assert read_ledger(ledger) == [], "nothing charged before the answer"
        await eventually(lambda: client.zscore(keys.INPUT_WAITING, job_id) is not None)
        assert not client.exists(keys.in_progress(job_id)), "no worker holds a paused job"
        assert (await runtime.jobs.get(job_id)).status == "input_required"

        pauser = set(worker_ids(client))
        first.send_signal(signal.SIGTERM)  # the worker that paused it goes away: it holds nothing
        first.wait(30)
        start_openai_workers(workers, redis_url, openai_server, **env)
        assert await respond(runtime.jobs, job_id, approve=True, key=question.key) == question.key
        result = await runtime.jobs.wait(job_id, timeout=30)

        assert result.status == "completed", result
        assert result.ai_response == f"{PREAMBLE}{REPLY} {PREFIX} charged 5"
        assert [c["key"] for c in read_ledger(ledger)] == [question.key], "charged once, with its key"
        stream = parse_stream(await runtime.redis.xrange(keys.stream(job_id)))
        (one, two) = starts(stream)
        assert one[1] in pauser and two[1] not in pauser, f"resumed on another worker: {one} {two}"
        assert result.worker_id == two[1] and result.attempt == two[0] == 2
        assert [e["type"] for e in stream].count("tool_call") == 1, "the call is told once"
        assert not client.exists(keys.input_request(job_id)), "the question went with the job's ending"


async def test_a_declined_call_never_runs_and_the_model_is_told(
    redis_url, redis_server, workers, openai_server, clean_env, tmp_path
):
    ledger = tmp_path / "ledger.jsonl"
    charge_script(openai_server)
    env = {"MCP_SERVERS": json.dumps(servers(ledger)), **APPROVAL}
    start_openai_workers(workers, redis_url, openai_server, **env)
    async with runtime_for(redis_url, mcp_servers=servers(ledger)) as runtime, asyncio.timeout(60):
        paused = await runtime.jobs.run(ChatRequest(message="charge 5", mcp_servers=["ledger"]), timeout=30)
        assert paused.status == "input_required", paused
        await respond(runtime.jobs, paused.job_id, approve=False, note="not this month")
        result = await runtime.jobs.wait(paused.job_id, timeout=30)
    assert result.status == "completed", result
    assert result.ai_response == (
        f"{PREAMBLE}{REPLY} Error: not run: the user declined this call; they said: not this month"
    )
    assert read_ledger(ledger) == [], "a declined call is never sent"
    assert result.tool_calls[0].is_error


async def test_a_read_only_tool_runs_without_asking(
    redis_url, redis_server, workers, openai_server, clean_env, tmp_path
):
    ledger = tmp_path / "ledger.jsonl"
    charge_script(openai_server, tool="ledger__balance")
    openai_server.script(tool_calls=[("ledger__balance", "{}")])
    start_openai_workers(
        workers, redis_url, openai_server, MCP_SERVERS=json.dumps(servers(ledger)), **APPROVAL
    )
    async with runtime_for(redis_url, mcp_servers=servers(ledger)) as runtime, asyncio.timeout(60):
        result = await runtime.jobs.run(ChatRequest(message="balance", mcp_servers=["ledger"]), timeout=30)
    assert result.status == "completed", result
    assert result.ai_response == f"{PREAMBLE}{REPLY} {PREFIX} 0 charges"


async def test_bad_answers_are_one_line_errors_and_lose_nothing(
    redis_url, redis_server, workers, openai_server, clean_env, tmp_path, monkeypatch
):
    ledger = tmp_path / "ledger.jsonl"
    charge_script(openai_server)
    start_openai_workers(
        workers, redis_url, openai_server, MCP_SERVERS=json.dumps(servers(ledger)), **APPROVAL
    )
    async with runtime_for(redis_url, mcp_servers=servers(ledger)) as runtime, asyncio.timeout(60):
        request = ChatRequest(message="charge 5", mcp_servers=["ledger"])
        job_id = await runtime.queue.submit(request, caller="alice")
        paused = await runtime.jobs.wait(job_id, timeout=30)
        assert paused.status == "input_required" and paused.input_request is not None
        key = paused.input_request.key

        with pytest.raises(InvalidRequest, match=f"waits for an answer to {key}, not to {job_id}:7"):
            await respond(runtime.jobs, job_id, approve=True, key=f"{job_id}:7")
        with pytest.raises(InvalidRequest, match=f"waits for an answer to {key}, not to k{'x' * 39}…$"):
            await respond(runtime.jobs, job_id, approve=True, key="k" + "x" * 1_000_000)  # not echoed whole
        with pytest.raises(InvalidRequest, match=r"^invalid note: Input should be a valid string"):
            await respond(runtime.jobs, job_id, approve=False, note="no \ud800")  # a lone surrogate
        with pytest.raises(JobNotFound):  # another tenant's job is as unknown as a missing one
            await respond(runtime.jobs, job_id, approve=True, reader="bob")
        with pytest.raises(JobNotFound):
            await respond(runtime.jobs, "f" * 32, approve=True)
        assert (await runtime.jobs.get(job_id)).status == "input_required", "nothing applied"

        read_state, raced = runtime.jobs.get, []

        async def answered_meanwhile(job_id: str, reader: str | None = None):
            found = await read_state(job_id, reader)
            if not raced:  # another answer lands between this one's read of the job and its script
                raced.append("answering")
                raced[0] = await respond(runtime.jobs, job_id, approve=True, reader="alice")
            return found

        monkeypatch.setattr(runtime.jobs, "get", answered_meanwhile)
        with pytest.raises(InvalidRequest) as late:
            await respond(runtime.jobs, job_id, approve=False, reader="alice")
        assert raced == [key]
        assert re.fullmatch(
            f"job {job_id} is (queued|running|completed): it waits for no answer", late.value.message
        )
        with pytest.raises(InvalidRequest, match="waits for no answer"):
            await respond(runtime.jobs, job_id, approve=False, key=key)  # twice
        result = await runtime.jobs.wait(job_id, timeout=30)
        assert result.status == "completed" and len(read_ledger(ledger)) == 1, result
        with pytest.raises(InvalidRequest, match="is completed: it waits for no answer"):
            await respond(runtime.jobs, job_id, approve=True)


async def test_a_paused_job_is_cancelled_at_once_and_an_unanswered_one_expires(
    redis_url, redis_server, workers, openai_server, clean_env, tmp_path
):
    ledger = tmp_path / "ledger.jsonl"
    charge_script(openai_server)
    env = {"MCP_SERVERS": json.dumps(servers(ledger)), "INPUT_WAIT_SECONDS": "1", **APPROVAL}
    start_openai_workers(workers, redis_url, openai_server, **env)
    client = redis_server.client()
    request = ChatRequest(message="charge 5", mcp_servers=["ledger"])
    async with runtime_for(redis_url, mcp_servers=servers(ledger)) as runtime, asyncio.timeout(60):
        cancelled, expiring = [await runtime.jobs.run(request, timeout=30) for _ in range(2)]
        assert cancelled.status == expiring.status == "input_required"
        await eventually(lambda: client.zscore(keys.INPUT_WAITING, cancelled.job_id) is not None)
        result = await runtime.jobs.cancel(cancelled.job_id)
        assert result.status == "cancelled", result
        assert client.zscore(keys.INPUT_WAITING, cancelled.job_id) is None
        with pytest.raises(InvalidRequest, match="is cancelled: it waits for no answer"):
            await respond(runtime.jobs, cancelled.job_id, approve=True)

        ended = await runtime.jobs.wait(expiring.job_id, timeout=30, until_input=False)
        assert ended.status == "failed", ended
        assert ended.error == (
            "nobody answered whether to run ledger/charge within INPUT_WAIT_SECONDS=1; the call was not run"
        )
        with pytest.raises(InvalidRequest, match="is failed: it waits for no answer"):
            await respond(runtime.jobs, expiring.job_id, approve=True)
    assert read_ledger(ledger) == []


PAUSED = 100


def held(client) -> set[str]:
    """The jobs the live workers' heartbeats say they run."""
    beats = [json.loads(client.get(k) or b"{}") for k in client.scan_iter(f"{keys.WORKER_PREFIX}*")]
    return {job_id for beat in beats for job_id in beat.get("running_jobs") or {}}


async def test_a_hundred_paused_jobs_hold_no_slot_and_resume_on_another_worker(
    redis_url, redis_server, workers, openai_server, clean_env, tmp_path
):
    """WORKER_CONCURRENCY=2 on two workers: 100 jobs pause, new jobs still run and finish; the two
    workers stop (they hold nothing), a third one resumes every job after its answer."""
    ledger = tmp_path / "ledger.jsonl"
    charge_script(openai_server)
    env = {"MCP_SERVERS": json.dumps(servers(ledger)), "WORKER_CONCURRENCY": "2", **APPROVAL}
    pausers = start_openai_workers(workers, redis_url, openai_server, count=2, **env)
    client = redis_server.client()
    pauser_ids = worker_ids(client)
    request = ChatRequest(message="charge 5", mcp_servers=["ledger"])
    async with runtime_for(redis_url, mcp_servers=servers(ledger)) as runtime, asyncio.timeout(240):
        ids = [await runtime.queue.submit(request, caller="operator") for _ in range(PAUSED)]
        await eventually(lambda: client.zcard(keys.INPUT_WAITING) == PAUSED, timeout=120)
        assert not list(client.scan_iter(f"{keys.IN_PROGRESS_PREFIX}*")), "no paused job is held"
        assert {(await runtime.jobs.get(i)).status for i in ids} == {"input_required"}
        await eventually(lambda: not held(client), timeout=10)  # the heartbeats after the pauses say so
        found = await report(runtime.settings, runtime.redis)
        assert (found["queue_depth"], found["running"], found["paused"]) == (0, 0, PAUSED)
        assert {row["status"] for row in await rows(runtime.redis, ids)} == {"input_required"}  # dashboard

        fresh = await asyncio.gather(
            *(runtime.jobs.run(ChatRequest(message=f"new {n}"), timeout=60) for n in range(4))
        )
        assert [r.status for r in fresh] == ["completed"] * 4, "new jobs run beside 100 paused ones"
        assert {r.worker_id for r in fresh} <= pauser_ids

        start_openai_workers(workers, redis_url, openai_server, **env)
        (resumer,) = worker_ids(client) - pauser_ids
        for proc in pausers:  # holding nothing, they stop at once
            proc.send_signal(signal.SIGTERM)
        for proc in pausers:
            assert await asyncio.to_thread(proc.wait, 30) == 0
        await asyncio.gather(*(respond(runtime.jobs, i, approve=True, key=f"{i}:2") for i in ids))
        results = await asyncio.gather(*(runtime.jobs.wait(i, timeout=180, until_input=False) for i in ids))

        assert [r.status for r in results] == ["completed"] * PAUSED, [r.error for r in results if r.error]
        assert {r.worker_id for r in results} == {resumer}, "every job resumed on the third worker"
        assert all(r.ai_response == f"{PREAMBLE}{REPLY} {PREFIX} charged 5" for r in results)
        assert sorted(c["key"] for c in read_ledger(ledger)) == sorted(f"{i}:2" for i in ids), "charged once"
        for job_id in ids:
            (one, two) = starts(parse_stream(await runtime.redis.xrange(keys.stream(job_id))))
            assert one[1] in pauser_ids and two == (2, resumer), (one, two)


async def test_each_of_several_questions_pauses_the_job_and_every_answer_holds(
    redis_url, redis_server, workers, openai_server, clean_env, tmp_path
):
    """Two turns, each asking for two charges: four questions, one at a time; each answer is kept
    through the later pauses, each attempt numbered after the last, and each charge runs once."""
    ledger = tmp_path / "ledger.jsonl"
    charge_script(openai_server)
    args = json.dumps({"amount": 5})
    openai_server.script(tool_calls=[("ledger__charge", args), ("ledger__charge", args)], tool_rounds=2)
    start_openai_workers(
        workers, redis_url, openai_server, MCP_SERVERS=json.dumps(servers(ledger)), **APPROVAL
    )
    async with runtime_for(redis_url, mcp_servers=servers(ledger)) as runtime, asyncio.timeout(90):
        job = await runtime.jobs.run(ChatRequest(message="charge 5", mcp_servers=["ledger"]), timeout=30)
        asked = []
        while job.status == "input_required" and job.input_request is not None:
            asked.append(job.input_request.key)
            await respond(runtime.jobs, job.job_id, approve=len(asked) != 3, note="not that one")
            job = await runtime.jobs.wait(job.job_id, timeout=30)
        stream = parse_stream(await runtime.redis.xrange(keys.stream(job.job_id)))
    assert job.status == "completed", job
    assert asked == [f"{job.job_id}:{step}" for step in (2, 3, 5, 6)]
    assert [c["key"] for c in read_ledger(ledger)] == [asked[0], asked[1], asked[3]], (
        "each approved call once"
    )
    assert [a for a, _ in starts(stream)] == [1, 2, 3, 4, 5] and job.attempt == 5
    assert [r.is_error for r in job.tool_calls] == [False, False, True, False]


def messenger(args: list[str], redis_url: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "messenger.cli", *args], env=process_env(redis_url, LOG_LEVEL="WARNING", **env),
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_the_cli_says_what_a_paused_job_asks_and_respond_answers_it(
    redis_url, workers, openai_server, clean_env, tmp_path
):
    ledger = tmp_path / "ledger.jsonl"
    charge_script(openai_server)
    env = {"MCP_SERVERS": json.dumps(servers(ledger))}
    start_openai_workers(workers, redis_url, openai_server, **env, **APPROVAL)
    asked = await asyncio.to_thread(
        messenger, ["ask", "--mcp-server", "ledger", "charge 5"], redis_url, **env
    )
    assert asked.returncode == 1, asked.stderr
    (line,) = [x for x in asked.stderr.splitlines() if "waits for your answer" in x]
    job_id = line.split()[1]
    assert line == (
        f'job {job_id} waits for your answer: Allow the tool call ledger/charge {{"amount": 5}}? '
        f"(messenger respond {job_id} yes|no)"
    )
    answered = await asyncio.to_thread(messenger, ["respond", job_id[:8], "yes"], redis_url, **env)
    assert answered.returncode == 0 and answered.stdout == f"job {job_id}: answered yes to {job_id}:2\n"
    again = await asyncio.to_thread(messenger, ["respond", job_id, "no"], redis_url, **env)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "waits for no answer" in again.stderr
    tail = await asyncio.to_thread(messenger, ["tail", job_id], redis_url, **env)
    assert tail.returncode == 0, tail.stderr
    assert f"{REPLY} {PREFIX} charged 5" in tail.stdout


def test_embedded_ask_says_a_paused_job_cannot_be_answered_without_redis():
    clock = str(Path(__file__).resolve().parents[1] / "mcp_clock_server.py")
    env = process_env(
        "",
        TOOL_APPROVAL="all",
        MCP_SERVERS=json.dumps({"clock": {"command": sys.executable, "args": [clock]}}),
    )
    del env["REDIS_URL"]  # embedded: the job lives in this process
    asked = subprocess.run(
        [sys.executable, "-m", "messenger.cli", "ask", "--mcp-server", "clock", "what is the time now?"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert asked.returncode == 1, asked.stderr
    assert asked.stderr.strip().endswith(
        "waits for your answer: Allow the tool call clock/now {}? "
        "(in embedded mode it ends with this command: set REDIS_URL to answer it)"
    ), asked.stderr


async def test_a_cancel_is_not_refused_for_junk_in_the_waiting_set(redis_url, redis_server, clean_env):
    """`mcpq:input:waiting` overwritten by hand: a cancel still ends the job and says so (its
    transaction applied every write; the junk key's refusal is only logged)."""
    client = redis_server.client()
    async with runtime_for(redis_url) as runtime, asyncio.timeout(30):
        job_id = await runtime.queue.submit(ChatRequest(message="hi"), caller="alice")
        client.set(keys.INPUT_WAITING, "junk")
        try:
            result = await runtime.jobs.cancel(job_id)
        finally:
            client.delete(keys.INPUT_WAITING)
    assert result.status == "cancelled" and result.error == "cancelled before it started", result
