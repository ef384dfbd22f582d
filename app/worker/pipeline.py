"""The worker's calls into ``ml/``: study preparation (in a process pool) and result assembly.

:func:`prepare_study` runs in a preprocessing process: safe unzip → series
discovery → QC → selected series decoded → seed preprocessing. Stage changes
go to the parent through the queue set up by :func:`init_pool_process`; the
parent writes them to PostgreSQL. Only ids, stages and numbers cross that queue.

:func:`build_result` turns a prediction into the result contract
(docs/architecture.md §3.5), the :class:`app.schemas.JobResult` the API serves.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from app.schemas import JobResult, ModelRef, OODOut, OperatingPointOut, SeriesOut, SeriesRank
from app.worker.handoff import Packed, pack
from ml.dicom_out import SourceReference
from ml.geometry import CTVolume
from ml.inference import Prediction
from ml.model import ModelEntry
from ml.preprocess import PreprocessConfig, PreprocessGeometry

__all__ = ["Prepared", "build_result", "init_pool_process", "pool_ready", "prepare_study", "warm_volume"]

_progress: Any = None  # set in each pool process by init_pool_process


def init_pool_process(progress_queue: Any, torch_threads: int, warm: PreprocessConfig | None = None) -> None:
    """Pool initializer: remember the progress queue; keep each process to ``torch_threads`` threads.

    With ``warm`` (the default model's preprocessing), the process also imports what
    :func:`prepare_study` uses and preprocesses a small synthetic volume, so that the first
    study it gets costs what the next ones do (:func:`warm_volume`).

    The process also ends when the worker that started it dies: after a ``kill -9`` of the
    worker nothing else would stop it (it holds both ends of its task pipe and would wait
    for work forever, with its memory and multiprocessing's resource tracker).
    """
    global _progress  # noqa: PLW0603 (per-process state of a pool worker)
    _progress = progress_queue
    parent = mp.parent_process()  # its pid was recorded at spawn: the worker may be gone already
    threading.Thread(
        target=_exit_with_parent,
        args=(parent.pid if parent is not None and parent.pid else os.getppid(),),
        name="s4ct-parent-watch",
        daemon=True,
    ).start()
    import torch

    torch.set_num_threads(max(1, torch_threads))
    if warm is not None:
        _warm_process(warm)


def warm_volume() -> CTVolume:
    """A small synthetic chest-like volume (32 slices of 64², 5 mm): a body with two air lungs."""
    from ml.geometry import VolumeGeometry

    z, y, x = np.mgrid[0:32, 0:64, 0:64]
    body = ((y - 32) / 26.0) ** 2 + ((x - 32) / 30.0) ** 2 < 1.0
    lungs = (((y - 30) / 14.0) ** 2 + ((np.abs(x - 32) - 13) / 9.0) ** 2 < 1.0) & (z > 2) & (z < 29)
    hu = np.where(body, np.where(lungs, -850, 40), -1000).astype(np.int16)
    geom = VolumeGeometry(size=(64, 64, 32), spacing_mm=(5.0, 5.0, 5.0), origin_mm=(-160.0, -160.0, 0.0))
    return CTVolume(stored=hu + 1024, slope=1.0, intercept=-1024.0, geometry=geom, series_uid="warm")


def _warm_process(config: PreprocessConfig) -> None:
    """Import the study reader and its codecs, preprocess :func:`warm_volume` once."""
    import imagecodecs
    import pydicom.pixels  # noqa: F401  (pydicom's decoders, loaded on first use otherwise)

    import ml.io.study  # noqa: F401
    from ml.preprocess import preprocess

    tile = np.arange(64, dtype=np.uint16).reshape(8, 8) * 64
    imagecodecs.jpeg8_decode(imagecodecs.jpeg8_encode(tile, lossless=True, bitspersample=16))
    preprocess(warm_volume(), config)


def pool_ready() -> int:
    """A no-op task: its result says the process that ran it is started (and warm)."""
    return os.getpid()


def _exit_with_parent(parent: int, interval_s: float = 0.5) -> None:
    while os.getppid() == parent:
        time.sleep(interval_s)
    os._exit(1)


def _report(job_id: uuid.UUID, attempt: int, stage: str, progress: float) -> None:
    if _progress is not None:
        _progress.put((str(job_id), attempt, stage, progress))


@dataclass
class Prepared:
    """A study ready for the model (plus what the result and the saliency need)."""

    job_id: uuid.UUID
    attempt: int
    tensor: npt.NDArray[np.float32]  # [1, 1, D, H, W] in [-1, 1]
    geometry: PreprocessGeometry
    qc: dict[str, Any]
    timings: dict[str, float]
    phi_tokens: list[str] = field(default_factory=list)
    volume: CTVolume | None = None  # kept when a saliency overlay is wanted
    source: SourceReference | None = None  # kept for the DICOM results (identifiers: never log it)
    #: the selected series' input properties for drift monitoring (:func:`ml.evaluate.drift.header_signals`)
    drift_header: dict[str, Any] = field(default_factory=dict)


def prepare_study(
    job_id: uuid.UUID,
    attempt: int,
    zip_path: str,
    series_uid: str | None,
    config: PreprocessConfig,
    keep_volume: bool,
    keep_source: bool = False,
) -> Prepared:
    """Read, check and preprocess one study ZIP (runs in a pool process).

    Raises :class:`ml.errors.InputError` subclasses with their stable codes.
    """
    from ml.evaluate.drift import header_signals
    from ml.io import read_study

    # the job's stage and progress when a stage of read_study starts
    progress = {"reading": ("reading", 0.05), "qc": ("qc", 0.15), "decoding": ("preprocessing", 0.25)}

    def started(stage: str) -> None:
        if stage in progress:
            _report(job_id, attempt, *progress[stage])

    read = read_study(
        zip_path,
        series_uid=series_uid,
        preprocess=config,
        keep_volume=keep_volume,
        keep_source=keep_source,
        on_stage_start=started,
    )
    assert read.preprocessed is not None
    tensor = read.preprocessed.tensor.numpy().astype(np.float32, copy=False)
    return Prepared(
        job_id=job_id,
        attempt=attempt,
        tensor=tensor,
        geometry=read.preprocessed.geometry,
        qc=read.qc.to_dict(),
        timings={k: v for k, v in read.timings.items() if k != "cleanup"},  # a job times no cleanup
        phi_tokens=sorted(read.phi_tokens),
        volume=read.volume,
        source=read.source,
        drift_header=header_signals(read.series.summary(), read.phi_tokens),
    )


def prepare_for_worker(handoff_dir: str | None, owner: int, *study: Any) -> Prepared | Packed:
    """:func:`prepare_study` (its arguments: ``study``) in a pool process, its large arrays handed
    back through shared memory.

    Returns the :class:`Prepared`, or a :class:`~app.worker.handoff.Packed` whose arrays wait in
    ``handoff_dir`` for worker ``owner`` (:func:`app.worker.handoff.unpack` in the worker).
    """
    return pack(prepare_study(*study), handoff_dir, owner)


def _operating_points(entry: ModelEntry) -> dict[str, OperatingPointOut]:
    out = {}
    for name, op in entry.operating_points.items():
        d = op.to_dict()
        out[name] = OperatingPointOut(
            threshold=d["threshold"],
            sensitivity=d.get("sensitivity"),
            specificity=d.get("specificity"),
            ci95={"sensitivity": d.get("sensitivity_ci95"), "specificity": d.get("specificity_ci95")},
        )
    return out


def build_result(
    job_id: uuid.UUID,
    attempt: int,
    entry: ModelEntry,
    pred: Prediction,
    qc: Mapping[str, Any],
    timings: Mapping[str, float],
) -> JobResult:
    """The result contract (docs/architecture.md §3.5), the model the API serves; ``qc`` is the QC report."""
    ranking = [
        SeriesRank(
            series_uid=s["series_uid"],
            rank=s["rank"],
            usable=s["usable"],
            slices=s["summary"]["slices"],
            reasons=s["reasons"],
        )
        for s in qc["series"]
    ]
    if pred.indeterminate:
        decision = dict.fromkeys(pred.decisions, "indeterminate")
    else:
        decision = {k: ("pathology" if v else "normal") for k, v in pred.decisions.items()}
    checks = {"plausibility": pred.plausibility} if pred.plausibility is not None else {}
    return JobResult(
        job_id=job_id,
        probability=pred.probability,
        label=pred.label,
        operating_point=entry.default_operating_point,
        operating_points=_operating_points(entry),
        decision=decision,
        indeterminate_reasons=list(pred.indeterminate_reasons),
        ood=None if pred.ood is None else OODOut(**dataclasses.asdict(pred.ood)),
        model=ModelRef(
            name=entry.name, version=entry.version, sha256=entry.sha256 or "", clinical_use=entry.clinical_use
        ),
        series=SeriesOut(selected_uid=qc["selected_series_uid"], ranking=ranking),
        qc={"warnings": qc["warnings"], "skipped_files": qc["skipped_files"], **checks},
        timings={k: round(v, 4) for k, v in timings.items()},
        attempt=attempt,
        not_for_clinical_use=not entry.clinical_use,
    )


def mp_context() -> mp.context.SpawnContext:
    """Preprocessing processes are spawned (forking a process that holds torch threads is unsafe)."""
    return mp.get_context("spawn")
