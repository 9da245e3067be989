"""A caller's W3C traceparent travels inside the job: the worker's span joins the caller's trace.

The OpenTelemetry SDK with an in-memory exporter records the spans; the runtime is embedded
(in-memory Redis, one in-process worker), so messenger and worker spans land in one exporter.
"""

from __future__ import annotations

import json

import anyio
import pytest
from mcp import Client
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from messenger.queue import ANONYMOUS
from messenger.server import build_server
from shared import tracing
from shared.models import ChatRequest

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"


@pytest.fixture(scope="session")
def exporter() -> InMemorySpanExporter:
    """The process's tracer provider can be set once: one SDK provider for the whole session."""
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture
def spans(exporter):
    exporter.clear()
    return exporter


def worker_spans(exporter, job_id: str):
    return [
        s
        for s in exporter.get_finished_spans()
        if s.name == "chat" and s.attributes.get("messaging.message.id") == job_id
    ]


@pytest.mark.parametrize("mode", ["auto", "legacy"], ids=["modern", "legacy"])
async def test_the_worker_span_joins_the_trace_of_the_meta_traceparent(embedded_runtime, spans, mode):
    # the SDK's client puts its own span's context into _meta (legacy era), so the caller is a span too
    with anyio.fail_after(20), tracing.span("test", "caller", {"traceparent": TRACEPARENT}):
        async with Client(build_server(embedded_runtime), mode=mode) as client:
            result = await client.call_tool(
                "send_message_to_ai", {"message": "trace me"}, meta={"traceparent": TRACEPARENT}
            )
    assert not result.is_error
    job_id = result.structured_content["jobId"]
    (span,) = worker_spans(spans, job_id)
    assert format(span.context.trace_id, "032x") == CALLER_TRACE
    assert span.kind == trace.SpanKind.CONSUMER
    assert span.attributes["mcpq.outcome"] == "completed"
    by_id = {s.context.span_id: s for s in spans.get_finished_spans()}
    tool_span = by_id[span.parent.span_id]  # the messenger's span of this tools/call
    assert tool_span.name == "tools/call send_message_to_ai"
    assert tool_span.context.trace_id == span.context.trace_id


async def test_a_job_enqueued_inside_a_span_carries_it_and_one_outside_carries_nothing(
    embedded_runtime, spans
):
    jobs = embedded_runtime.jobs
    with anyio.fail_after(20):
        with tracing.span("test", "caller", {"traceparent": TRACEPARENT}) as caller:
            traced = await jobs.run(ChatRequest(message="traced"))
        untraced_id = await embedded_runtime.queue.submit(ChatRequest(message="untraced"), caller=ANONYMOUS)
        stored = json.loads(await embedded_runtime.redis.get(f"arq:job:{untraced_id}"))
        untraced = await jobs.wait(untraced_id, timeout=10)
    assert traced.status == untraced.status == "completed"
    (span,) = worker_spans(spans, traced.job_id)
    assert span.context.trace_id == caller.get_span_context().trace_id
    assert span.parent.span_id == caller.get_span_context().span_id
    assert stored["k"] == {}, "without a trace the job is what it always was (older workers run it)"
    (alone,) = worker_spans(spans, untraced_id)
    assert format(alone.context.trace_id, "032x") != CALLER_TRACE and alone.parent is None


@pytest.mark.parametrize(
    "fields",
    [
        None,
        ["00-x"],
        {"traceparent": "not-a-traceparent"},
        {"traceparent": "00-" + "0" * 32 + "-" + "0" * 16 + "-01"},  # all-zero ids are invalid
        {"traceparent": TRACEPARENT.upper()},
    ],
)
def test_a_malformed_trace_context_is_ignored(fields):
    assert tracing.context_of(fields) is None
