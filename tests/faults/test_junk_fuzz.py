"""Thousands of hypothesis-made raw values written straight into Redis (queue members and scores, job
values, retry counters, results, streams, and the `mcpq:` keys a worker reads) while real worker
processes run: no worker exits, each queue entry ends exactly one way (run, or dead-lettered once
with one error event on its stream), and a good job queued after the junk still completes whole."""

from __future__ import annotations

import json
import re
import time

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from observe import expected_text
from readers import stream_events

from shared import keys
from shared.events import TERMINAL
from shared.serializer import serialize
from shared.settings import OPERATOR
from worker.intake import MAX_JOB_BYTES, job_id_problem
from worker.runner import MAX_TRIES

EXAMPLES = 60  # small examples: generation time grows with an example's size

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)  # fmt: skip
requests = st.fixed_dictionaries(
    {"message": st.text(max_size=20)},
    optional={"model": values, "temperature": values, "max_tokens": values, "conversation_id": values,
              "context": values, "mcp_servers": values, "server": values, "tool": values, "arguments": values},
)  # fmt: skip
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "f": st.sampled_from(["chat", "call_tool", "no_such_function", ""]) | values,
        "a": st.lists(requests | values, max_size=2) | values,
        "k": st.dictionaries(st.sampled_from(["trace", "x"]), st.dictionaries(st.text(max_size=5), values) | values,
                             max_size=2) | values,
        "t": st.none() | st.integers(-3, 2000) | values,
        "et": st.integers(-10, 2**64) | st.floats() | values,
    },
)  # fmt: skip
job_values = (
    st.binary(max_size=120)
    | envelopes.map(lambda d: json.dumps(d).encode())
    | st.just(b'{"f":"chat","a":[{"message":"hi"}],"k":{},"t":"abc","et":0}')  # issue 12's worker killer
    | st.just(b"[" * 100_000)
    | st.just(b" " * (MAX_JOB_BYTES + 1))
    | st.none()  # a queue member with no job behind it
)
id_shapes = st.sampled_from(["plain", "plain", "plain", "binary", "spaced", "long"])
scores = st.floats(max_value=time.time() * 1000, allow_nan=False)
junk_text = st.binary(max_size=60) | values.map(lambda v: json.dumps(v).encode())
entries = st.tuples(id_shapes, job_values, scores, st.booleans(), junk_text)


def good_job(job_id: str, message: str, **request) -> bytes:
    return serialize({"f": "chat", "a": [{"message": message, **request}], "k": {}, "t": None,
                      "et": int(time.time() * 1000)})  # fmt: skip


def make_id(shape: str, n: int) -> bytes:
    return {
        "plain": f"fz-{n}".encode(),
        "binary": b"\xff\xfe-" + str(n).encode(),
        "spaced": f"fz {n}".encode(),
        "long": f"fz-{n}-".encode() + b"x" * 200,
    }[shape]


def wait_until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return found


def ended(client, raw_id: bytes) -> bool:
    return client.hexists(keys.DEAD_LETTER, raw_id) or client.exists(keys.RESULT_PREFIX.encode() + raw_id) > 0


