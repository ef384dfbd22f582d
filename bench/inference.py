"""Benchmark of the model forward pass: volumes/s per architecture, input size, batch and memory format.

Usage::

    python bench/inference.py                        # CPU, short default run (see below)
    python bench/inference.py --full                 # ResNet-34 @256³ at batch 1/2/4 too, 3 timed iterations
    python bench/inference.py --device cuda          # GPU: bf16 autocast + TF32, like ml.inference.Predictor
    python bench/inference.py --demo-size 128 --iters 5 --json var/bench/inference.json

Models have random weights (the production ResNet-34 file is operator-supplied;
speed does not depend on the values). Configurations:

* ResNet-34 @ 256³ (the production input), batch 1 and 2 by default (+4 with ``--full``);
* ResNet-10 @ ``--demo-size``³ (default 96³) with the demo model's architecture from
  ``weights/manifest.json`` (widths, dilated layout), batch 1, 2 and 4.

Each configuration runs with ``channels_last_3d`` (what the Predictor uses) and
with contiguous (NCDHW) tensors as the in-run peer; the table prints the ratio
contiguous time / channels_last time (> 1 means channels_last is faster). Per
configuration: ``--warmup`` untimed iterations, then ``--iters`` timed ones; the
median time per batch is reported and volumes/s = batch / median.

The default CPU run is deliberately short (2 timed iterations, ResNet-34 only at
batch 1–2) because on 2 CPU cores a ResNet-34 volume at 256³ takes seconds (4.2 s on a
2-core Intel Xeon VM); ``--full`` widens it.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from ml.model import Manifest, ModelSpec  # noqa: E402
from ml.model.network import build_model  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def demo_spec() -> ModelSpec:
    """Architecture of the manifest's demo entry (plain ResNet-10 if the manifest has none)."""
    try:
        return Manifest.load(ROOT / "weights" / "manifest.json").get("resnet10-demo").spec
    except (OSError, KeyError, ValueError):
        return ModelSpec(arch="resnet10")


def time_config(
    spec: ModelSpec, size: int, batch: int, channels_last: bool, device: torch.device, warmup: int, iters: int
) -> dict[str, Any]:
    torch.manual_seed(0)
    arch = spec.arch
    model = build_model(spec).eval()
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=fmt)
    x = torch.randn(batch, 1, size, size, size, device=device).contiguous(memory_format=fmt)
    amp = device.type == "cuda"
    times: list[float] = []
    with torch.inference_mode():
        for i in range(warmup + iters):
            _sync(device)
            t0 = time.perf_counter()
            if amp:
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                    out = model(x)
            else:
                out = model(x)
            out.float().cpu()
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    rec: dict[str, Any] = {
        "arch": arch,
        "size": size,
        "batch": batch,
        "memory_format": "channels_last_3d" if channels_last else "contiguous",
        "times_s": [round(t, 4) for t in times],
        "median_s": round(med, 4),
        "volumes_per_s": round(batch / med, 3),
    }
    if device.type == "cuda":
        rec["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        torch.cuda.reset_peak_memory_stats(device)
    del model, x
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--demo-size", type=int, default=96, help="ResNet-10 input size (cubic), default 96")
    ap.add_argument("--prod-size", type=int, default=256, help="ResNet-34 input size (cubic), default 256")
    ap.add_argument("--iters", type=int, default=None, help="timed iterations (default 2 on CPU, 10 on CUDA)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--full", action="store_true", help="ResNet-34 at batch 4 too; 3 timed iterations on CPU")
    ap.add_argument("--skip-prod", action="store_true", help="leave ResNet-34 out (smoke runs)")
    ap.add_argument(
        "--prod-batches", default=None, help="ResNet-34 batch sizes, e.g. 1,8,16,32 (default 1,2 or 1,2,4)"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("error: --device cuda but CUDA is not available", file=sys.stderr)
            return 2
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine()
    iters = args.iters or (10 if device.type == "cuda" else (3 if args.full else 2))
    big_batches = (1, 2, 4) if (args.full or device.type == "cuda") else (1, 2)
    if args.prod_batches:
        big_batches = tuple(int(b) for b in args.prod_batches.split(","))
    configs: list[tuple[ModelSpec, int, int]] = []
    if not args.skip_prod:
        configs += [(ModelSpec(arch="resnet34"), args.prod_size, b) for b in big_batches]
    demo = demo_spec()
    configs += [(demo, args.demo_size, b) for b in (1, 2, 4)]

    print(
        f"device: {device_name} ({device.type}), torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, "
        f"{'bf16 autocast + TF32' if device.type == 'cuda' else 'fp32'}, "
        f"warmup {args.warmup}, timed iterations {iters} (median)"
    )
    if device.type == "cpu" and not args.full:
        print("short default run: ResNet-34 only at batch 1-2, 2 timed iterations (--full for more)")
    header = (
        f"{'model':<9} {'input':>6} {'batch':>5} {'cl3d s/batch':>12} {'cl3d vol/s':>10} "
        f"{'contig s/batch':>14} {'contig vol/s':>12} {'contig/cl3d':>11}"
    )
    print(header)
    print("-" * len(header))
    results: list[dict[str, Any]] = []
    for spec, size, batch in configs:
        arch = spec.arch
        cl = time_config(spec, size, batch, True, device, args.warmup, iters)
        co = time_config(spec, size, batch, False, device, args.warmup, iters)
        ratio = co["median_s"] / cl["median_s"]
        results.append(
            {"channels_last_3d": cl, "contiguous": co, "contiguous_over_channels_last": round(ratio, 3)}
        )
        print(
            f"{arch:<9} {size:>5}³ {batch:>5} {cl['median_s']:>12.3f} {cl['volumes_per_s']:>10.2f} "
            f"{co['median_s']:>14.3f} {co['volumes_per_s']:>12.2f} {ratio:>11.2f}",
            flush=True,
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "device": {"type": device.type, "name": device_name},
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "precision": "bf16-autocast" if device.type == "cuda" else "fp32",
                    "warmup": args.warmup,
                    "iters": iters,
                    "demo_spec": demo.to_dict(),
                    "results": results,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
