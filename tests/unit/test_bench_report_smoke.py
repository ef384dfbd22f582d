"""Smoke tests of ``bench/load.py`` and ``bench/report.py`` at the tiniest sizes.

No timing assertions (machines are noisy): only that the load test's sections run against the
real embedded stack, API and worker processes, observe what they claim (every upload 201, every
job succeeded once, latencies and memory sampled), and that the report has every row, in its
Markdown and its JSON, with a number where a bench ran and a reason where it did not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
NO_GPU = "not measured: needs a CUDA GPU"
HEADER = "| measure | ours | peer in the same run | ratio | goal | met? | machine |"


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    return proc


def _report(tmp: Path, *extra: str, timeout: float = 300.0) -> tuple[str, dict[str, Any]]:
    """Run bench/report.py on ``tmp``: (the Markdown, report.json)."""
    out = tmp / "performance.md"
    _run(["bench/report.py", "--results-dir", str(tmp), "--out", str(out), *extra], timeout)
    return out.read_text(), json.loads((tmp / "report.json").read_text())


def _table_rows(md: str) -> list[list[str]]:
    lines = md.splitlines()
    start = lines.index(HEADER) + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("| "):
            break
        rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return rows


def _check_every_row(md: str, rep: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The table and report.json hold the same rows, 7 cells each; rows by measure."""
    table = _table_rows(md)
    assert len(table) == len(rep["rows"]) >= 20
    for cells, row in zip(table, rep["rows"], strict=True):
        assert len(cells) == 7, cells
        assert cells[0] == row["measure"] and cells[1] == row["ours"] and cells[5] == row["met"]
    assert "## Runs" in md and "cores" in md.split(HEADER, maxsplit=1)[0]  # the report's own machine line
    return {r["measure"]: r for r in rep["rows"]}


def _h100_rows(rows: dict[str, dict[str, str]]) -> list[dict[str, str]]:
    h100 = [r for m, r in rows.items() if m.startswith("H100:")]
    assert len(h100) == 4
    return h100


def test_report_without_results_has_every_row(tmp_path: Path) -> None:
    """Nothing to reuse and nothing run: every row is there and says it was not measured."""
    md, rep = _report(tmp_path, "--no-run", timeout=120)
    rows = _check_every_row(md, rep)
    benches = {r["bench"] for r in rows.values()}
    assert benches == {
        "preprocess",
        "inference",
        "inference_cuda",
        "explain",
        "ood",
        "service",
        "load",
        "e2e",
        "e2e_gpu",
        "gpu",
    }
    for r in rows.values():
        assert r["ours"].startswith("not measured"), r
        assert r["met"] == "n/a" and r["goal"]
    if not torch.cuda.is_available():
        assert all(r["ours"] == NO_GPU for r in _h100_rows(rows))
    assert rep["runs"] == []


def test_report_names_its_hardware_and_writes_paths_relative(tmp_path: Path) -> None:
    """The report's header names the hardware it ran on; the Runs table shows paths under the
    repository relative to its root, also for a run recorded with absolute paths."""
    command = f"python bench/service.py --cache-dir {ROOT}/var/bench --json {ROOT}/var/bench/service.json"
    meta = {"bench": "service", "command": command, "date": "2026-01-01T00:00:00+00:00", "wall_s": 60.0}
    (tmp_path / "service.meta.json").write_text(json.dumps({**meta, "returncode": 0}))
    md, rep = _report(tmp_path, "--no-run", "--benches", "service", timeout=120)
    header = next(line for line in md.splitlines() if line.startswith("Generated on"))
    assert f"{os.cpu_count()} cores" in header and "GPU " in header, header
    assert str(ROOT) not in md
    assert "`python bench/service.py --cache-dir var/bench --json var/bench/service.json`" in md
    assert [m["bench"] for m in rep["runs"]] == ["service"]


