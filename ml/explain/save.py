"""One preprocessed volume to explanation files: :func:`~ml.explain.methods.explain` (the map,
masked to the body) → :func:`~ml.explain.source_grid.to_source` →
:func:`~ml.explain.files.write_saliency`."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy.typing as npt

from ml.explain.files import SaliencyFiles, write_saliency
from ml.explain.methods import explain
from ml.explain.source_grid import to_source
from ml.geometry import CTVolume

if TYPE_CHECKING:
    from ml.inference import Predictor
    from ml.preprocess import PreprocessResult

__all__ = ["save_explanation"]


def save_explanation(
    predictor: Predictor,
    result: PreprocessResult,
    out_dir: str | Path,
    method: str = "gradcam",
    params: Mapping[str, Any] | None = None,
    ct: CTVolume | npt.NDArray[Any] | None = None,
    **render: Any,
) -> SaliencyFiles:
    """:func:`explain` → :func:`to_source` → :func:`write_saliency` for one preprocessed volume.

    ``render`` goes to :func:`write_saliency` (window, colormap, ...). The map is
    masked to the body by :func:`explain`; ``stats`` gets its
    ``outside_body_fraction`` (:meth:`~ml.explain.methods.ExplainOutput.stats`)
    and timings in seconds in ``stats["seconds"]`` (explain, to_source, write).
    """
    ex = explain(predictor, result.tensor, method, params)
    t0 = time.perf_counter()
    src = to_source(ex.map, result.geometry)
    t1 = time.perf_counter()
    extra = dict(render.pop("extra_stats", None) or {})
    render.setdefault("nifti_dtype", str(ex.params.get("nifti", "uint8")))
    files = write_saliency(
        src,
        result.geometry.source,
        ct,
        out_dir,
        method=ex.method,
        params=ex.params,
        extra_stats={**ex.stats(), **extra, "seconds": {"explain": ex.seconds, "to_source": t1 - t0}},
        **render,
    )
    files.stats["seconds"]["write"] = time.perf_counter() - t1
    files.stats_json.write_text(json.dumps(files.stats, indent=2, allow_nan=False))
    return files
