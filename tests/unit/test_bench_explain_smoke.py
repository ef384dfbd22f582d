"""Smoke test of ``bench/explain.py --quick``: it runs end to end with the demo model and writes its JSON.

No quality or timing assertions (the demo model misses the pointing-game goals, and machines are
noisy): only that every section runs, reports its peers and writes well-formed numbers. About 30 s
on an idle 2-core Intel Xeon VM (2 phantoms, Grad-CAM in 4 variants, Saliency and IG at 2 steps on one).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "explain.py"


def test_bench_explain_quick(tmp_path: Path) -> None:
    out_json = tmp_path / "explain.json"
    cmd = [sys.executable, str(BENCH), "--quick", "--json", str(out_json)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for needle in ("pointing game", "peer: random_lung", "lesion effect", "randomisation check", "goals"):
        assert needle in proc.stdout, (needle, proc.stdout)

    rep = json.loads(out_json.read_text())
    assert rep["settings"]["quick"] is True
    assert len(rep["seeds"]) == 2
    pts = rep["pointing"]
    assert {"gradcam", "gradcam_margin_l3", "saliency", "integrated_gradients"} <= set(pts)
    for rec in pts.values():
        lo, hi = rec["hit"]["ci95"]
        assert 0.0 <= lo <= rec["hit"]["mean"] <= hi <= 1.0
        assert 0.0 <= rec["mass_near_lesion"]["mean"] <= 1.0
    assert 0.0 < rep["peers"]["random_lung"]["mean"] < 1.0  # lesions lie in the lungs
    full = "fc+layer4+layer3+layer2+layer1+stem"
    for method in ("gradcam", "saliency", "integrated_gradients"):
        rho = rep["randomisation"][method][full]
        assert -1.0 <= rho["mean"] <= 1.0
    assert rep["timing"]["forward"]["median_s"] > 0
    assert {g["goal"] for g in rep["goals"]}  # goals are reported (pass or miss: not asserted)
    for st in rep["studies"]:
        assert st["kinds"] and st["lesions"]
        assert math.isfinite(st["margin_without_lesions"])
        assert st["seed"] not in range(100 * 10007, 100 * 10007 + 480)  # not a training seed
