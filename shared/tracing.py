"""W3C trace context across the queue: the messenger puts the caller's `traceparent` into the job,
the worker opens its span under it, so both sides show up in one trace.

Only the OpenTelemetry API is used: with no SDK configured, spans record nothing but the trace
context still passes through (a worker's span keeps the caller's trace id). Configure an SDK and an
exporter (e.g. `opentelemetry-instrument`) to see the spans.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator, Mapping

from opentelemetry import propagate, trace
from opentelemetry.context import Context

TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
_FIELDS = ("traceparent", "tracestate")


def carrier(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The trace fields of a header map or `_meta` dict, when its traceparent is well formed."""
    if not isinstance(headers, Mapping) or not isinstance(headers.get("traceparent"), str):
        return {}
    if not TRACEPARENT.match(headers["traceparent"].strip()):
        return {}
    return {k: str(headers[k]).strip()[:512] for k in _FIELDS if isinstance(headers.get(k), str)}


def context_of(fields: Mapping[str, str] | None) -> Context | None:
    """The remote parent a carrier names, or None (then a span takes the ambient parent)."""
    fields = carrier(fields)
    if not fields:
        return None
    ctx = propagate.extract(fields)
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def current_carrier() -> dict[str, str]:
    """The current span's context as traceparent/tracestate; empty when nothing is being traced."""
    if not trace.get_current_span().get_span_context().is_valid:
        return {}  # nothing to carry (the propagators' work, per job, for nothing)
    out: dict[str, str] = {}
    propagate.inject(out)
    return carrier(out)


@functools.cache
def _tracer(name: str) -> trace.Tracer:
    """One per name (a proxy until a provider is set, then the provider's): not one per job."""
    return trace.get_tracer(name)


@contextlib.contextmanager
def span(
    tracer_name: str,
    name: str,
    parent: Mapping[str, str] | None = None,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    attributes: dict | None = None,
) -> Iterator[trace.Span]:
    """A span under `parent` (a carrier) when it names a valid one, else under the current span."""
    context = context_of(parent)
    if context is None and _untraced():
        # no SDK and no trace to pass on: the API would make and enter an invalid span, which records
        # nothing (about 5 % of a worker's CPU per no-op job)
        yield trace.INVALID_SPAN
        return
    with _tracer(tracer_name).start_as_current_span(
        name, context=context, kind=kind, attributes=attributes
    ) as s:
        yield s


def needless(parent: Mapping[str, str] | None) -> bool:
    """A span under `parent` would be `trace.INVALID_SPAN` (no SDK, no trace to join or pass on): a
    caller on a hot path skips `span`'s context manager too (a worker's no-op job: ~2 µs)."""
    return (parent is None or not carrier(parent)) and _untraced()  # (None: most jobs, no ABC check)


def _untraced() -> bool:
    """No tracer provider is set (spans record nothing) and no span is current (nothing to join)."""
    return isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider) and not (
        trace.get_current_span().get_span_context().is_valid
    )


def trace_id(s: trace.Span) -> str | None:
    sc = s.get_span_context()
    return format(sc.trace_id, "032x") if sc.is_valid else None
