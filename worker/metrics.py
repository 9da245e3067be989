"""A worker's Prometheus metrics, and the small HTTP server that serves them (WORKER_METRICS_PORT).

Each worker keeps its own CollectorRegistry (never the global default), so an embedded worker and
the messenger hosting it, or several test runtimes in one process, never collide.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.values import MutexValue

log = logging.getLogger("worker.metrics")

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class _LoopValue(MutexValue):
    """A value only the worker's event loop adds to (a scrape's thread reads the float whole): no lock
    taken, where MutexValue's was most of the ~10 additions a no-op job makes (job_ended, first_token)."""

    def inc(self, amount):
        self._value += amount

    def get(self):
        return self._value


def _unlocked(metric: Any) -> Any:
    """`metric`, its values (a counter's, a histogram's count, sum and buckets) made `_LoopValue`s; left
    as they are in prometheus_client's multiprocess mode (its values are not MutexValues)."""
    for value in (
        getattr(metric, "_value", None),
        getattr(metric, "_sum", None),
        *getattr(metric, "_buckets", ()),
    ):
        if type(value) is MutexValue:
            value.__class__ = _LoopValue
    return metric


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = r = registry if registry is not None else CollectorRegistry()
        self.jobs = Counter("mcpq_worker_jobs", "Jobs this worker ended, by outcome", ["outcome"], registry=r)
        self.in_flight = Gauge("mcpq_worker_jobs_in_flight", "Jobs this worker is running now", registry=r)
        self.duration = _unlocked(Histogram(
            "mcpq_worker_job_duration_seconds",
            "Job run time, start to end",
            buckets=LATENCY_BUCKETS,
            registry=r,
        ))  # fmt: skip
        self.first_token = _unlocked(Histogram(
            "mcpq_worker_first_token_seconds",
            "From a job's start to the model's first token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        ))  # fmt: skip
        self.tokens = Counter(
            "mcpq_worker_tokens",
            "Tokens used, by model and kind (prompt, completion)",
            ["model", "kind"],
            registry=r,
        )
        self.cost = Counter("mcpq_worker_cost_usd", "Estimated cost in USD, by model", ["model"], registry=r)
        self.tool_calls = Counter(
            "mcpq_worker_tool_calls",
            "MCP tool calls this worker ran, by server and outcome (ok, error)",
            ["server", "outcome"],
            registry=r,
        )
        self.tool_duration = _unlocked(Histogram(
            "mcpq_worker_tool_call_seconds", "MCP tool call time", buckets=LATENCY_BUCKETS, registry=r
        ))  # fmt: skip
        self.fallbacks = Counter(
            "mcpq_worker_fallbacks",
            "Jobs another model answered (MODEL_FALLBACKS), by the model first asked and the one that answered",
            ["from_model", "model"],
            registry=r,
        )
        self._children: dict[tuple, Any] = {}  # (metric, label values) -> its child (`_of`)
        self.heartbeat = Gauge(
            "mcpq_worker_heartbeat_timestamp_seconds", "Unix time of this worker's last heartbeat", registry=r
        )

    def watch_running(self, running: Callable[[], int]) -> None:
        self.in_flight.set_function(running)

    def _of(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, kept: prometheus_client's takes a lock and checks every label each
        call (~1 µs; four a job were 2/3 of `job_ended`'s CPU)."""
        child = self._children.get((metric, labels))
        if child is None:
            child = self._children[(metric, labels)] = _unlocked(metric.labels(*labels))
        return child

    def job_ended(self, result: dict) -> None:
        """Count a JobResult (as JSON, camelCase) once."""
        self._of(self.jobs, result["status"]).inc()
        if result.get("processingTime") is not None:
            self.duration.observe(result["processingTime"])
        model, usage = result.get("model") or "?", result.get("usage") or {}
        for kind in ("prompt", "completion"):
            if usage.get(f"{kind}Tokens"):
                self._of(self.tokens, model, kind).inc(usage[f"{kind}Tokens"])
        if usage.get("estimatedCost"):
            self._of(self.cost, model).inc(usage["estimatedCost"])
        if result.get("fallbackFrom"):
            self._of(self.fallbacks, result["fallbackFrom"], model).inc()
        for call in result.get("toolCalls") or []:
            if call.get("result") is not None:  # it answered (a cancelled job's last call may not have)
                self._of(self.tool_calls, call["server"], "error" if call["isError"] else "ok").inc()
                self.tool_duration.observe((call.get("durationMs") or 0) / 1000)


class MetricsServer:
    """prometheus_client's HTTP server in a daemon thread; `/metrics` (any path) serves the registry."""

    def __init__(self, registry: CollectorRegistry, port: int, host: str = "0.0.0.0"):
        self._httpd, self._thread = start_http_server(port, addr=host, registry=registry)
        self.port = self._httpd.server_address[1]
        log.info("worker metrics at http://%s:%d/metrics", host, self.port, extra={"metrics_port": self.port})

    def close(self) -> None:
        threading.Thread(target=self._httpd.shutdown, daemon=True).start()  # never blocks the event loop
        self._httpd.server_close()
