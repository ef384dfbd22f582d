"""Prometheus metrics of the API and of the worker: one registry per app/worker (no process globals).

Names (counters get ``_total`` appended by prometheus_client):

- API: ``s4ct_http_requests_total``, ``s4ct_http_request_seconds``, ``s4ct_upload_bytes_total``,
  ``s4ct_jobs{state}``, ``s4ct_stream_depth``, ``s4ct_oldest_queued_job_age_seconds`` (read at
  scrape time from PostgreSQL and Redis).
- worker (``S4CT_WORKER_METRICS_PORT``): ``s4ct_worker_stage_seconds{stage}``,
  ``s4ct_worker_job_seconds``, ``s4ct_worker_batch_size``, ``s4ct_worker_model_load_seconds{model}``,
  ``s4ct_worker_jobs_finished_total{outcome,code}``, ``s4ct_worker_jobs_in_flight``,
  ``s4ct_webhook_delivery_failures_total``, ``s4ct_worker_gpu_memory_bytes{device,kind}`` (CUDA only).

This module never imports torch: the worker hands in a callable reading the GPU memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["ApiMetrics", "WorkerMetrics"]

#: stage durations: from milliseconds (QC) to many minutes (a 256³ occlusion on CPU)
STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class _QueueCollector(Collector):
    """Jobs per state (PostgreSQL) and stream depth (Redis), read at scrape time."""

    def __init__(
        self,
        counts: Callable[[], dict[str, int]],
        depth: Callable[[], int],
        oldest_queued_age: Callable[[], float] | None = None,
    ) -> None:
        self.counts, self.depth, self.oldest_queued_age = counts, depth, oldest_queued_age

    def collect(self) -> Iterator[Any]:
        jobs = GaugeMetricFamily("s4ct_jobs", "Jobs by state", labels=["state"])
        try:
            counts = self.counts()
        except Exception:
            counts = {}
        for state in ("queued", "running", "succeeded", "failed", "cancelled"):
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
        if self.oldest_queued_age is not None:
            try:
                age = float(self.oldest_queued_age())
            except Exception:
                age = None
            if age is not None:
                yield GaugeMetricFamily(
                    "s4ct_oldest_queued_job_age_seconds",
                    "Age of the oldest queued job (0 when none is queued)",
                    value=age,
                )
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

    def watch_queue(
        self,
        counts: Callable[[], dict[str, int]],
        depth: Callable[[], int],
        oldest_queued_age: Callable[[], float] | None = None,
    ) -> None:
        """Read jobs per state, stream depth and (if given) the oldest queued job's age at scrape time."""
        self.registry.register(_QueueCollector(counts, depth, oldest_queued_age))


class _WorkerCollector(Collector):
    """Jobs in flight and GPU memory, read at scrape time."""

    def __init__(
        self, in_flight: Callable[[], int], gpu_memory: Callable[[], dict[str, dict[str, int]]] | None
    ) -> None:
        self.in_flight, self.gpu_memory = in_flight, gpu_memory

    def collect(self) -> Iterator[Any]:
        yield GaugeMetricFamily(
            "s4ct_worker_jobs_in_flight", "Jobs held by this worker", value=self.in_flight()
        )
        if self.gpu_memory is None:
            return
        try:
            per_device = self.gpu_memory()
        except Exception:
            return
        if not per_device:
            return
        g = GaugeMetricFamily(
            "s4ct_worker_gpu_memory_bytes", "GPU memory of this process", labels=["device", "kind"]
        )
        for device, kinds in sorted(per_device.items()):
            for kind, value in sorted(kinds.items()):
                g.add_metric([device, kind], value)
        yield g


class WorkerMetrics:
    """Metrics of one worker process, served on ``S4CT_WORKER_METRICS_PORT`` by :meth:`serve`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.stage_seconds = Histogram(
            "s4ct_worker_stage_seconds",
            "Duration of a job stage (fetching, reading, qc, decoding, preprocessing, inference, ...)",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self.job_seconds = Histogram(
            "s4ct_worker_job_seconds",
            "Claim to finish of a job that succeeded or failed with a code",
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "s4ct_worker_batch_size",
            "Studies per inference batch",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64),
            registry=self.registry,
        )
        self.model_load_seconds = Gauge(
            "s4ct_worker_model_load_seconds",
            "Time to fetch, verify and load a model",
            ["model"],
            registry=self.registry,
        )
        self.jobs_finished = Counter(
            "s4ct_worker_jobs_finished",
            "Jobs this worker finished, by outcome (succeeded, failed, released, stale) and error code",
            ["outcome", "code"],
            registry=self.registry,
        )
        self.reconciled = Counter(
            "s4ct_worker_reconciled_jobs",
            "Jobs the reconciler repaired: lost (queued in PostgreSQL, missing from Redis: re-enqueued), "
            "requeued (lease expired), failed (attempts used up), promoted (routine jobs that waited "
            "priority_age_s, moved to the urgent lane)",
            ["action"],
            registry=self.registry,
        )
        self.webhook_failures = Counter(
            "s4ct_webhook_delivery_failures",
            "Webhook deliveries that failed (each failed attempt, retried or given up)",
            registry=self.registry,
        )
        self._server: Any = None

    def watch(
        self, in_flight: Callable[[], int], gpu_memory: Callable[[], dict[str, dict[str, int]]] | None = None
    ) -> None:
        """Register the scrape-time readings (``gpu_memory``: device → {kind: bytes}, or None)."""
        self.registry.register(_WorkerCollector(in_flight, gpu_memory))

    def job_finished(
        self, outcome: str, code: str | None = None, timings: dict[str, float] | None = None
    ) -> None:
        """Count a job leaving this worker; observe its stage timings when it finished for good."""
        self.jobs_finished.labels(outcome, code or "").inc()
        for stage, seconds in (timings or {}).items():
            if stage == "total":
                self.job_seconds.observe(seconds)
            else:
                self.stage_seconds.labels(stage).observe(seconds)

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` in a daemon thread; returns the bound port (``port=0``: any free one)."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server = server
        return int(server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
