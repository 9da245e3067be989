"""arq's job and result records through our JSON serializer: readable, and never pickle."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime

import pytest
from arq.jobs import (
    DeserializationError,
    SerializationError,
    deserialize_job_raw,
    deserialize_result,
    serialize_job,
    serialize_result,
)

from shared.models import ChatRequest, JobResult
from shared.serializer import deserialize, serialize, serialize_plain

REQUEST = {"message": "héllo 👋 \x00 مرحبا", "model": "mock-1", "temperature": 0.5}


def _job(**kwargs) -> bytes:
    return serialize_job("chat", (), kwargs, 1, 1_700_000_000_000, serializer=serialize)


def _result(result, *, success: bool = True) -> bytes | None:
    return serialize_result(
        "chat", (), {"request": REQUEST}, 2, 1_700_000_000_000, success, result,
        1_700_000_000_100, 1_700_000_001_100, "job-1:chat", "arq:queue", "job-1",
        serializer=serialize,
    )  # fmt: skip


def test_job_record_is_plain_json():
    data = _job(request=REQUEST)
    assert isinstance(data, bytes)
    record = json.loads(data)
    assert record == {"t": 1, "f": "chat", "a": [], "k": {"request": REQUEST}, "et": 1_700_000_000_000}


def test_job_record_keeps_unicode_readable_in_redis_cli():
    data = _job(request=REQUEST)
    assert "héllo 👋".encode() in data  # UTF-8, not \\u escapes


def test_job_record_round_trips_through_arq():
    function, args, kwargs, job_try, enqueue_ms = deserialize_job_raw(
        _job(request=REQUEST), deserializer=deserialize
    )
    assert (function, list(args), kwargs, job_try, enqueue_ms) == (
        "chat",
        [],
        {"request": REQUEST},
        1,
        1_700_000_000_000,
    )


def test_pydantic_models_are_dumped_as_their_json():
    data = _job(request=ChatRequest(message="hi", max_tokens=5))
    kwargs = deserialize_job_raw(data, deserializer=deserialize)[2]
    assert kwargs["request"] == {
        "message": "hi", "context": None, "model": None, "temperature": None, "max_tokens": 5, "conversation_id": None,
        "mcp_servers": None, "priority": None,
    }  # fmt: skip


def test_result_record_is_plain_json_and_reads_back():
    result = JobResult(job_id="job-1", status="completed", ai_response="Hi.").model_dump(mode="json")
    data = _result(result)
    assert json.loads(data)["r"]["aiResponse"] == "Hi."
    back = deserialize_result(data, deserializer=deserialize)
    assert back.success is True
    assert back.result == result
    assert back.job_id == "job-1"
    assert back.job_try == 2
    assert back.kwargs == {"request": REQUEST}


def test_job_result_model_in_a_result_keeps_camel_case():
    data = _result(JobResult(job_id="job-1", status="failed", error="boom"))
    stored = json.loads(data)["r"]
    assert stored["jobId"] == "job-1" and stored["status"] == "failed" and stored["error"] == "boom"
    assert "aiResponse" in stored and "ai_response" not in stored


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ValueError("bad input"), {"error": "ValueError", "message": "bad input"}),
        (TimeoutError(), {"error": "TimeoutError", "message": ""}),
        (KeyError("k"), {"error": "KeyError", "message": "'k'"}),
    ],
)
def test_a_failed_jobs_exception_is_stored_as_error_and_message(exc, expected):
    data = _result(exc, success=False)
    assert json.loads(data)["r"] == expected
    back = deserialize_result(data, deserializer=deserialize)
    assert back.success is False
    assert back.result == expected


def test_datetimes_and_sets_are_written_readably():
    when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    record = json.loads(serialize({"when": when, "tags": {"b", "a", "c"}, "frozen": frozenset({2, 1})}))
    assert record == {"when": "2025-01-02T03:04:05+00:00", "tags": ["a", "b", "c"], "frozen": [1, 2]}


@pytest.mark.parametrize(
    "result",
    [
        JobResult(job_id="j", status="completed", ai_response="héllo 👋 \x00", model="mock-1").model_dump(
            mode="json"
        ),
        {"cost": 1.2e-05, "big": 2**70, "nested": [1.5, None, True, {"x": "y"}], "nan": float("nan")},
        ValueError("bad \ud800 input"),  # a failed job's exception
        {"text": "a lone surrogate \ud800 from a model"},  # pydantic-core refuses it: json.dumps writes it
    ],
)
def test_a_worker_stores_a_result_as_the_same_json_by_pydantic_cores_encoder(result):
    """The worker's result writer (serialize_plain): the record reads back as serialize's does."""
    plain = serialize_result(
        "chat", ({"message": "hi"},), {}, 1, 1_700_000_000_000, True, result, 1_700_000_000_100,
        1_700_000_001_100, "job-1:chat", "arq:queue", "job-1", serializer=serialize_plain,
    )  # fmt: skip
    usual = serialize_result(
        "chat", ({"message": "hi"},), {}, 1, 1_700_000_000_000, True, result, 1_700_000_000_100,
        1_700_000_001_100, "job-1:chat", "arq:queue", "job-1", serializer=serialize,
    )  # fmt: skip
    assert plain is not None and usual is not None
    assert repr(json.loads(plain)) == repr(json.loads(usual))  # (repr: NaN is not equal to itself)
    if isinstance(result, dict) and "aiResponse" in result:
        assert "héllo 👋".encode() in plain  # UTF-8, not \\u escapes


def test_unserializable_job_argument_is_a_serialization_error():
    with pytest.raises(SerializationError):
        _job(request=object())


def test_unserializable_result_is_replaced_by_a_readable_failure():
    data = _result(object())
    back = deserialize_result(data, deserializer=deserialize)
    assert back.success is False
    assert back.result == "unable to serialize result"


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"not json at all",
        b"\x80\x04\x95",
        b"\xff\xfe\xfd",
        pickle.dumps({"t": 1, "f": "chat", "a": [], "k": {}, "et": 0}),  # pickle is refused, never loaded
        b"[1, 2, 3]",
        b'{"f": "chat"}',
        b'"just a string"',
    ],
)
def test_garbage_job_bytes_raise_deserialization_error(garbage):
    with pytest.raises(DeserializationError):
        deserialize_job_raw(garbage, deserializer=deserialize)
    with pytest.raises(DeserializationError):
        deserialize_result(garbage, deserializer=deserialize)


@pytest.mark.parametrize("garbage", [b"", b"{", b"\x80\x04\x95", pickle.dumps([1])])
def test_deserialize_raises_value_error_on_non_json(garbage):
    with pytest.raises(ValueError):
        deserialize(garbage)


def test_deserialize_accepts_str_and_bytes():
    assert deserialize('{"a": 1}') == deserialize(b'{"a": 1}') == {"a": 1}