@pytest.mark.slow  # ~3 min: embedded stack, API and worker processes, the demo model, a quick inference bench
def test_load_tiny_then_report(tmp_path: Path) -> None:
    load_json = tmp_path / "load.json"
    args = "--uploads 2 --upload-mb 2 --rps 20 --seconds 1 --warmup 0.2 --jobs 3 --studies 2"
    args += " --sections upload,status,jobs,e2e --e2e-slices 24 --e2e-runs 1"
    proc = _run(
        ["bench/load.py", *args.split(), "--cache-dir", str(tmp_path), "--json", str(load_json)], timeout=900
    )
    for needle in ("POST /v1/studies (the service)", "peer: boto3", "GET /v1/jobs/{id}", "2 workers ÷ 1"):
        assert needle in proc.stdout, (needle, proc.stdout)

    rep = json.loads(load_json.read_text())
    up = rep["upload"]
    s = up["service"]
    assert s["statuses"] == {"201": 4} and s["all_201"] is True  # 2 at once × 2 rounds (the default)
    assert s["mb_s"] > 0 and up["peer_boto3"]["mb_s"] > 0
    assert len(s["rounds"]) == 2
    for r in s["rounds"]:
        assert 0 < r["rss_before_mib"] <= r["rss_peak_mib"] and r["rss_after_mib"] > 0
    assert s["rss_peak_mib"] == max(r["rss_peak_mib"] for r in s["rounds"])
    for route in ("jobs", "healthz"):
        assert rep["status"][route]["ok"] > 0 and rep["status"][route]["error_count"] == 0
    runs = rep["jobs"]["runs"]
    assert set(runs) == {"1", "2"}
    for w, r in runs.items():
        assert r["api_states"] == {"succeeded": 3} and r["states"] == {"succeeded": 3}
        assert r["max_attempt"] == 1 and r["jobs_per_s"] > 0
        assert r["latency_s"]["p50"] <= r["latency_s"]["p95"]
        assert sum(r["jobs_by_worker_pid"].values()) == 3 and "?" not in r["jobs_by_worker_pid"]
        assert len(r["jobs_by_worker_pid"]) <= int(w)
    assert rep["jobs"]["ratio_2w_over_1w"] > 0
    e2e = rep["e2e"]
    assert e2e["slices"] == 24 and e2e["job_s"]["n"] == 1 and e2e["job_s"]["p50"] > 0
    assert {"fetching", "preprocessing", "inference"} <= set(e2e["stages_median_s"])
    assert {g["goal"] for g in rep["goals"]}  # goals are reported (pass or miss: no timing asserted)

    # the report: load.json reused, the inference bench run with --quick, the rest left out
    md, rj = _report(tmp_path, "--reuse", "--quick", "--benches", "load,inference", timeout=600)
    rows = _check_every_row(md, rj)
    load_rows = [r for r in rows.values() if r["bench"] == "load"]
    assert len(load_rows) == 7
    for r in load_rows:
        assert not r["ours"].startswith("not measured"), r
        judged = not r["measure"].startswith("load: throughput 2 workers")  # reported, not judged
        assert r["met"] in (("yes", "**no**") if judged else ("—",)), r
        assert "cores" in r["machine"]
    assert "2 concurrent uploads of 2 MB" in md and "4/4 201 (2 at once × 2 round(s)" in md
    demo = next(r for m, r in rows.items() if m.startswith("forward ResNet-10"))
    assert "vol/s" in demo["ours"] and "@32³" in demo["measure"]
    r34 = next(r for m, r in rows.items() if m.startswith("forward ResNet-34"))
    assert r34["ours"].startswith("not measured in this run")  # --quick leaves ResNet-34 out
    for r in rows.values():
        if r["bench"] in ("preprocess", "explain", "ood", "service"):
            assert r["ours"] == "not measured: left out of this report", r
    if not torch.cuda.is_available():
        assert all(r["ours"] == NO_GPU for r in _h100_rows(rows))
    assert [m["bench"] for m in rj["runs"]] == ["load", "inference"]
    assert (tmp_path / "inference.meta.json").is_file() and (tmp_path / "inference.log").is_file()
