"""A worker killed (SIGKILL) in a tool loop, with real worker processes, a real stdio MCP server
whose tool has a side effect, and the OpenAI-compatible test server: the re-run goes on from the
job's journal. Killed after the tool's result, the tool is not called again; killed while it runs,
the one second call carries the same idempotency key; each caller gets one whole answer, and the
stream tells the call and its result once. One trial of each kill here (CI time); `bench/durable_kill.py`
runs twenty and more."""

import asyncio
import json

from processes import start_openai_workers
from runtimes import runtime_for
from tool_kill import kill_in_tool_loop, script, servers

from shared import keys

LEASE_SECONDS = 2  # 1 s lapsed under a load of 25 on 2 cores: a live worker lost its job


async def test_a_tool_loop_whose_worker_is_killed_goes_on_from_its_journal(
    redis_url, redis_server, workers, openai_server, clean_env, tmp_path
):
    ledger = tmp_path / "ledger.jsonl"
    holds = script(openai_server, ledger)
    env = {"MCP_SERVERS": json.dumps(servers(ledger)), "WORKER_LEASE_SECONDS": str(LEASE_SECONDS)}
    start_openai_workers(workers, redis_url, openai_server, count=2, **env)
    trials = []
    async with runtime_for(redis_url, mcp_servers=servers(ledger)) as runtime, asyncio.timeout(120):
        for when in ("after_result", "during_call"):
            trial = await kill_in_tool_loop(runtime, workers.procs, ledger, holds, when)
            trials.append(trial)
            assert trial.killed is not None, trial.describe()
            if len(trials) == 1:  # the killed one's replacement, for the next kill
                await asyncio.to_thread(start_openai_workers, workers, redis_url, openai_server, **env)

    for trial in trials:
        assert trial.complete, trial.describe()
        assert trial.result is not None and trial.result.attempt == 2, trial.describe()
        assert trial.told_once, trial.describe()
        assert trial.keys_agree, trial.describe()
        resumed = [e.get("resumed") for e in trial.stream if e["type"] == "start"]
        if trial.when == "after_result":
            assert trial.duplicates == 0, trial.describe()
            assert resumed == [None, 2], "the re-run went on after the tool's result"
        else:  # in flight when the worker died: sent once more, with the same key
            assert trial.duplicates == 1, trial.describe()
            assert resumed == [None, 1], "the re-run went on after the model's turn, not asking it again"
    usage = {k.decode(): v.decode() for k, v in redis_server.client().hgetall(keys.USAGE_TOTAL).items()}
    assert usage.get("requests") == "2", f"each answer counted once: {usage}"
