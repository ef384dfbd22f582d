"""The worker's Prometheus endpoint and the oldest-queued-job age, on real PostgreSQL/Redis/S3.

A job is queued while no worker runs (its age grows in PostgreSQL), then a worker with
``worker_metrics_port=0`` takes it; its callback fails once (500) and is retried. The scrape
of the worker's own endpoint shows the model load, the batch, the stage timings, the finished
job and the failed webhook delivery.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from conftest import LiveApi, Receiver, new_key, wait_for, wait_job  # type: ignore[import-not-found]
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings
from app.db import connect
from app.metrics import ApiMetrics
from app.repository import job_state_counts, oldest_queued_age_s
from app.worker.runner import Worker
from ml.phantom import make_study


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_oldest_queued_age_and_worker_metrics_endpoint(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(worker_metrics_port=0, host="127.0.0.1")
    assert settings.database_url
    key = new_key(settings, "site-metrics")
    zp = tmp_path / "s.zip"
    make_study(zp, seed=5, label=1, difficulty=(0.9, 1.0))

    def age() -> float:
        assert settings.database_url
        with connect(settings.database_url) as conn:
            return oldest_queued_age_s(conn)

    assert age() == 0.0  # nothing queued
    with LiveApi(settings) as api, api.client(key) as c, Receiver(statuses=[500]) as hook:
        r = c.post("/v1/studies", content=zp.read_bytes(), headers={"content-type": "application/zip"})
        assert r.status_code in (200, 201), r.text
        r = c.post(
            "/v1/jobs",
            json={"study_id": r.json()["study_id"], "explain": "none", "callback_url": hook.url},
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        time.sleep(0.3)
        queued_age = age()
        assert 0.2 < queued_age < 120

        # the API's collector exposes it at scrape time
        metrics = ApiMetrics()

        def counts() -> dict[str, int]:
            assert settings.database_url
            with connect(settings.database_url) as conn:
                return job_state_counts(conn)

        metrics.watch_queue(counts, lambda: 1, age)
        got = scrape(generate_latest(metrics.registry).decode())
        assert got[("s4ct_oldest_queued_job_age_seconds", ())] >= queued_age
        assert got[("s4ct_jobs", (("state", "queued"),))] == 1

        worker = Worker(settings, worker_id="metrics-worker")
        worker.start()
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            assert worker.metrics_port
            status = wait_job(c, job_id)
            assert status["state"] == "succeeded", status
            assert age() == 0.0
            wait_for(lambda: len(hook.requests) >= 2, timeout=60, what="webhook retry")

            def worker_scrape() -> dict[Any, float]:
                r = httpx.get(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=10)
                assert r.status_code == 200
                return scrape(r.text)

            got = wait_for(
                lambda: (s := worker_scrape()).get(("s4ct_webhook_delivery_failures_total", ())) and s,
                timeout=30,
                what="webhook failure counted",
            )
        finally:
            worker.stop_event.set()
            thread.join(timeout=10)
            worker.stop(drain_s=5)

    assert got[("s4ct_worker_jobs_finished_total", (("code", ""), ("outcome", "succeeded")))] == 1
    assert got[("s4ct_webhook_delivery_failures_total", ())] == 1
    assert got[("s4ct_worker_model_load_seconds", (("model", "resnet10-demo"),))] > 0
    assert got[("s4ct_worker_batch_size_count", ())] == 1 and got[("s4ct_worker_batch_size_sum", ())] == 1
    for stage in ("fetching", "reading", "qc", "preprocessing", "inference", "saving"):
        assert got[("s4ct_worker_stage_seconds_count", (("stage", stage),))] == 1, stage
    assert got[("s4ct_worker_job_seconds_count", ())] == 1
    assert ("s4ct_worker_jobs_in_flight", ()) in got
    # the endpoint goes away with the worker
    try:
        httpx.get(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=2)
    except httpx.TransportError:
        pass
    else:
        raise AssertionError("the worker's metrics endpoint outlived the worker")
