"""The GPU benchmarks in one prepared run (``make bench-gpu``, ≤ 8 minutes on an H100).

Usage::

    python bench/gpu.py                   # everything, results under var/bench/
    python bench/gpu.py --quick           # tiny sizes (a smoke run on any CUDA GPU)
    python bench/gpu.py --parts explain   # one or more of inference,explain,e2e

Without CUDA it refuses at once (exit 2, nothing measured, nothing written but the reason in
``gpu.json``). On a CUDA GPU, in this order, each part with its own time limit so that the whole
stays under ``--budget-min`` (8):

1. ``inference``: ResNet-34 @256³ forward throughput with batching (``bench/inference.py
   --device cuda --prod-batches 1,4,8,16,32``; bf16 autocast, channels-last vs contiguous as the
   peer) → ``inference_cuda.json``. Goal ≥ 100 volumes/s on an H100.
2. ``explain``: per study on the GPU, a ResNet-34 @256³ (random weights: the cost does not
   depend on them) behind :class:`ml.inference.Predictor`: one forward (the peer), Grad-CAM and
   Integrated Gradients with 32 steps (:func:`ml.explain.methods.explain`, body mask included),
   medians of ``--repeat`` after a warm-up, synchronised → ``explain_cuda.json``. Goals ≤ 30 ms
   (Grad-CAM) and ≤ 1 s (IG-32).
3. ``e2e``: a 300-slice 512² JPEG-lossless phantom through the service on the embedded stack
   with one worker on the GPU (``bench/load.py --sections e2e --e2e-slices 300 --e2e-runs 7``,
   explain gradcam), p50 of POST /v1/jobs → succeeded → ``e2e_gpu.json``. Goal ≤ 1 s.

``gpu.json`` sums it up (device, each part's exit status, wall time and headline numbers);
``python bench/report.py --reuse --no-run`` then renders the H100 rows of docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import machine_info, run_logged, write_json  # noqa: E402

PARTS = ("inference", "explain", "e2e")
GOAL_GRADCAM_S = 0.030
GOAL_IG32_S = 1.0


def cuda_or_reason() -> str | None:
    """None when a CUDA device is usable, else why not."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        build = torch.version.cuda or "a CPU-only build"
        return f"torch {torch.__version__} ({build}) sees no CUDA device"
    return None


def run_part(name: str, cmd: list[str], limit_s: float, log: Path) -> dict[str, Any]:
    """A bench script as a subprocess, killed after ``limit_s``; its exit status and wall time."""
    print(f"\n### {name}: {' '.join(cmd[1:])} (limit {limit_s:.0f} s)", flush=True)
    t0 = time.perf_counter()
    rc = run_logged(cmd, log, limit_s)
    wall = time.perf_counter() - t0
    print(f"    {name}: exit {rc} in {wall:.0f} s (log {log})", flush=True)
    print(log.read_text(errors="replace")[-2500:], flush=True)
    return {
        "returncode": rc,
        "wall_s": wall,
        "log": str(log.relative_to(ROOT) if log.is_relative_to(ROOT) else log),
    }


