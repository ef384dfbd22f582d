"""Metrics of the API collector (oldest queued job age) and of the worker (its own /metrics endpoint)."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.metrics import ApiMetrics, WorkerMetrics


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_api_collector_reports_the_oldest_queued_job_age() -> None:
    m = ApiMetrics()
    m.watch_queue(lambda: {"queued": 3, "running": 1}, lambda: 4, lambda: 12.5)
    got = samples(generate_latest(m.registry).decode())
    assert got[("s4ct_oldest_queued_job_age_seconds", ())] == 12.5
    assert got[("s4ct_jobs", (("state", "queued"),))] == 3
    assert got[("s4ct_stream_depth", ())] == 4


def test_api_collector_without_or_with_a_failing_age_reading() -> None:
    m = ApiMetrics()
    m.watch_queue(lambda: {}, lambda: 0)  # the original two-argument form still works
    assert "s4ct_oldest_queued_job_age_seconds" not in generate_latest(m.registry).decode()

    def down() -> float:
        raise OSError("database down")

    m = ApiMetrics()
    m.watch_queue(lambda: {}, lambda: 0, down)
    text = generate_latest(m.registry).decode()
    assert "s4ct_oldest_queued_job_age_seconds" not in text and "s4ct_stream_depth 0.0" in text


def test_worker_metrics_names_and_values() -> None:
    m = WorkerMetrics()
    m.watch(lambda: 2, lambda: {"cuda:0": {"allocated": 1024, "reserved": 2048}})
    m.job_finished("succeeded", None, {"fetching": 0.2, "inference": 0.5, "total": 1.5})
    m.job_finished("failed", "too_few_slices", {"reading": 0.1, "total": 0.3})
    m.job_finished("released", None)
    m.batch_size.observe(3)
    m.model_load_seconds.labels("resnet10-demo").set(1.25)
    m.webhook_failures.inc()
    got = samples(generate_latest(m.registry).decode())
    assert got[("s4ct_worker_jobs_finished_total", (("code", ""), ("outcome", "succeeded")))] == 1
    assert got[("s4ct_worker_jobs_finished_total", (("code", "too_few_slices"), ("outcome", "failed")))] == 1
    assert got[("s4ct_worker_jobs_finished_total", (("code", ""), ("outcome", "released")))] == 1
    assert got[("s4ct_worker_stage_seconds_count", (("stage", "inference"),))] == 1
    assert ("s4ct_worker_stage_seconds_count", (("stage", "total"),)) not in got
    assert got[("s4ct_worker_job_seconds_count", ())] == 2
    assert got[("s4ct_worker_batch_size_sum", ())] == 3
    assert got[("s4ct_worker_model_load_seconds", (("model", "resnet10-demo"),))] == 1.25
    assert got[("s4ct_webhook_delivery_failures_total", ())] == 1
    assert got[("s4ct_worker_jobs_in_flight", ())] == 2
    assert got[("s4ct_worker_gpu_memory_bytes", (("device", "cuda:0"), ("kind", "reserved")))] == 2048


@pytest.mark.parametrize("reading", [None, "empty", "error"])
def test_no_gpu_memory_series_without_cuda(reading: str | None) -> None:
    def fail() -> dict[str, dict[str, int]]:
        raise RuntimeError("no CUDA")

    gpu = {None: None, "empty": dict, "error": fail}[reading]
    m = WorkerMetrics()
    m.watch(lambda: 0, gpu)
    text = generate_latest(m.registry).decode()
    assert "s4ct_worker_gpu_memory_bytes" not in text and "s4ct_worker_jobs_in_flight 0.0" in text


def test_worker_metrics_endpoint_serves_and_closes() -> None:
    m = WorkerMetrics()
    m.watch(lambda: 1)
    port = m.serve(0, "127.0.0.1")
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert r.status_code == 200 and "s4ct_worker_jobs_in_flight 1.0" in r.text
    finally:
        m.close()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
