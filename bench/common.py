"""Helpers shared by the benchmarks: the machine a run measured on, JSON files, percentiles."""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["machine_info", "machine_label", "percentiles", "write_json"]


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


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)
