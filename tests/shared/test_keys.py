"""Redis names: what a redis-cli user reads in the README is what the code writes, and arq agrees."""

from __future__ import annotations

import arq.constants

from shared import keys


def test_job_key_names_are_the_documented_ones():
    assert keys.job("abc123") == "arq:job:abc123"
    assert keys.result("abc123") == "arq:result:abc123"
    assert keys.in_progress("abc123") == "arq:in-progress:abc123"
    assert keys.retry("abc123") == "arq:retry:abc123"


def test_our_key_names_are_the_documented_ones():
    assert keys.events("abc123") == "mcpq:events:abc123"
    assert keys.stream("abc123") == "mcpq:stream:abc123"
    assert keys.worker("host-1a2b") == "mcpq:worker:host-1a2b"
    assert keys.cancel("abc123") == "mcpq:cancel:abc123"


def test_arq_constants_match_ours():
    assert arq.constants.default_queue_name == keys.QUEUE
    assert arq.constants.job_key_prefix == keys.JOB_PREFIX
    assert arq.constants.in_progress_key_prefix == keys.IN_PROGRESS_PREFIX
    assert arq.constants.result_key_prefix == keys.RESULT_PREFIX
    assert arq.constants.retry_key_prefix == keys.RETRY_PREFIX
    assert arq.constants.abort_jobs_ss == keys.ABORT_SET


def test_everything_of_ours_lives_under_mcpq():
    ours = [keys.WAKEUP_CHANNEL, keys.RECENT_JOBS, keys.WORKER_PREFIX, keys.EVENTS_PREFIX, keys.STREAM_PREFIX]
    ours += [keys.CANCEL_PREFIX, keys.IDLE_WORKERS, keys.HANDOFF_PREFIX]
    assert all(name.startswith("mcpq:") for name in ours)
    assert len(set(ours)) == len(ours)


def test_per_job_names_do_not_collide():
    names = {keys.job("x"), keys.result("x"), keys.in_progress("x"), keys.retry("x")}
    names |= {keys.events("x"), keys.stream("x"), keys.cancel("x"), keys.worker("x")}
    assert len(names) == 8


def test_stream_and_heartbeat_lifetimes_are_sane():
    assert keys.STREAM_TTL_SECONDS == 3600  # arq's default keep_result, so text and result expire together
    assert keys.STREAM_MAXLEN > 0
    assert keys.HEARTBEAT_TTL_SECONDS > keys.HEARTBEAT_SECONDS  # one missed beat does not kill a worker
