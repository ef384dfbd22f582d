"""Training data: labels CSV + study ZIPs, and a cache of preprocessed tensors.

The cache is keyed by the ZIP's sha256 and a hash of the :class:`PreprocessConfig`
(plus the series override), so a changed preprocessing never reuses stale
tensors. Tensors are cached as float16 [1, D, H, W] (values in [-1, 1]; the
rounding error, ≤ 5e-4, is far below the image noise).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from ml.errors import InputError
from ml.files import sha256_file
from ml.preprocess import PreprocessConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyRecord:
    """One labelled study: ``label`` 1 = pathology, 0 = normal."""

    study_id: str
    label: int
    zip_path: Path
    series_uid: str | None = None


def read_labels_csv(path: str | Path) -> list[StudyRecord]:
    """Read ``study_id,label,zip[,series_uid]`` rows; ``zip`` is relative to the CSV's folder."""
    p = Path(path)
    out: list[StudyRecord] = []
    with p.open(newline="") as fh:
        for i, row in enumerate(csv.DictReader(fh)):
            try:
                label = int(row["label"])
                zp = Path(row["zip"])
                sid = row.get("study_id") or f"row{i}"
            except (KeyError, ValueError) as e:
                raise ValueError(f"{p}: row {i + 2} needs study_id, label (0/1) and zip columns") from e
            if label not in (0, 1):
                raise ValueError(f"{p}: row {i + 2} has label {label}, expected 0 or 1")
            out.append(
                StudyRecord(
                    sid, label, zp if zp.is_absolute() else p.parent / zp, row.get("series_uid") or None
                )
            )
    return out


def config_key(cfg: PreprocessConfig) -> str:
    """Short stable hash of a preprocessing configuration."""
    blob = json.dumps(cfg.to_dict(), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def preprocess_study(zip_path: Path, cfg: PreprocessConfig, series_uid: str | None = None) -> torch.Tensor:
    """ZIP → selected series → preprocessing; returns float32 [1, D, H, W]."""
    from ml.dicom import load_volume, open_study
    from ml.preprocess import preprocess
    from ml.qc import rank_series

    with open_study(zip_path) as st:
        series = rank_series(st, series_uid=series_uid).selected.series
        volume = load_volume(series)
    return preprocess(volume, cfg).tensor[0]


class TensorCache:
    """Preprocessed tensors on disk under ``root/<config key>/<sha[:2]>/<sha>[-<series>].pt``."""

    def __init__(self, root: str | Path, cfg: PreprocessConfig) -> None:
        self.cfg = cfg
        self.dir = Path(root) / config_key(cfg)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
        self._sha: dict[Path, str] = {}

    def path_for(self, rec: StudyRecord) -> Path:
        sha = self._sha.get(rec.zip_path)
        if sha is None:
            sha = self._sha[rec.zip_path] = sha256_file(rec.zip_path)
        suffix = (
            "" if rec.series_uid is None else "-" + hashlib.sha256(rec.series_uid.encode()).hexdigest()[:8]
        )
        return self.dir / sha[:2] / f"{sha}{suffix}.pt"

    def get(self, rec: StudyRecord) -> torch.Tensor:
        """The cached tensor (float32 [1, D, H, W]), computing and storing it on a miss."""
        p = self.path_for(rec)
        if p.is_file():
            t: torch.Tensor = torch.load(p, weights_only=True)
            return t.float()
        t = preprocess_study(rec.zip_path, self.cfg, rec.series_uid)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(f".tmp{os.getpid()}")
        torch.save(t.half().contiguous(), tmp)
        tmp.replace(p)
        return t

    def fill(
        self,
        records: Sequence[StudyRecord],
        workers: int = 2,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, str]:
        """Preprocess every record not yet cached, in ``workers`` processes.

        Returns ``{study_id: error_code}`` for studies that failed (they are left
        out of training rather than stopping it).
        """
        todo = [r for r in records if not self.path_for(r).is_file()]
        errors: dict[str, str] = {}
        if not todo:
            return errors
        with contextlib.ExitStack() as stack:
            if workers <= 1:
                codes: Iterator[str | None] = (_fill_one(r, self.cfg, self.dir.parent) for r in todo)
            else:
                pool = stack.enter_context(ProcessPoolExecutor(max_workers=workers, initializer=_worker_init))
                codes = pool.map(_fill_one, todo, [self.cfg] * len(todo), [self.dir.parent] * len(todo))
            for done, (r, code) in enumerate(zip(todo, codes, strict=True), start=1):
                if code:
                    errors[r.study_id] = code
                if progress:
                    progress(done, len(todo))
        return errors


def _worker_init() -> None:
    torch.set_num_threads(1)


def _fill_one(rec: StudyRecord, cfg: PreprocessConfig, root: Path) -> str | None:
    try:
        TensorCache(root, cfg).get(rec)
    except InputError as e:
        log.warning("study %s skipped: %s", rec.study_id, e.code)
        return e.code
    return None


class CTDataset(Dataset[tuple[torch.Tensor, int]]):
    """(tensor [1, D, H, W] float32, label) pairs from a :class:`TensorCache`.

    ``augment`` applies a random left-right flip (x axis), ±0.02 intensity jitter
    and, with ``shift`` > 0, a random translation of up to ``shift`` model voxels per
    axis (vacated voxels get -1, i.e. air), seeded through the worker's torch generator.
    """

    def __init__(
        self, records: Sequence[StudyRecord], cache: TensorCache, augment: bool = False, shift: int = 0
    ) -> None:
        if shift < 0:
            raise ValueError("shift must be >= 0 voxels")
        self.records = list(records)
        self.cache = cache
        self.augment = augment
        self.shift = shift

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.records]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        rec = self.records[i]
        t = self.cache.get(rec)
        if self.augment:
            if bool(torch.rand(()) < 0.5):
                t = torch.flip(t, dims=(3,))
            t = (t + (torch.rand(()) - 0.5) * 0.04).clamp_(-1.0, 1.0)
            if self.shift:
                offsets = torch.randint(-self.shift, self.shift + 1, (3,)).tolist()
                t = translate(t, (int(offsets[0]), int(offsets[1]), int(offsets[2])))
        return t, rec.label


