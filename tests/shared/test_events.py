"""Events on the wire: every type survives dump/parse, and anything else is a ValueError, never a crash."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from pydantic_core import to_json

from shared.events import (
    TERMINAL,
    CancelledEvent,
    DoneEvent,
    ErrorEvent,
    StartEvent,
    TokenEvent,
    TokenUsage,
    done_body,
    dump_event,
    event_head,
    parse_event,
    start_body,
    token_body,
)

EVENT_TYPES = (StartEvent, TokenEvent, DoneEvent, ErrorEvent, CancelledEvent)
BASE = {"job_id": "job-1", "seq": 3, "attempt": 2, "ts": 1_700_000_000.125}

EXAMPLES = [
    StartEvent(**BASE, worker_id="host-abc123", model="mock-1"),
    TokenEvent(**BASE, text="Hello, wörld 👋 "),
    DoneEvent(
        **BASE,
        usage=TokenUsage(prompt_tokens=12, completion_tokens=30, total_tokens=42),
        cost=0.000123,
        finish_reason="stop",
        model="gpt-4o-mini",
    ),
    DoneEvent(**BASE, usage=TokenUsage(), cost=None, finish_reason=None, model="my-local-model"),
    ErrorEvent(**BASE, error="the provider rejected the API key (HTTP 401); check OPENAI_API_KEY."),
    CancelledEvent(**BASE),
]


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: e.type)
def test_every_event_type_round_trips(event):
    data = dump_event(event)
    assert isinstance(data, bytes)
    parsed = parse_event(data)
    assert type(parsed) is type(event)
    assert parsed == event


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: e.type)
def test_wire_format_has_the_documented_envelope(event):
    wire = json.loads(dump_event(event))
    assert {"job_id", "seq", "attempt", "type", "ts"} <= wire.keys()
    assert wire["type"] == event.type
    assert (wire["job_id"], wire["seq"], wire["attempt"]) == ("job-1", 3, 2)


def test_done_event_wire_fields():
    wire = json.loads(dump_event(EXAMPLES[2]))
    assert wire["usage"] == {
        "prompt_tokens": 12,
        "completion_tokens": 30,
        "total_tokens": 42,
        "estimated": False,
    }
    assert wire["cost"] == 0.000123
    assert wire["finish_reason"] == "stop"
    assert wire["model"] == "gpt-4o-mini"


def test_unpriced_model_cost_stays_null_not_zero():
    wire = json.loads(dump_event(EXAMPLES[3]))
    assert wire["cost"] is None
    assert parse_event(dump_event(EXAMPLES[3])).cost is None


def test_token_event_text_is_on_the_wire():
    assert json.loads(dump_event(EXAMPLES[1]))["text"] == "Hello, wörld 👋 "


def test_terminal_types_are_done_error_cancelled():
    assert {"done", "error", "cancelled"} == TERMINAL
    assert {cls.model_fields["type"].default for cls in EVENT_TYPES} - TERMINAL == {"start", "token"}


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: e.type)
def test_unknown_extra_fields_are_ignored(event):
    wire = json.loads(dump_event(event))
    wire.update({"added_by_a_newer_worker": {"nested": [1, 2]}, "trace_id": "abc"})
    parsed = parse_event(json.dumps(wire))
    assert parsed == event
    assert "trace_id" not in parsed.model_dump()


def test_parse_accepts_str_as_well_as_bytes():
    data = dump_event(EXAMPLES[1])
    assert parse_event(data.decode()) == parse_event(data)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"\xff\xfe\x00",
        b"null",
        b"[]",
        b'"token"',
        b"{}",
        b'{"type": "token"}',  # envelope missing
        b'{"type": "bogus", "job_id": "j", "seq": 0, "attempt": 1, "ts": 1}',
        b'{"job_id": "j", "seq": 0, "attempt": 1, "ts": 1, "text": "no type"}',
        b'{"type": "token", "job_id": "j", "seq": -1, "attempt": 1, "ts": 1, "text": "x"}',
        b'{"type": "token", "job_id": "j", "seq": 0, "attempt": 0, "ts": 1, "text": "x"}',
        b'{"type": "token", "job_id": "j", "seq": 0, "attempt": 1, "ts": 1}',  # no text
        b'{"type": "done", "job_id": "j", "seq": 0, "attempt": 1, "ts": 1, "model": "m"}',  # no usage
    ],
)
def test_malformed_input_raises_value_error(raw):
    with pytest.raises(ValueError):
        parse_event(raw)


def test_events_are_immutable():
    with pytest.raises(ValidationError):
        EXAMPLES[1].text = "changed"  # type: ignore[misc]


# --- properties ---------------------------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False)
envelope = {
    "job_id": st.text(),
    "seq": st.integers(min_value=0, max_value=2**53),
    "attempt": st.integers(min_value=1, max_value=2**53),
    "ts": finite,
}
counts = st.integers(min_value=0, max_value=2**53)
usages = st.builds(TokenUsage, prompt_tokens=counts, completion_tokens=counts, total_tokens=counts)
valid_events = st.one_of(
    st.builds(StartEvent, **envelope, worker_id=st.text(), model=st.text()),
    st.builds(TokenEvent, **envelope, text=st.text()),
    st.builds(
        DoneEvent,
        **envelope,
        usage=usages,
        cost=st.none() | finite,
        finish_reason=st.none() | st.text(),
        model=st.text(),
    ),
    st.builds(ErrorEvent, **envelope, error=st.text()),
    st.builds(CancelledEvent, **envelope),
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | finite | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)
# dicts shaped like events, with each field sometimes right and sometimes not
near_events = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["start", "token", "done", "error", "cancelled", "TOKEN", "", "x"])
        | json_values,
        "job_id": st.text() | json_values,
        "seq": st.integers(min_value=-2, max_value=5) | json_values,
        "attempt": st.integers(min_value=-1, max_value=5) | json_values,
        "ts": finite | json_values,
    },
    optional={
        "text": st.text() | json_values,
        "error": st.text() | json_values,
        "worker_id": st.text() | json_values,
        "model": st.text() | json_values,
        "finish_reason": st.none() | st.text() | json_values,
        "cost": st.none() | finite | json_values,
        "usage": st.fixed_dictionaries({}, optional={"prompt_tokens": counts, "total_tokens": json_values})
        | json_values,
    },
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _parses_or_value_error(raw: bytes | str) -> None:
    try:
        event = parse_event(raw)
    except ValueError:
        return
    assert isinstance(event, EVENT_TYPES)
    assert parse_event(dump_event(event)) == event


@FAST
@given(valid_events)
def test_any_valid_event_round_trips(event):
    parsed = parse_event(dump_event(event))
    assert type(parsed) is type(event)
    assert parsed == event


@FAST
@given(st.fixed_dictionaries(envelope), st.text())
def test_a_token_written_without_its_model_is_the_same_bytes(fields, text):
    """The worker writes token events with token_body after the job's event_head: a reader cannot
    tell them from dump_event's."""
    job_id, seq, attempt, ts = fields["job_id"], fields["seq"], fields["attempt"], fields["ts"]
    wired = event_head(job_id) + token_body(seq, attempt, to_json(ts), text)
    assert wired == dump_event(TokenEvent(**fields, text=text))


