"""Labelled corpora of phantom studies on disk (ZIPs, lesion masks, labels.csv) and their plan."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ml.geometry import VolumeGeometry
from ml.phantom.study import make_study


def write_mask_nifti(mask: npt.NDArray[Any], geometry: VolumeGeometry, path: str | Path) -> Path:
    """Write a (z, y, x) label map as NIfTI via SimpleITK (LPS geometry → RAS affine)."""
    import SimpleITK as sitk  # noqa: N813

    img = sitk.GetImageFromArray(np.ascontiguousarray(mask))
    img.SetSpacing([float(s) for s in geometry.spacing_mm])
    img.SetOrigin([float(s) for s in geometry.origin_mm])
    img.SetDirection([float(s) for s in geometry.direction])
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(p), True)
    return p


def corpus_plan(n: int, seed: int) -> list[tuple[str, int, int]]:
    """The studies of corpus ``seed``: ``(study_id, phantom seed, label)`` for i < ``n``.

    Exactly ``n // 2`` positives in a seeded order. :func:`write_corpus` writes these
    studies; ``ml.data.phantom_records`` generates the same ones in memory.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    labels = np.random.default_rng([seed, 77]).permutation(np.arange(n) < n // 2).astype(int)
    return [(f"ph{seed:04d}-{i:04d}", seed * 10007 + i, int(labels[i])) for i in range(n)]


def write_corpus(
    out_dir: str | Path,
    n: int,
    seed: int,
    *,
    rows: int | None = 128,
    cols: int | None = 128,
    pixel_spacing_mm: float | None = 3.0,
    slice_spacing_mm: float | None = 2.5,
    difficulty: tuple[float, float] = (0.3, 1.0),
    variants: Sequence[str] = ("standard",),
) -> Path:
    """Write ``n`` phantom studies with balanced labels; returns the ``labels.csv`` path.

    Layout: ``studies/<id>.zip``, ``masks/<id>.nii.gz`` (lesion label map in the
    primary series geometry; all zero for label 0), ``labels.csv`` with columns
    study_id, label, zip (relative path), lesion_kinds ("|"-joined), seed, and
    ``lesions.json`` (per study: kind, centre LPS mm, size mm, HU, mask value).
    Labels are exactly ``n // 2`` positives in a seeded order; ``variants`` cycle.
    A size argument of ``None`` takes the variant's own default (see :func:`make_study`).
    """
    plan = corpus_plan(n, seed)
    out = Path(out_dir)
    (out / "studies").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows_out: list[dict[str, Any]] = []
    lesions_out: dict[str, Any] = {}
    for i, (sid, s, label) in enumerate(plan):
        info = make_study(
            out / "studies" / f"{sid}.zip",
            seed=s,
            variant=variants[i % len(variants)],
            label=label,
            difficulty=difficulty,
            rows=rows,
            cols=cols,
            pixel_spacing_mm=pixel_spacing_mm,
            slice_spacing_mm=slice_spacing_mm,
        )
        write_mask_nifti(info.phantom.mask, info.phantom.geometry, out / "masks" / f"{sid}.nii.gz")
        kinds = sorted({les.kind for les in info.lesions})
        rows_out.append(
            {
                "study_id": sid,
                "label": info.label,
                "zip": f"studies/{sid}.zip",
                "lesion_kinds": "|".join(kinds),
                "seed": s,
            }
        )
        lesions_out[sid] = [les.to_dict() for les in info.lesions]
    csv_path = out / "labels.csv"
    with csv_path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["study_id", "label", "zip", "lesion_kinds", "seed"])
        w.writeheader()
        w.writerows(rows_out)
    (out / "lesions.json").write_text(json.dumps(lesions_out, indent=1))
    return csv_path
