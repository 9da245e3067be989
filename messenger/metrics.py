"""The messenger's Prometheus metrics (`GET /metrics` on its HTTP server), and the MCP middleware
that counts tool calls and joins a caller's trace.

One CollectorRegistry per Runtime, never the global default; in embedded mode the in-process worker
writes its `mcpq_worker_*` metrics into the same registry, so one scrape shows both sides. The MCP and
HTTP types are imported where the server uses them: `messenger ask` in embedded mode needs neither.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from messenger.health import capacity, live_workers, queue_counts
from shared import tracing

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

MAX_TOOL_LABELS = 50  # a client calling made-up tool names cannot grow the label set without bound


class MessengerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = r = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "mcpq_messenger_requests", "MCP tool calls, by tool and outcome (ok, error)", ["tool", "outcome"],
            registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "mcpq_queue_depth", "Jobs queued and not yet started (read at scrape time)", registry=r
        )
        self.running = Gauge(
            "mcpq_jobs_running", "Jobs a live worker is running (read at scrape time)", registry=r
        )
        self.workers = Gauge(
            "mcpq_workers_live", "Workers with a live heartbeat (read at scrape time)", registry=r
        )
        self.followed = Gauge(
            "mcpq_messenger_jobs_followed", "Jobs this messenger is following now", registry=r
        )
        self.waiting = Gauge(
            "mcpq_capacity_waiting", "Jobs waiting for a model's capacity (MODEL_LIMITS or a 429 cool-down)",
            ["model"], registry=r,
        )  # fmt: skip
        self.upstream_429s = Gauge(
            "mcpq_capacity_upstream_429s", "429s the provider answered for a model, all workers since Redis began",
            ["model"], registry=r,
        )  # fmt: skip
        self.cool_down = Gauge(
            "mcpq_capacity_cool_down_seconds", "Seconds left of a model's cool-down after a 429 (0: none)",
            ["model"], registry=r,
        )  # fmt: skip
        self._tools: set[str] = set()

    async def scrape(self, runtime) -> bytes:
        """The registry as Prometheus text; the Redis-backed gauges are read now."""
        workers = await live_workers(runtime.redis)
        waiting, running = await queue_counts(runtime.redis, workers)
        self.queue_depth.set(waiting)
        self.running.set(running)
        self.workers.set(len(workers))
        models = await capacity(runtime.redis, runtime.settings, workers)
        for gauge, field in ((self.waiting, "waiting"), (self.upstream_429s, "upstream_429s"),
                             (self.cool_down, "cool_down_s")):  # fmt: skip
            gauge.clear()
            for model, row in models.items():
                gauge.labels(model).set(row[field])
        self.followed.set(runtime.hub.following)
        return generate_latest(self.registry)

    async def middleware(self, ctx: Any, call_next) -> Any:
        """Counts each tools/call by outcome; a `traceparent` HTTP header parents the call's span
        when the request's `_meta` named none (the SDK's own middleware handles `_meta.traceparent`)."""
        if ctx.method != "tools/call":
            return await call_next(ctx)
        name = (ctx.params or {}).get("name")
        tool = name if isinstance(name, str) and len(name) <= 64 else "other"
        if tool not in self._tools:
            if len(self._tools) >= MAX_TOOL_LABELS:
                tool = "other"
            else:
                self._tools.add(tool)
        with contextlib.ExitStack() as stack:
            headers = getattr(getattr(ctx, "request", None), "headers", None)
            if not tracing.carrier(ctx.meta) and tracing.carrier(headers):
                stack.enter_context(
                    tracing.span("mcp-queue.messenger", f"tools/call {tool}", headers, trace.SpanKind.SERVER)
                )
            try:
                result = await call_next(ctx)
            except BaseException:
                self.requests.labels(tool, "error").inc()
                raise
        from mcp_types import CallToolResult

        failed = isinstance(result, CallToolResult) and result.is_error
        failed = failed or (isinstance(result, dict) and result.get("isError") is True)
        self.requests.labels(tool, "error" if failed else "ok").inc()
        return result


def metrics_route(runtime):
    """`GET /metrics`; behind BearerAuth like every path but /health when MCP_API_KEY is set."""

    from starlette.responses import Response

    async def route(_: Request) -> Response:
        return Response(await runtime.metrics.scrape(runtime), media_type=CONTENT_TYPE_LATEST)

    return route