@FAST
@given(st.fixed_dictionaries(envelope), st.text(), st.text())
def test_a_start_written_without_its_model_is_the_same_bytes(fields, worker_id, model):
    """The worker writes a job's start event with start_body: a reader cannot tell it from dump_event's."""
    job_id, seq, attempt, ts = fields["job_id"], fields["seq"], fields["attempt"], fields["ts"]
    wired = event_head(job_id) + start_body(seq, attempt, ts, worker_id, model)
    assert wired == dump_event(StartEvent(**fields, worker_id=worker_id, model=model))


@FAST
@given(
    st.fixed_dictionaries(envelope),
    usages,
    st.one_of(st.none(), finite),
    st.one_of(st.none(), st.text()),
    st.text(),
)
def test_a_done_written_without_its_model_is_the_same_bytes(fields, usage, cost, finish_reason, model):
    """The worker writes a completed job's done event with done_body: a reader cannot tell it from
    dump_event's."""
    job_id, seq, attempt, ts = fields["job_id"], fields["seq"], fields["attempt"], fields["ts"]
    wired = event_head(job_id) + done_body(seq, attempt, to_json(ts), usage, cost, finish_reason, model)
    event = DoneEvent(**fields, usage=usage, cost=cost, finish_reason=finish_reason, model=model)
    assert wired == dump_event(event)


@FAST
@given(st.binary(max_size=300))
def test_arbitrary_bytes_parse_or_raise_value_error(raw):
    _parses_or_value_error(raw)


@FAST
@given(json_values)
def test_arbitrary_json_parses_or_raises_value_error(value):
    _parses_or_value_error(json.dumps(value))


@FAST
@given(near_events)
def test_event_shaped_json_parses_or_raises_value_error(value):
    _parses_or_value_error(json.dumps(value).encode())


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_a_non_finite_timestamp_is_refused_rather_than_dumped_as_null(bad):
    """An event that dumps to JSON the parser then refuses would break every reader of the stream."""
    try:
        event = TokenEvent(job_id="j", seq=0, attempt=1, ts=bad, text="x")
    except ValidationError:
        return
    parsed = parse_event(dump_event(event))
    assert parsed.ts == event.ts or (math.isnan(parsed.ts) and math.isnan(event.ts))