def translate(t: torch.Tensor, offsets: tuple[int, int, int], fill: float = -1.0) -> torch.Tensor:
    """Shift ``t`` [C, D, H, W] by ``offsets`` voxels along (D, H, W); vacated voxels get ``fill``."""
    out = torch.full_like(t, fill)
    src: list[slice] = [slice(None)]
    dst: list[slice] = [slice(None)]
    for o, n in zip(offsets, t.shape[1:], strict=True):
        if abs(o) >= n:
            return out
        src.append(slice(max(0, -o), n - max(0, o)))
        dst.append(slice(max(0, o), n - max(0, -o)))
    out[tuple(dst)] = t[tuple(src)]
    return out


def class_weighted_sampler(
    labels: Sequence[int], seed: int, num_samples: int | None = None
) -> WeightedRandomSampler:
    """Sampler drawing both classes equally often (weights 1 / class count), seeded."""
    y = np.asarray(labels)
    counts = np.bincount(y, minlength=2).astype(np.float64)
    if (counts == 0).any():
        raise ValueError("both classes are needed for class-weighted sampling")
    w = (1.0 / counts)[y]
    g = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(w.tolist(), num_samples or len(y), replacement=True, generator=g)


def split_train_val(
    records: Sequence[StudyRecord], val_fraction: float, seed: int
) -> tuple[list[StudyRecord], list[StudyRecord]]:
    """Stratified random split (each class split by ``val_fraction``), seeded."""
    rng = np.random.default_rng(seed)
    train: list[StudyRecord] = []
    val: list[StudyRecord] = []
    for cls in (0, 1):
        idx = [i for i, r in enumerate(records) if r.label == cls]
        rng.shuffle(idx)
        n_val = max(1, round(len(idx) * val_fraction)) if idx else 0
        val += [records[i] for i in idx[:n_val]]
        train += [records[i] for i in idx[n_val:]]
    return train, val


def describe(records: Sequence[StudyRecord]) -> dict[str, Any]:
    y = [r.label for r in records]
    return {"n": len(y), "positives": int(sum(y)), "negatives": len(y) - int(sum(y))}
