"""A job resumed after its caller's approval whose worker is killed (SIGKILL) while the approved tool
runs: the answer is kept, so the re-run on another worker calls the tool again with the same
idempotency key, without asking again, and the caller gets one whole answer."""

import asyncio
import json
import sys

from mcp_ledger_server import PREFIX, read_ledger
from openai_server import eventually
from processes import start_openai_workers
from readers import parse_stream
from runtimes import runtime_for
from tool_kill import LEDGER_SERVER

from messenger.approvals import respond
from shared import keys
from shared.models import ChatRequest

LEASE_SECONDS = 2


async def test_an_approved_call_whose_worker_dies_is_run_again_with_its_key_not_asked_again(
    redis_url, redis_server, workers, openai_server, clean_env, tmp_path
):
    ledger = tmp_path / "ledger.jsonl"
    servers = {"ledger": {"command": sys.executable, "args": [LEDGER_SERVER], "env": {"LEDGER": str(ledger)}}}
    release = tmp_path / "release"  # the charge answers once this exists: the kill lands while it runs
    arguments = json.dumps({"amount": 5, "hold": str(release)})
    openai_server.script(
        reply="Done:", tool_preamble="Charging. ", tool_calls=[("ledger__charge", arguments)]
    )
    env = {
        "MCP_SERVERS": json.dumps(servers),
        "TOOL_APPROVAL": "destructive",
        "WORKER_LEASE_SECONDS": str(LEASE_SECONDS),
    }
    procs = start_openai_workers(workers, redis_url, openai_server, count=2, **env)
    client = redis_server.client()
    async with runtime_for(redis_url, mcp_servers=servers) as runtime, asyncio.timeout(90):
        paused = await runtime.jobs.run(ChatRequest(message="charge 5", mcp_servers=["ledger"]), timeout=30)
        assert paused.status == "input_required" and paused.input_request is not None, paused
        key = paused.input_request.key
        await respond(runtime.jobs, paused.job_id, approve=True, key=key)
        await eventually(lambda: [c["key"] for c in read_ledger(ledger)] == [key], timeout=30)
        stream = parse_stream(await runtime.redis.xrange(keys.stream(paused.job_id)))
        (resumer,) = [e["worker_id"] for e in stream if e["type"] == "start" and e["attempt"] == 2]
        pid = json.loads(client.get(keys.worker(resumer)))["pid"]
        (proc,) = [p for p in procs if p.pid == pid]
        proc.kill()  # while the approved charge runs (held until `release`, however late the kill)
        release.touch()  # the re-run's charge answers at once

        result = await runtime.jobs.wait(paused.job_id, timeout=60, until_input=False)
        stream = parse_stream(await runtime.redis.xrange(keys.stream(paused.job_id)))
    assert result.status == "completed", result
    assert result.ai_response == f"Charging. Done: {PREFIX} charged 5"
    assert result.attempt == 3 and result.worker_id != resumer
    assert [c["key"] for c in read_ledger(ledger)] == [key, key], "sent again once, with the same key"
    assert [e["type"] for e in stream].count("input_required") == 1, "not asked again"
