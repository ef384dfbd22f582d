"""Smoke tests of the benchmarks at tiny sizes.

No timing assertions (machines are noisy). ``bench/preprocess.py``: the ZIP → tensor benchmark
completes, prints its table and reports r ≥ 0.999 for ours against the plain reference.
``bench/service.py`` (marked slow): every section runs and writes its JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "preprocess.py"


def test_bench_preprocess_tiny_zip_to_tensor(tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        str(BENCH),
        "--slices",
        "40",
        "--size",
        "96",
        "--pixel-mm",
        "3.5",
        "--slice-mm",
        "5",
        "--target",
        "64",
        "--repeat",
        "1",
        "--cache-dir",
        str(tmp_path),
        "--json",
        str(out_json),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for needle in ("ours", "reference", "monai", "monai/ours", "reference/ours", "r vs ref"):
        assert needle in proc.stdout, (needle, proc.stdout)

    rep = json.loads(out_json.read_text())
    pipes = rep["pipelines"]
    assert set(pipes) == {"ours", "reference", "monai"}
    assert pipes["ours"]["r_vs_reference"] >= 0.999
    assert pipes["ours"]["max_abs_vs_reference"] < 1e-3
    assert pipes["monai"]["same_series_and_hu"] is True  # MONAI read the same series and HU
    assert pipes["monai"]["r_vs_reference"] > 0.9  # after mapping axes back: same orientation
    for name in ("ours", "reference", "monai"):
        assert pipes[name]["total_s"] > 0
        assert pipes[name]["stages_s"]
    assert {"extract+scan", "qc", "decode", "preprocess"} <= set(pipes["ours"]["stages_s"])
    assert rep["ratios"]["monai_over_ours"] > 0
    assert rep["input"]["series_shape_xyz"] == [96, 96, 40]


@pytest.mark.slow  # ~1 min: embedded stack, API and worker processes, the demo model
def test_bench_service_tiny(tmp_path: Path) -> None:
    """``bench/service.py`` end to end at tiny sizes: embedded stack, API process, load, worker.

    No timing assertions: only that every section runs, reports its peers and writes its JSON.
    """
    out_json = tmp_path / "service.json"
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "service.py"),
        "--upload-mib",
        "4",
        "--upload-modes",
        "raw,multipart",
        "--rate",
        "20",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--studies",
        "1",
        "--no-real-like",
        "--cache-dir",
        str(tmp_path),
        "--json",
        str(out_json),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for needle in ("service POST /v1/studies raw", "GET /v1/jobs/{id}", "queued ÷ sequential", "goals"):
        assert needle in proc.stdout, (needle, proc.stdout)

    rep = json.loads(out_json.read_text())
    up = rep["upload"]
    assert set(up["service"]) == {"raw", "multipart"}
    for r in up["service"].values():
        assert r["mb_s"] > 0 and r["rss_samples"] >= 0
        assert r["response"]["size_bytes"] == up["size_bytes"]
    assert up["peers"]["s3_direct"]["mb_s"] > 0
    lat = rep["latency"]
    for route in ("jobs", "healthz"):
        assert lat[route]["ok"] > 0 and lat[route]["error_count"] == 0
    e2e = rep["e2e"]
    for explain in ("gradcam", "none"):
        stages = e2e["sequential"][explain]["stages_median"]
        assert {"fetching", "preprocessing", "inference", "total"} <= set(stages)
        assert e2e["queued"][explain]["studies_per_min"] > 0
    assert "explaining" in e2e["sequential"]["gradcam"]["stages_median"]
    assert {g["goal"] for g in rep["goals"]}  # goals are reported (pass or miss: no timing asserted)
