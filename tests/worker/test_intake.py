"""A claimed job is checked before arq reads it: every kind of value arq or our functions would choke
on is named with a reason, and a job the messenger queues passes."""

from __future__ import annotations

import json

import pytest
from arq.jobs import serialize_job

from shared.serializer import serialize
from worker.intake import MAX_JOB_BYTES, job_id_problem, read_job

FUNCTIONS = {"chat", "call_tool"}


def job(**fields) -> bytes:
    base = {"f": "chat", "a": [{"message": "hi"}], "k": {}, "t": None, "et": 1_700_000_000_000}
    return json.dumps({**base, **fields}).encode()


def test_a_job_as_the_messenger_queues_it_passes():
    raw = serialize_job("chat", ({"message": "hi", "max_tokens": 5},), {"trace": {"traceparent": "00-x"}}, None,
                        1_700_000_000_000, serializer=serialize)  # fmt: skip
    assert read_job(raw, FUNCTIONS)[:2] == (None, "chat")
    tool = job(f="call_tool", a=[{"server": "clock", "tool": "now", "arguments": {}}])
    assert read_job(tool, FUNCTIONS)[:2] == (None, "call_tool")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "no job definition"),
        (b"not json", "not JSON"),
        (b"[" * 100_000, "not JSON"),
        (b'{"f": "chat", "a": [{"message": NaN}], "k": {}, "t": null, "et": 0}', "not JSON"),
        (b" " * (MAX_JOB_BYTES + 1), "at most"),
        (b"[1, 2]", "f, a, k, t and et"),
        (job(f="no_such_function"), "'no_such_function' is not one this worker runs"),
        (job(f=["chat"]), "is not one this worker runs"),
        (job(a={"message": "hi"}), "args (a) must be a list"),
        (job(t="abc"), "tries (t)"),
        (job(t=True), "tries (t)"),
        (job(et=10**30), "enqueue time"),
        (job(et="0"), "enqueue time"),
        (job(a=["hello"]), "one request object"),
        (job(a=[{"message": "hi"}, {}]), "one request object"),
        (job(k={"timeout": 3}), "no keyword arguments but trace"),
        (job(k={"trace": {"traceparent": 1}}), "trace must be an object of strings"),
        (job(a=[{"message": ""}]), "invalid request in the queue: message"),
        (job(a=[{"message": "hi", "style": "terse"}]), "invalid request in the queue: style"),
        (job(f="call_tool", a=[{"server": "clock"}]), "invalid request in the queue: tool"),
    ],
)
def test_a_job_that_cannot_run_is_named_with_a_reason(raw, reason):
    problem, _, _ = read_job(raw, FUNCTIONS)
    assert problem is not None and reason in problem, problem


@pytest.mark.parametrize("raw_id", [b"\xff\xfe", b"", b"a b", b"x" * 201, b"tab\there", b"nl\n"])
def test_a_queue_member_that_is_no_job_id_is_named(raw_id):
    assert job_id_problem(raw_id)


def test_ids_the_messenger_makes_pass():
    assert job_id_problem(b"3f0c9a2b-77aa_x") is None
