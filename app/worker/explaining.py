"""Saliency of a held job: computed in the source geometry, written to files, uploaded to S3.

The files go under attempt-scoped keys (``jobs/{job}/attempt-{n}/saliency/{method}/``)
before the explanation row that points at them is written.
"""

from __future__ import annotations

import functools
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch

from app.repository import BlobRef, ExplanationRecord
from app.storage import Storage
from app.worker.context import InFlight, JobRefusedError
from app.worker.pipeline import Prepared
from app.worker.retry import storage_retry
from ml.explain import BudgetError, check_budget
from ml.inference import Predictor

if TYPE_CHECKING:
    from ml.explain.files import SaliencyFiles
    from ml.explain.methods import ExplainOutput

__all__ = [
    "Saliency",
    "check_explain_budget",
    "compute_saliency",
    "saliency_files",
    "upload",
    "upload_files",
    "warm_up",
]


class _Buffers:
    """The source-grid map and the 8-bit NIfTI of the last jobs, reused by the next ones.

    The inference thread is their only user. First-touching a fresh 100–300 MB array
    costs more than the resampling that fills it (page faults, at times seconds on a busy
    VM); the largest volume seen so far stays allocated.
    """

    def __init__(self) -> None:
        self._f32: npt.NDArray[np.float32] = np.empty(0, np.float32)
        self._u8: npt.NDArray[np.uint8] = np.empty(0, np.uint8)

    def f32(self, shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
        n = math.prod(shape)
        if self._f32.size < n:
            self._f32 = np.empty(0, np.float32)  # the old one goes first
            self._f32 = np.empty(n, np.float32)
        return self._f32[:n].reshape(shape)

    def u8(self, shape: tuple[int, ...]) -> npt.NDArray[np.uint8]:
        n = math.prod(shape)
        if self._u8.size < n:
            self._u8 = np.empty(0, np.uint8)
            self._u8 = np.empty(n, np.uint8)
        return self._u8[:n].reshape(shape)


_buffers = _Buffers()


@dataclass(frozen=True)
class Saliency:
    """An explanation row to store, its local files (name → (key, path, content type)) and the map.

    ``source_map``: the saliency on the source grid (z, y, x), for the DICOM Segmentation.
    """

    record: ExplanationRecord
    files: dict[str, tuple[str, Path, str]]
    source_map: npt.NDArray[np.float32] | None = None


def check_explain_budget(predictor: Predictor, item: InFlight, *, max_passes: int, max_bytes: int) -> None:
    """The API's check again (settings or the model may have changed since): a refusal fails the job once.

    Raises:
        JobRefusedError: ``explain_too_costly`` over the budget, ``explain_params_invalid`` for
            parameters that do not fit the model (never retried: another attempt would fail alike).
    """
    job = item.job
    try:
        check_budget(
            job.explain, job.explain_params, predictor.input_size, max_passes=max_passes, max_bytes=max_bytes
        )
    except BudgetError as e:
        raise JobRefusedError("explain_too_costly", str(e)) from None
    except ValueError as e:
        raise JobRefusedError("explain_params_invalid", str(e)) from None


def saliency_files(
    predictor: Predictor,
    prep: Prepared,
    method: str,
    params: dict[str, Any],
    out_dir: Path,
    raw_map: torch.Tensor | None = None,
) -> tuple[ExplainOutput, SaliencyFiles, npt.NDArray[np.float32]]:
    """The map of ``method`` on the source grid, written as the job's files into ``out_dir``:
    (the method's output, the files, the source-grid map (z, y, x), which lives in a buffer the
    next job reuses: use it within this job only).

    ``raw_map``: the method's model-space map from the prediction's fused pass
    (:func:`ml.explain.fused.forward_with_gradcam`); only the body mask is left to compute.
    """
    from ml.explain.files import write_saliency
    from ml.explain.methods import explain
    from ml.explain.source_grid import to_source

    out = explain(predictor, torch.from_numpy(prep.tensor), method, params, raw_map=raw_map)
    shape = prep.geometry.source.shape_zyx
    source_map = to_source(out, prep.geometry, out=_buffers.f32(shape))
    written = write_saliency(
        source_map,
        prep.geometry.source,
        prep.volume,  # the stored volume: only the slices drawn are converted to HU
        out_dir,
        method=out.method,
        params=out.params,
        nifti_dtype=str(out.params.get("nifti", "uint8")),  # float32: the exact map, on request
        nifti_buffer=_buffers.u8(shape),
        sprite=False,  # the viewer layers show the same slices; no composite sprite
        extra_stats=out.stats(),  # outside_body_fraction: the map is masked to the body
    )
    return out, written, source_map


def compute_saliency(
    predictor: Predictor, item: InFlight, prep: Prepared, raw_map: torch.Tensor | None = None
) -> Saliency:
    """Saliency in the source geometry, written to local files (uploaded by :func:`upload`)."""
    job = item.job
    workdir = item.workdir / "saliency"
    out, written, source_map = saliency_files(
        predictor, prep, job.explain, job.explain_params, workdir, raw_map
    )
    prefix = f"jobs/{item.job_id}/attempt-{item.attempt}/saliency/{job.explain}"
    files = {name: (f"{prefix}/{path.name}", path, ctype) for name, (path, ctype) in written.named().items()}
    record = ExplanationRecord(
        job_id=job.explanation_target,
        method=job.explain,
        produced_by=item.job_id,
        attempt=item.attempt,
        params=out.params,
        stats=written.stats,
        geometry=_viewer_geometry(prep),
        blobs={name: BlobRef(key, ctype) for name, (key, _, ctype) in files.items()},
        model_name=predictor.entry.name,
        model_version=predictor.entry.version,
    )
    return Saliency(record, files, source_map)


def warm_up(predictor: Predictor, workdir: Path) -> None:
    """One small synthetic study through what a job runs in this process, before the first job.

    Imports Captum, the imaging libraries and the writers, and runs the model, Grad-CAM,
    the map back to the source grid and the files once, so that the first job costs what
    the next ones do (the worker registers, and ``/readyz`` turns ready, only afterwards).
    """
    import tempfile
    import uuid

    from app.worker.pipeline import warm_volume
    from ml.preprocess import preprocess

    vol = warm_volume()
    res = preprocess(vol, predictor.preprocess_config)
    with torch.inference_mode():
        predictor.predict(res.tensor, [res.geometry.model_voxel_mm()])
    prep = Prepared(uuid.uuid4(), 0, res.tensor.numpy(), res.geometry, {}, {}, volume=vol)
    with tempfile.TemporaryDirectory(prefix="warm-", dir=workdir) as tmp:
        saliency_files(predictor, prep, "gradcam", {}, Path(tmp))


def upload(saliency: Saliency, storage: Storage, *, retry_s: float, stop: threading.Event) -> None:
    """Write the saliency files to the object store, a few at a time (each retried through an outage)."""
    upload_files(saliency.files, storage, retry_s=retry_s, stop=stop)


def upload_files(
    named: dict[str, tuple[str, Path, str]], storage: Storage, *, retry_s: float, stop: threading.Event
) -> None:
    """Files (role → (key, path, content type)) to the object store, up to 4 at a time."""
    files = list(named.values())
    with ThreadPoolExecutor(max_workers=min(4, len(files)) or 1, thread_name_prefix="s4ct-upload") as pool:
        futures = [
            pool.submit(
                storage_retry,
                "write the saliency",
                functools.partial(storage.put_file, key, path, ctype),
                retry_s=retry_s,
                stop=stop,
            )
            for key, path, ctype in files
        ]
        for f in futures:
            f.result()


def _viewer_geometry(prep: Prepared) -> dict[str, Any]:
    """What a viewer needs to place the saliency on the source series (LPS, mm)."""
    g = prep.geometry.source
    d = g.to_dict()
    d.update(
        {
            "frame": "LPS",
            "series_uid": prep.qc["selected_series_uid"],
            "shape_zyx": list(g.shape_zyx),
            "nifti_axes": "i, j, k = column, row, slice (affine in RAS)",
            "affine_ras": np.asarray(g.affine_ras(), dtype=float).round(6).tolist(),
        }
    )
    return d
