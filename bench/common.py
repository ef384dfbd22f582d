"""Helpers shared by the benchmarks: the machine a run measured on, JSON files, percentiles, and
the phantoms of the demo corpus that its model never saw (held-out seeds)."""

from __future__ import annotations

import csv
import functools
import importlib.metadata
import json
import os
import platform
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ml.phantom import PhantomSpec

__all__ = [
    "CORPUS_STRIDE",
    "heldout_seeds",
    "machine_info",
    "machine_label",
    "percentiles",
    "phantom_spec",
    "run_logged",
    "used_seeds",
    "write_json",
]

ROOT = Path(__file__).resolve().parents[1]
TRAIN_YAML = ROOT / "weights" / "resnet10-demo.train.yaml"
DEMO_DATA = ROOT / "var" / "demo-data"
#: ``ml.phantom.write_corpus``: study i of a corpus with seed s has phantom seed s * 10007 + i
CORPUS_STRIDE = 10007


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return float("nan")


@functools.cache
def machine_info() -> dict[str, Any]:
    """CPU model, cores, RAM, Python, torch version and the GPU (``None`` without CUDA)."""
    try:
        torch_version: str | None = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = None
    gpu: str | None = None
    if torch_version is not None:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": round(_ram_gib(), 1),
        "python": platform.python_version(),
        "torch": torch_version,
        "gpu": gpu,
    }


def machine_label(m: dict[str, Any]) -> str:
    """One line for a table cell: ``AMD EPYC, 2 cores, 23.4 GiB RAM, torch 2.13.0+cpu, GPU none``."""
    return (
        f"{m.get('cpu_model') or '?'}, {m.get('cores') or '?'} cores, {m.get('ram_gib') or '?'} GiB RAM, "
        f"torch {m.get('torch') or '?'}, GPU {m.get('gpu') or 'none'}"
    )


def percentiles(xs: list[float], qs: tuple[float, ...] = (0.5, 0.95, 0.99)) -> dict[str, float]:
    """Nearest-rank percentiles ``p50``, ``p95``... plus ``max`` and ``n`` (NaN when empty)."""
    out: dict[str, float] = {}
    s = sorted(xs)
    for q in qs:
        key = f"p{round(q * 100)}"
        out[key] = s[min(len(s) - 1, max(0, round(q * len(s)) - 1))] if s else float("nan")
    out["max"] = s[-1] if s else float("nan")
    out["n"] = float(len(s))
    return out


def run_logged(cmd: list[str], log: Path, timeout_s: float) -> int | str:
    """Run ``cmd`` in the repository root with its output in ``log``: the exit status, or why it stopped."""
    import subprocess

    with log.open("w") as fh:
        try:
            return subprocess.run(
                cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout_s, check=False
            ).returncode
        except subprocess.TimeoutExpired:
            return f"timeout after {timeout_s:.0f} s"


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def used_seeds(train_yaml: Path = TRAIN_YAML, demo_data: Path = DEMO_DATA) -> set[int]:
    """Phantom seeds of the demo model's corpora: from the config's phantom commands, its
    ``phantom_corpora`` and any labels.csv."""
    import yaml

    from ml.phantom import corpus_plan

    used: set[int] = set()
    text = train_yaml.read_text()
    cfg = yaml.safe_load(text)  # the comment header and reproduce_command both hold the phantom commands
    text += " " + str(cfg.get("reproduce_command", ""))
    for m in re.finditer(r"phantom\s+\S+\s+--n\s+(\d+)\s+--seed\s+(\d+)", text):
        n, seed = int(m.group(1)), int(m.group(2))
        used.update(seed * CORPUS_STRIDE + i for i in range(n))
    for c in cfg.get("phantom_corpora") or ():  # corpora generated in memory
        used.update(seed for _, seed, _ in corpus_plan(int(c["n"]), int(c["seed"])))
    if not used:
        raise SystemExit(f"no corpus found in {train_yaml}: cannot check that the seeds are held out")
    for path in sorted(demo_data.glob("*/labels.csv")) if demo_data.is_dir() else []:
        with path.open() as fh:
            used.update(int(row["seed"]) for row in csv.DictReader(fh) if row.get("seed"))
    return used


def heldout_seeds(corpus_seed: int, n: int, used: set[int]) -> list[int]:
    """The phantom seeds of corpus ``corpus_seed`` (``corpus_seed · 10007 + i``, i < n); exits
    when one of them is in ``used``."""
    seeds = [corpus_seed * CORPUS_STRIDE + i for i in range(n)]
    clash = sorted(set(seeds) & used)
    if clash:
        raise SystemExit(
            f"corpus seed {corpus_seed} reuses {len(clash)} training/test seeds, e.g. {clash[:3]}"
        )
    return seeds


def phantom_spec(
    seed: int,
    label: int = 1,
    *,
    rows: int = 128,
    pixel_spacing_mm: float = 3.0,
    slice_spacing_mm: float = 2.5,
) -> PhantomSpec:
    """A phantom like the demo corpus (``--rows 128 --pixel-spacing 3 --slice-spacing 2.5``).

    ``label=0`` with the same seed is the *same* patient (anatomy, grid and noise come
    from separate streams) without the lesions.
    """
    from ml.phantom import PhantomSpec

    return PhantomSpec(
        seed=seed,
        label=label,
        difficulty=(0.3, 1.0),
        rows=rows,
        cols=rows,
        pixel_spacing_mm=pixel_spacing_mm,
        slice_spacing_mm=slice_spacing_mm,
    )
