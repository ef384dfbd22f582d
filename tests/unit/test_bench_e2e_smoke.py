"""Smoke tests of ``bench/e2e.py`` and ``bench/gpu.py`` at tiny sizes.

No timing assertions (machines are noisy): ``bench/e2e.py`` runs its in-process peer on a small
JPEG-lossless phantom and prints the stage table (the whole service run is marked slow);
``bench/gpu.py`` refuses clearly without CUDA, and its per-study explain timing runs on the CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench.service import STAGES as STAGE_NAMES  # noqa: E402

STAGES = set(STAGE_NAMES)


def _run(args: list[str], timeout: float, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode in ok, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def test_e2e_peer_tiny(tmp_path: Path) -> None:
    out = tmp_path / "e2e.json"
    args = ["--quick", "--peer-only", "--jobs", "1", "--cache-dir", str(tmp_path), "--json", str(out)]
    proc = _run(["bench/e2e.py", *args], timeout=300)
    assert "peer p50" in proc.stdout and "total (worker)" in proc.stdout
    rep = json.loads(out.read_text())
    peer = rep["studies"]["phantom"]["peer"]
    assert len(peer["runs"]) == 1 and set(peer["median"]) == STAGES
    assert all(v >= 0 for v in peer["median"].values()) and peer["median"]["explaining"] > 0
    assert rep["goals"] == []  # no service run, nothing to judge


@pytest.mark.slow  # ~1–2 min: embedded stack, API and worker processes, the demo model
def test_e2e_service_tiny(tmp_path: Path) -> None:
    out = tmp_path / "e2e.json"
    proc = _run(
        ["bench/e2e.py", "--quick", "--jobs", "1", "--cache-dir", str(tmp_path), "--json", str(out)],
        timeout=900,
    )
    assert "warm/peer" in proc.stdout
    r = json.loads(out.read_text())["studies"]["phantom"]
    assert set(r["first"]["stages"]) >= STAGES - {"qc"} and len(r["warm"]["runs"]) == 1
    assert r["worker_ready_s"] > 0 and r["peer"]["median"]["total"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_gpu_bench_refuses_without_cuda(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    proc = _run(["bench/gpu.py", "--json", str(out)], timeout=120, ok=(2,))
    assert "needs a CUDA GPU" in proc.stderr and "Nothing was measured" in proc.stderr
    rep = json.loads(out.read_text())
    assert "CUDA" in rep["refused"] and rep["parts"] == {}
    assert not (tmp_path / "inference_cuda.json").exists()


def test_gpu_explain_timing_runs_on_cpu() -> None:
    from bench.gpu import explain_timing

    res = explain_timing(32, 2, 1, "cpu")
    assert res["arch"] == "resnet34" and res["ig_steps"] == 2
    assert res["forward_s"] > 0 and res["gradcam_s"] > 0 and res["ig_s"] > 0
    assert [g["goal"] for g in res["goals"]] == ["Grad-CAM ≤ 30 ms", "IG-2 ≤ 1 s"]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_tree_cpu_counts_the_live_children() -> None:
    """A job's CPU-seconds (``cpu_s``) include the worker's pool processes: the process tree's."""
    import time

    from bench.e2e import tree_cpu_s

    burn = "import sys, time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
    burn += "sys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", burn], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while tree_cpu_s(child.pid) < 0.25 and time.monotonic() < deadline:
            time.sleep(0.05)
        own = tree_cpu_s(child.pid)
        assert own >= 0.25
        assert tree_cpu_s(os.getpid()) >= own + time.process_time() * 0.5  # this process and its child
        assert tree_cpu_s(2**22 + 7) == 0.0  # no such process
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)
