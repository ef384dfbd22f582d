"""deploy/grafana/service4ct.json: a well-formed dashboard querying only metrics the code exports."""

from __future__ import annotations

import json
import re
from typing import Any

from prometheus_client import CollectorRegistry
from s4ct_deploy import ROOT

from app.config import Settings
from app.drift import DriftFigures, drift_families
from app.metrics import ApiMetrics, WorkerMetrics

DASHBOARD = ROOT / "deploy" / "grafana" / "service4ct.json"
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "rate", "increase", "irate", "by", "without", "le",
    "histogram_quantile", "on", "ignoring", "and", "or", "unless", "bool", "offset",
}  # fmt: skip


def exported_series() -> set[str]:
    """Every series name a scrape of the API and of a worker can contain."""
    api = ApiMetrics()
    api.watch_queue(lambda: {"queued": 1}, lambda: 1, lambda: 1.0)
    worker = WorkerMetrics()
    worker.watch(lambda: 1, lambda: {"cuda:0": {"allocated": 1, "reserved": 1, "peak_allocated": 1}})
    worker.job_finished("succeeded", None, {"inference": 1.0, "total": 1.0})
    worker.batch_size.observe(1)
    worker.model_load_seconds.labels("m").set(1)
    worker.webhook_failures.inc()
    api.requests.labels("GET", "/v1/jobs/{job_id}", "200").inc()
    api.latency.labels("GET", "/v1/jobs/{job_id}").observe(0.1)
    api.upload_bytes.inc(10)
    names = set()
    drift = DriftFigures(60, {"probability": 0.1}, 0.0, 0.0, shadows={"s": (10, 9)})
    for fam in drift_families({"m": drift}, Settings()):
        names |= {s.name for s in fam.samples}
    registry: CollectorRegistry
    for registry in (api.registry, worker.registry):
        for fam in registry.collect():
            names |= {s.name for s in fam.samples}
    return names


def panels(d: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in d["panels"]:
        out.append(p)
        out += p.get("panels", [])
    return out


def test_dashboard_structure() -> None:
    d = json.loads(DASHBOARD.read_text())
    assert d["uid"] == "service4ct" and d["title"]
    ids = [p["id"] for p in panels(d)]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in d["templating"]["list"]} >= {"datasource"}
    for p in panels(d):
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"], p["title"]


def test_every_query_uses_exported_metric_names() -> None:
    d = json.loads(DASHBOARD.read_text())
    exported = exported_series()
    used = set()
    for p in panels(d):
        for t in p.get("targets", []):
            expr = re.sub(r'\{[^}]*\}|"[^"]*"|\[[^\]]*\]', "", t["expr"])  # drop matchers, strings, ranges
            for word in re.findall(r"[a-zA-Z_][a-zA-Z0-9_]*", expr):
                if word in PROMQL_WORDS or not word.startswith("s4ct_"):
                    continue
                used.add(word)
                assert word in exported, f"{p['title']}: {word} is not exported"
    # every metric an operator watches (latency, uploads, queue, jobs, worker stages, GPU, webhooks) is on it
    for base in (
        "s4ct_http_request_seconds_bucket",
        "s4ct_upload_bytes_total",
        "s4ct_stream_depth",
        "s4ct_oldest_queued_job_age_seconds",
        "s4ct_jobs",
        "s4ct_worker_stage_seconds_bucket",
        "s4ct_worker_batch_size_sum",
        "s4ct_worker_model_load_seconds",
        "s4ct_worker_gpu_memory_bytes",
        "s4ct_webhook_delivery_failures_total",
        "s4ct_worker_jobs_finished_total",
        "s4ct_drift_psi",
        "s4ct_ood_flag_rate",
        "s4ct_indeterminate_rate",
        "s4ct_drift_threshold",
        "s4ct_shadow_agreement",
    ):
        assert base in used, base
