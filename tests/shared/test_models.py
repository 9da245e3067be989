"""The request a caller sends (limits, names, any unicode) and the result it gets back (camelCase)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.models import (
    MAX_MESSAGE_CHARS,
    MAX_TOKENS_LIMIT,
    ChatRequest,
    Effective,
    JobResult,
    ModelDefaults,
    ResultUsage,
    effective,
)


def _error_field(info: pytest.ExceptionInfo[ValidationError]) -> str:
    return str(info.value.errors()[0]["loc"][0])


def test_minimal_request_takes_defaults_for_everything_else():
    req = ChatRequest(message="hello")
    assert req.message == "hello"
    assert (req.context, req.model, req.temperature, req.max_tokens, req.conversation_id) == (None,) * 5


def test_full_request_is_accepted():
    req = ChatRequest(
        message="hi",
        context="You are terse.",
        model="gpt-4o-mini",
        temperature=0.2,
        max_tokens=256,
        conversation_id="conv-42",
        mcp_servers=["clock", "docs", "clock"],
        priority="high",
    )
    assert req.model_dump() == {
        "message": "hi",
        "context": "You are terse.",
        "model": "gpt-4o-mini",
        "temperature": 0.2,
        "max_tokens": 256,
        "conversation_id": "conv-42",
        "mcp_servers": ["clock", "docs"],  # each named once
        "priority": "high",
    }


@pytest.mark.parametrize("name", ["", "a__b", "has space", "-x", "x" * 33, "a/b"])
def test_a_malformed_mcp_server_name_is_rejected(name):
    with pytest.raises(ValidationError) as info:
        ChatRequest(message="hi", mcp_servers=[name])
    assert _error_field(info) == "mcp_servers"


@pytest.mark.parametrize("message", ["", " ", "   \t\n  ", "\u3000", "\n"])
def test_empty_or_whitespace_message_is_rejected(message):
    with pytest.raises(ValidationError) as info:
        ChatRequest(message=message)
    assert _error_field(info) == "message"


def test_message_at_the_limit_is_accepted_and_one_more_is_rejected():
    assert len(ChatRequest(message="x" * MAX_MESSAGE_CHARS).message) == MAX_MESSAGE_CHARS
    with pytest.raises(ValidationError) as info:
        ChatRequest(message="x" * (MAX_MESSAGE_CHARS + 1))
    assert _error_field(info) == "message"


def test_oversized_context_is_rejected():
    with pytest.raises(ValidationError) as info:
        ChatRequest(message="hi", context="c" * (MAX_MESSAGE_CHARS + 1))
    assert _error_field(info) == "context"


@pytest.mark.parametrize("temperature", [0, 0.0, 1, 2, 2.0])
def test_temperature_in_range_is_accepted(temperature):
    assert ChatRequest(message="hi", temperature=temperature).temperature == temperature


@pytest.mark.parametrize("temperature", [-0.01, -1, 2.0001, 5, math.inf, -math.inf, math.nan])
def test_temperature_out_of_range_is_rejected(temperature):
    with pytest.raises(ValidationError) as info:
        ChatRequest(message="hi", temperature=temperature)
    assert _error_field(info) == "temperature"


@pytest.mark.parametrize("max_tokens", [1, 1024, MAX_TOKENS_LIMIT])
def test_max_tokens_in_range_is_accepted(max_tokens):
    assert ChatRequest(message="hi", max_tokens=max_tokens).max_tokens == max_tokens


@pytest.mark.parametrize("max_tokens", [0, -1, MAX_TOKENS_LIMIT + 1, 10**12, 1.5, "lots"])
def test_max_tokens_out_of_range_is_rejected(max_tokens):
    with pytest.raises(ValidationError) as info:
        ChatRequest(message="hi", max_tokens=max_tokens)
    assert _error_field(info) == "max_tokens"


GOOD_NAMES = [
    "mock-1",
    "gpt-4o",
    "gpt-4o-mini-2024-07-18",
    "openai/gpt-4o",
    "us.anthropic.claude-3-5-haiku-20241022-v1:0",
    "llama3.1:8b-instruct-q4_K_M",
    "user@example.com+tag",
    "a",
    "a" * 200,
]
BAD_NAMES = [
    "",
    " gpt-4o",
    "gpt-4o ",
    "-gpt",
    ".hidden",
    "gpt 4o",
    "gpt;rm -rf",
    "modèle",
    "模型",
    "a" * 201,
    "mock-1\n",  # a trailing newline must not slip past the pattern
    "conv\nid",
    "gpt\x00",
]


@pytest.mark.parametrize("field", ["model", "conversation_id"])
@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_names_are_accepted(field, name):
    assert getattr(ChatRequest(message="hi", **{field: name}), field) == name


@pytest.mark.parametrize("field", ["model", "conversation_id"])
@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_bad_names_are_rejected(field, name):
    with pytest.raises(ValidationError) as info:
        ChatRequest(message="hi", **{field: name})
    assert _error_field(info) == field


@pytest.mark.parametrize("extra", [{"prompt": "hi"}, {"Message": "hi"}, {"stream": True}, {"maxTokens": 5}])
def test_unknown_fields_are_rejected(extra):
    with pytest.raises(ValidationError) as info:
        ChatRequest.model_validate({"message": "hi", **extra})
    assert info.value.errors()[0]["type"] == "extra_forbidden"
    assert _error_field(info) == next(iter(extra))


def test_missing_message_is_rejected():
    with pytest.raises(ValidationError) as info:
        ChatRequest.model_validate({"context": "only context"})
    assert _error_field(info) == "message"


@pytest.mark.parametrize(
    "text",
    [
        "👩‍👩‍👧‍👦 family emoji and 🇺🇦 flags",
        "مرحبا بالعالم",  # RTL
        "\u202eevil RTL override\u202c",
        "a\x00b NUL inside",
        "e\u0301 combining accent",
        "\ufeffBOM first",
        "line one\nline two\r\n\ttabbed",
        '"quotes" and \\backslashes\\ and </script>',
        "\U0010fffd last plane",
    ],
)
def test_unusual_text_is_accepted_and_round_trips(text):
    req = ChatRequest(message=text, context=text)
    again = ChatRequest.model_validate_json(req.model_dump_json())
    assert again.message == text and again.context == text
    assert json.loads(req.model_dump_json())["message"] == text


visible_text = st.text(max_size=300).filter(lambda t: t.strip())


@settings(max_examples=200, deadline=None)
@given(message=visible_text, context=st.none() | st.text(max_size=300))
def test_any_text_with_something_visible_is_accepted_and_round_trips_through_json(message, context):
    req = ChatRequest(message=message, context=context)
    assert req.message == message and req.context == context
    wire = req.model_dump_json()
    assert json.loads(wire)["message"] == message
    again = ChatRequest.model_validate_json(wire)
    assert again == req
    assert again.message == message and again.context == context
    # the stdlib json path (what arq's serializer uses) round-trips too
    assert ChatRequest.model_validate(json.loads(json.dumps(req.model_dump()))) == req


@settings(max_examples=100, deadline=None)
@given(
    st.text(alphabet=st.characters(categories=["Zs", "Zl", "Zp", "Cc"]), max_size=20).filter(
        lambda t: not t.strip()
    )
)
def test_any_whitespace_only_message_is_rejected(message):
    with pytest.raises(ValidationError):
        ChatRequest(message=message)


# --- JobResult ----------------------------------------------------------------------------------


def _result() -> JobResult:
    return JobResult(
        job_id="job-9",
        status="completed",
        ai_response="Hello there.",
        model="gpt-4o-mini",
        usage=ResultUsage(prompt_tokens=10, completion_tokens=5, total_tokens=15, estimated_cost=0.0000045),
        processing_time=1.25,
        finish_reason="stop",
        worker_id="host-1",
        attempt=1,
    )


def test_job_result_dumps_the_camel_case_names_users_know():
    wire = _result().model_dump(mode="json")
    assert wire["jobId"] == "job-9"
    assert wire["status"] == "completed"
    assert wire["aiResponse"] == "Hello there."
    assert wire["processingTime"] == 1.25
    assert wire["finishReason"] == "stop"
    assert wire["workerId"] == "host-1"
    assert wire["usage"] == {
        "promptTokens": 10,
        "completionTokens": 5,
        "totalTokens": 15,
        "estimatedCost": 0.0000045,
        "estimated": False,
    }
    for snake in ("job_id", "ai_response", "processing_time", "finish_reason", "worker_id"):
        assert snake not in wire


def test_job_result_json_uses_camel_case_too():
    wire = json.loads(_result().model_dump_json())
    assert {"jobId", "aiResponse", "processingTime", "usage"} <= wire.keys()
    assert {"promptTokens", "completionTokens", "totalTokens", "estimatedCost", "estimated"} == wire[
        "usage"
    ].keys()


def test_job_result_reads_back_from_its_own_json():
    result = _result()
    assert JobResult.model_validate_json(result.model_dump_json()) == result
    assert JobResult.model_validate(result.model_dump(mode="json")) == result


def test_unpriced_result_reports_null_cost_not_zero():
    wire = JobResult(job_id="j", status="completed").model_dump(mode="json")
    assert wire["usage"]["estimatedCost"] is None
    assert wire["aiResponse"] == ""


def test_job_result_refuses_an_unknown_status():
    with pytest.raises(ValidationError):
        JobResult(job_id="j", status="finished")  # type: ignore[arg-type]


# -- effective: the one rule for unset model options -------------------------------------------------


def _settings(**env):
    from shared.settings import load_settings

    return load_settings(redis_url="memory://", ai_provider="mock", **env)


def test_a_requests_own_options_win_over_runtime_defaults_and_settings(clean_env):
    chosen = effective(
        ChatRequest(message="hi", model="mock-2", temperature=0.1, max_tokens=7),
        ModelDefaults(default_model="mock-3", temperature=0.5, max_tokens=99),
        _settings(openai_default_model="mock-4", openai_temperature=0.9, openai_max_tokens=500),
    )
    assert chosen == Effective(model="mock-2", temperature=0.1, max_tokens=7)


def test_unset_options_take_the_runtime_defaults_then_the_settings(clean_env):
    settings = _settings(openai_temperature=0.9, openai_max_tokens=500)
    request = ChatRequest(message="hi")
    assert effective(request, ModelDefaults(temperature=0.5), settings) == Effective("mock-1", 0.5, 500)
    assert effective(request, ModelDefaults(default_model="mock-3", max_tokens=99), settings) == Effective(
        "mock-3", 0.9, 99
    )
    assert effective(None, ModelDefaults(), settings) == Effective("mock-1", 0.9, 500)


def test_a_temperature_of_zero_is_a_choice_not_unset(clean_env):
    settings = _settings(openai_temperature=0.9)
    assert (
        effective(
            ChatRequest(message="hi", temperature=0), ModelDefaults(temperature=0.5), settings
        ).temperature
        == 0
    )
    assert effective(ChatRequest(message="hi"), ModelDefaults(temperature=0), settings).temperature == 0
