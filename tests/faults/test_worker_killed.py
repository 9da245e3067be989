"""A worker killed with SIGKILL while it streams: another worker runs the job again, and the caller
gets exactly one whole answer with no text of the dead attempt in it."""

import asyncio

from observe import starts, terminal_events
from runtimes import runtime_for
from worker_kill import kill_mid_stream

from shared import keys

LEASE_SECONDS = 2


async def test_a_job_whose_worker_is_killed_mid_stream_is_rerun_and_the_caller_gets_one_whole_answer(
    redis_url, workers, clean_env, redis_server
):
    procs = workers.start(
        redis_url, count=2, MOCK_TOKEN_DELAY_MS="30", WORKER_LEASE_SECONDS=str(LEASE_SECONDS)
    )
    async with runtime_for(redis_url) as runtime, asyncio.timeout(60):
        trial = await kill_mid_stream(runtime, procs)

    assert trial.killed is not None, "the worker was killed while tokens flowed"
    assert trial.killed.wait(5) != 0
    assert trial.seen.text(1), "the caller saw tokens of the first attempt before the kill"
    result = trial.result
    assert result.status == "completed", trial.describe()
    assert result.attempt == 2, trial.describe()
    assert result.ai_response == trial.expected, "one whole answer, nothing of attempt 1 mixed in"
    assert trial.seen.text(2) == trial.expected, "the tokens the caller got for attempt 2 are the answer"
    assert result.worker_id != trial.seen.events[0][1].worker_id, "the other worker ran it"
    assert result.usage.completion_tokens == len(trial.expected.split()), "usage of one answer, not two"

    assert starts(trial.stream) == [1, 2]
    assert [e["type"] for e in terminal_events(trial.stream)] == ["done"]
    assert trial.recovery_seconds is not None
    assert trial.recovery_seconds < LEASE_SECONDS + 5, f"picked up again after {trial.recovery_seconds:.1f}s"

    client = redis_server.client()
    usage = {k.decode(): v.decode() for k, v in client.hgetall(keys.USAGE_TOTAL).items()}
    assert usage.get("requests") == "1", f"the answer is counted once: {usage}"
    # what the dead attempt streamed was paid for too: counted once, estimated, beside the answer
    dead = sum(1 for e in trial.stream if e["type"] == "token" and e["attempt"] == 1)
    dead_prompt = int(usage["prompt_tokens"]) - result.usage.prompt_tokens
    assert dead > 0 and dead_prompt > 0
    assert usage.get("completion_tokens") == str(len(trial.expected.split()) + dead)
    assert usage.get("dead_attempt_tokens") == str(dead + dead_prompt)