def explain_timing(size: int, steps: int, repeat: int, device: str) -> dict[str, Any]:
    """Seconds per study of one forward, Grad-CAM and IG-``steps`` for ResNet-34 at ``size``³."""
    import torch

    from ml.explain.methods import explain
    from ml.inference import Predictor
    from ml.model import ModelEntry, ModelSpec, OperatingPoint
    from ml.model.network import build_model
    from ml.preprocess import PreprocessConfig

    spec = ModelSpec(arch="resnet34")
    entry = ModelEntry(
        name="resnet34-bench",
        version="0",
        spec=spec,
        input_size=(size, size, size),
        preprocess=PreprocessConfig(target_size=(size, size, size)),
        operating_points={"balanced": OperatingPoint(0.5, 0.9, 0.9)},
        default_operating_point="balanced",
        uri="none.pt",
        calibration={"method": "temperature", "temperature": 1.0},
    )
    torch.manual_seed(0)
    predictor = Predictor(entry, build_model(spec).eval(), device=device)
    # a chest-like input: a body (soft tissue) with two air lungs, air around it
    z, y, x = torch.meshgrid(*(torch.linspace(-1, 1, size),) * 3, indexing="ij")
    body = (y / 0.8) ** 2 + (x / 0.9) ** 2 < 1
    lungs = ((y / 0.45) ** 2 + ((x.abs() - 0.4) / 0.28) ** 2 < 1) & (z.abs() < 0.85)
    vol = torch.where(body, torch.where(lungs, -0.8, 0.3), -1.0).float()[None, None]

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def timed(fn: Any) -> float:
        fn()  # warm-up: kernels, allocator
        out = []
        for _ in range(repeat):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            out.append(time.perf_counter() - t0)
        return statistics.median(out)

    forward = timed(lambda: predictor.logits(vol))
    gradcam = timed(lambda: explain(predictor, vol, "gradcam"))
    ig = timed(
        lambda: explain(predictor, vol, "integrated_gradients", {"steps": steps, "internal_batch_size": 8})
    )
    res = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "size": size,
        "arch": "resnet34",
        "repeat": repeat,
        "forward_s": forward,
        "gradcam_s": gradcam,
        "ig_steps": steps,
        "ig_s": ig,
        "goals": [
            {"goal": f"Grad-CAM ≤ {GOAL_GRADCAM_S * 1000:.0f} ms", "pass": gradcam <= GOAL_GRADCAM_S},
            {"goal": f"IG-{steps} ≤ {GOAL_IG32_S:g} s", "pass": ig <= GOAL_IG32_S},
        ],
    }
    print(
        f"ResNet-34 @{size}³ on {res['device']}: forward {forward * 1000:.1f} ms, Grad-CAM "
        f"{gradcam * 1000:.1f} ms, IG-{steps} {ig:.3f} s (medians of {repeat})",
        flush=True,
    )
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {','.join(PARTS)}")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    p.add_argument("--budget-min", type=float, default=8.0, help="the whole run's limit in minutes")
    p.add_argument(
        "--json",
        default=str(ROOT / "var" / "bench" / "gpu.json"),
        help="the summary; the parts' JSON beside it",
    )
    p.add_argument("--explain-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    out = Path(args.json).parent
    out.mkdir(parents=True, exist_ok=True)
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    if bad := [s for s in parts if s not in PARTS]:
        p.error(f"unknown parts {bad}")
    summary: dict[str, Any] = {"machine": machine_info(), "parts": {}, "quick": args.quick}
    if (why := cuda_or_reason()) is not None:
        summary["refused"] = why
        write_json(Path(args.json), summary)
        print(f"bench/gpu.py needs a CUDA GPU: {why}. Nothing was measured.", file=sys.stderr)
        return 2
    if args.explain_worker:
        size, steps, repeat = (64, 4, 2) if args.quick else (256, 32, 5)
        write_json(
            out / "explain_cuda.json",
            {**explain_timing(size, steps, repeat, "cuda"), "machine": machine_info()},
        )
        return 0

    t_start = time.perf_counter()
    budget = args.budget_min * 60
    # each part's share of the budget (what is left over goes to the next)
    shares = {"inference": 0.25, "explain": 0.20, "e2e": 0.55}
    q = args.quick
    cmds = {
        "inference": [
            "bench/inference.py", "--device", "cuda", "--prod-batches", "1,2" if q else "1,4,8,16,32",
            *(["--skip-prod", "--iters", "2"] if q else []), "--json", str(out / "inference_cuda.json"),
        ],
        "explain": ["bench/gpu.py", "--explain-worker", "--json", args.json, *(["--quick"] if q else [])],
        "e2e": [
            "bench/load.py", "--sections", "e2e", "--e2e-slices", "40" if q else "300",
            "--e2e-runs", "2" if q else "7", "--cache-dir", str(out), "--json", str(out / "e2e_gpu.json"),
        ],
    }  # fmt: skip
    for name in parts:
        left = budget - (time.perf_counter() - t_start)
        if left < 20:
            summary["parts"][name] = {"returncode": "skipped: the budget is spent"}
            continue
        later = sum(shares[n] for n in parts[parts.index(name) + 1 :])
        limit = left * shares[name] / (shares[name] + later)
        summary["parts"][name] = run_part(name, [sys.executable, *cmds[name]], limit, out / f"gpu_{name}.log")
    summary["wall_s"] = time.perf_counter() - t_start
    for name, file in (("inference", "inference_cuda"), ("explain", "explain_cuda"), ("e2e", "e2e_gpu")):
        if name in parts and (out / f"{file}.json").is_file():
            summary[name] = json.loads((out / f"{file}.json").read_text())
    write_json(Path(args.json), summary)
    failed = [n for n, r in summary["parts"].items() if r["returncode"] != 0]
    print(f"\nbench/gpu.py: {len(parts) - len(failed)}/{len(parts)} parts in {summary['wall_s']:.0f} s; "
          f"then `python bench/report.py --reuse --no-run` renders the rows")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