def test_junk_written_into_redis_never_stops_a_worker_and_each_bad_entry_is_dead_lettered_once(
    redis_url, workers, clean_env, redis_server
):
    procs = workers.start(redis_url, count=2, WORKER_CONCURRENCY="20", WORKER_LEASE_SECONDS="2")
    client = redis_server.client()
    counter = iter(range(10**9))
    seen: list[bytes] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )  # fmt: skip (no shrinking: real processes)
    @given(st.lists(entries, min_size=30, max_size=50), st.lists(junk_text, min_size=8, max_size=8))
    def junk_round(batch, shared_junk):
        n = next(counter)
        ids, had_result = [], set()
        with client.pipeline(transaction=False) as pipe:
            for shape, value, score, extra, junk in batch:
                raw_id = make_id(shape, next(counter))
                ids.append(raw_id)
                if value is not None:
                    pipe.set(keys.JOB_PREFIX.encode() + raw_id, value)
                if extra:  # junk in the keys around a job: its retry counter, result and stream
                    pipe.set(keys.RETRY_PREFIX.encode() + raw_id, junk)
                    pipe.set(keys.RESULT_PREFIX.encode() + raw_id, junk)
                    had_result.add(raw_id)
                    pipe.xadd(keys.STREAM_PREFIX.encode() + raw_id, {b"event": junk})
                pipe.zadd(keys.QUEUE, {raw_id: score})
                pipe.publish(keys.WAKEUP_CHANNEL, raw_id if extra else junk)
            pipe.set(keys.MODEL_DEFAULTS, shared_junk[0])
            pipe.set(keys.cancel(f"fz-good-{n}"), shared_junk[1])
            pipe.hset(keys.BUDGET_RESERVED, f"fz-good-{n}", shared_junk[2])
            pipe.rpush(keys.conversation(OPERATOR, f"fz-conv-{n}"), shared_junk[3], shared_junk[4])
            pipe.set(keys.worker(f"fz-{n}"), shared_junk[5])
            pipe.set(keys.owner(f"fz-good-{n}"), shared_junk[5])
            pipe.zadd(keys.ABORT_SET, {shared_junk[6]: 0})
            pipe.set(keys.retry(f"fz-good-{n}"), shared_junk[7])
            pipe.execute()
        good = f"fz-good-{n}"
        client.set(keys.job(good), good_job(good, f"good {n}", conversation_id=f"fz-conv-{n}"))
        client.zadd(keys.QUEUE, {good: time.time() * 1000})
        client.publish(keys.WAKEUP_CHANNEL, good)

        wait_until(lambda: all(ended(client, i) for i in [*ids, good.encode()]), 30, "every entry ended")
        assert all(p.poll() is None for p in procs), f"a worker exited:\n{workers.logs()[-3000:]}"
        result = json.loads(client.get(keys.result(good)))["r"]
        if re.fullmatch(rb"0|[1-9][0-9]{0,8}", shared_junk[7]) and int(shared_junk[7]) >= MAX_TRIES:
            # a whole number in its retry counter is a count, not junk: so many earlier starts end it
            assert result == {"error": "JobExecutionFailed", "message": f"max {MAX_TRIES} retries exceeded"}
        else:
            assert (result["status"], result["aiResponse"]) == ("completed", expected_text(f"good {n}")), (
                result
            )
        check_each_ended_one_way(client, ids, had_result, logged(workers, client, ids))
        client.delete(keys.DEAD_LETTER, keys.DEAD_LETTER_ORDER)  # each round checks its own entries
        seen.extend(ids)

    junk_round()

    assert all(p.poll() is None for p in procs), f"a worker exited:\n{workers.logs()[-3000:]}"
    assert not client.zrange(keys.QUEUE, 0, -1), "nothing is left in the queue"
    assert len(seen) >= 2000, len(seen)
    assert len(dead_total) >= 1000, len(dead_total)


dead_total: set[bytes] = set()


def endings(client, job_id: str) -> list[str]:
    """The terminal events the job's stream holds (hand-written junk entries skipped)."""
    found = []
    for event in stream_events(client, job_id):
        if event.get("job_id") == job_id and isinstance(event.get("type"), str) and event["type"] in TERMINAL:
            found.append(event["type"])
    return found


def report(raw_id: bytes) -> str:
    return f"dead-lettered queue entry {raw_id.decode(errors='backslashreplace')[:100]}: "


def logged(workers, client, ids: list[bytes]) -> str:
    """The workers' logs once each dead-lettered entry's line is in them: a worker writes it just after
    Redis has the entry, and the test may look in between (a worker short of a core on a busy box)."""
    dead = [raw_id for raw_id in ids if client.hexists(keys.DEAD_LETTER, raw_id)]

    def complete() -> str | None:
        text = workers.logs()
        return text if all(report(raw_id) in text for raw_id in dead) else None

    return wait_until(complete, 10, "each dead-lettered entry is logged")


def check_each_ended_one_way(client, ids: list[bytes], had_result: set[bytes], logs: str) -> None:
    dead = client.hgetall(keys.DEAD_LETTER)
    for raw_id in ids:
        if raw_id not in dead:
            assert client.exists(keys.RESULT_PREFIX.encode() + raw_id), raw_id
            continue
        dead_total.add(raw_id)
        entry = json.loads(dead[raw_id])
        assert entry["reason"] and len(entry["raw"].encode()) <= 4 * 2048, entry
        shown = raw_id.decode(errors="backslashreplace")
        reports = len(re.findall(re.escape(report(raw_id)), logs))
        assert reports == 1, f"{shown!r} reported {reports} times"
        if raw_id in had_result:  # a job with a result had ended already: that ending stays the only one
            assert endings(client, shown) == [], shown
        elif job_id_problem(raw_id) is None:
            assert endings(client, shown) == ["error"], (shown, client.xrange(keys.stream(shown)))
