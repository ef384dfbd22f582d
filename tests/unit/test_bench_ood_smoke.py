"""Smoke test of ``bench/ood.py`` at a tiny size: it runs end to end with the demo model, writes its
JSON and the fitted statistics, a rerun comes from the feature cache, and the performance report
renders its rows.

No quality assertions: at a 32³ model input on coarse phantoms the features mean nothing. About
35 s on an idle 2-core Intel Xeon VM (36 studies; the 1 mm resampling dominates).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from ml.ood import OOD_METHODS, OODStats
from ml.phantom import OOD_FAMILIES

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "ood.py"


def test_bench_ood_tiny(tmp_path: Path) -> None:
    out_json, stats_dir, cache = tmp_path / "ood.json", tmp_path / "stats", tmp_path / "cache"
    cmd = [
        sys.executable,
        str(BENCH),
        *("--fit-n", "8", "--n-id", "4", "--n-ood", "4"),
        *("--rows", "48", "--pixel-mm", "8", "--slice-mm", "5", "--input-size", "32"),
        *("--bootstrap", "50", "--no-real", "--threads", "1"),
        *("--cache-dir", str(cache), "--save-stats", str(stats_dir), "--json", str(out_json)),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for needle in ("OOD detection", "in-distribution", "thresholds", "goals", *OOD_FAMILIES):
        assert needle in proc.stdout, (needle, proc.stdout)

    rep = json.loads(out_json.read_text())
    assert rep["best"] in OOD_METHODS
    assert set(rep["table"]) == {"id", *OOD_FAMILIES}
    for fam in OOD_FAMILIES:
        row = rep["table"][fam]
        assert row["n"] == 4 and 0.0 <= row["plausibility_flagged"] <= 1.0
        for m in OOD_METHODS:
            assert 0.0 <= row[m]["auroc"] <= 1.0
            assert row[m]["flagged"] <= row[m]["flagged_or_plausibility"]
    assert rep["table"]["head"]["reasons"] == {"no_lungs_found": 4}  # no lungs, whatever the grid
    assert len(rep["studies"]) == 8 + 4 + 4 * len(OOD_FAMILIES)
    for m in OOD_METHODS:
        saved = rep["saved_stats"][m]
        st = OODStats.load(saved["path"], saved["sha256"])
        assert st.method == m and st.n == 8 and math.isfinite(st.threshold)
        assert st.threshold == rep["stats"][m]["threshold"]

    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 computed" in again.stdout
    assert json.loads(out_json.read_text())["table"] == rep["table"]

    # the performance report renders its rows from that JSON (no real series: that row says so)
    report = [sys.executable, str(ROOT / "bench" / "report.py"), "--results-dir", str(tmp_path)]
    report += ["--out", str(tmp_path / "performance.md"), "--reuse", "--no-run", "--benches", "ood"]
    proc = subprocess.run(report, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [r for r in json.loads((tmp_path / "report.json").read_text())["rows"] if r["bench"] == "ood"]
    assert len(rows) == 3
    assert all(not r["ours"].startswith("not measured:") for r in rows[:2]), rows
    assert rows[2]["ours"].startswith("not measured in this run"), rows[2]
