"""Smoke test of ``bench/preprocess.py`` at a tiny size: it runs end to end and ours matches the reference.

No timing assertions (machines are noisy); only that the ZIP → tensor benchmark completes,
prints its table and reports r ≥ 0.999 for ours against the plain reference.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
