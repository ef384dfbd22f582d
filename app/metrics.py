"""Prometheus metrics of the API: one registry per app (no process globals)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["ApiMetrics"]


class _QueueCollector(Collector):
    """Jobs per state (PostgreSQL) and stream depth (Redis), read at scrape time."""

    def __init__(self, counts: Callable[[], dict[str, int]], depth: Callable[[], int]) -> None:
        self.counts, self.depth = counts, depth

    def collect(self) -> Iterator[Any]:
        jobs = GaugeMetricFamily("s4ct_jobs", "Jobs by state", labels=["state"])
        try:
            counts = self.counts()
        except Exception:
            counts = {}
        for state in ("queued", "running", "succeeded", "failed"):
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
        try:
            yield GaugeMetricFamily(
                "s4ct_stream_depth", "Unfinished entries in the job stream", value=self.depth()
            )
        except Exception:
            return


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "s4ct_http_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "s4ct_http_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.upload_bytes = Counter("s4ct_upload_bytes", "Bytes of study uploads", registry=self.registry)

    def watch_queue(self, counts: Callable[[], dict[str, int]], depth: Callable[[], int]) -> None:
        self.registry.register(_QueueCollector(counts, depth))
