"""Training data: labels CSV + study ZIPs, and a cache of preprocessed tensors.

The cache is keyed by the ZIP's sha256 and a hash of the :class:`PreprocessConfig`
(plus the series override), so a changed preprocessing never reuses stale
tensors. Tensors are cached as float16 [1, D, H, W] (values in [-1, 1]; the
rounding error, ≤ 5e-4, is far below the image noise).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from ml.errors import InputError
from ml.io import read_study, sha256_file
from ml.preprocess import PreprocessConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PhantomCorpus:
    """A corpus of synthetic phantoms generated in memory instead of read from ZIPs.

    Its studies are exactly those ``ml.phantom.write_corpus(out, n, seed, rows=...,
    ...)`` writes (same ids, labels, phantom seeds and voxels); only the DICOM round
    trip is skipped (:func:`ml.phantom.phantom_volume`), which makes a training corpus
    about 2.5× cheaper to build. Sizes: ``rows``/``cols`` pixels of
    ``pixel_spacing_mm``, slices every ``slice_spacing_mm``; ``difficulty`` is the
    lesion conspicuity range in [0, 1].
    """

    seed: int
    n: int
    rows: int = 128
    cols: int = 128
    pixel_spacing_mm: float = 3.0
    slice_spacing_mm: float = 2.5
    difficulty: tuple[float, float] = (0.3, 1.0)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PhantomCorpus:
        known = {"seed", "n", "rows", "cols", "pixel_spacing_mm", "slice_spacing_mm", "difficulty"}
        if unknown := sorted(set(d) - known):
            raise ValueError(f"unknown phantom corpus keys: {unknown}")
        dd = dict(d)
        if "difficulty" in dd:
            lo, hi = dd["difficulty"]
            dd["difficulty"] = (float(lo), float(hi))
        return cls(**dd)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["difficulty"] = list(self.difficulty)
        return d


@dataclass(frozen=True)
class PhantomStudy:
    """One in-memory phantom study: its phantom seed, label and corpus (sizes)."""

    seed: int
    label: int
    corpus: PhantomCorpus

    def cache_key(self) -> str:
        """sha256 of the study's parameters and of the generator's source (so a changed
        generator never reuses stale tensors)."""
        c = self.corpus
        sizes = (c.rows, c.cols, c.pixel_spacing_mm, c.slice_spacing_mm, list(c.difficulty))
        blob = json.dumps([_generator_sha(), self.seed, self.label, *sizes])
        return hashlib.sha256(blob.encode()).hexdigest()


@functools.cache
def _generator_sha() -> str:
    import ml.phantom

    package = Path(ml.phantom.__file__).parent
    sources = "".join(sha256_file(p) for p in sorted(package.glob("*.py")))
    return hashlib.sha256(sources.encode()).hexdigest()


@dataclass(frozen=True)
class StudyRecord:
    """One labelled study: ``label`` 1 = pathology, 0 = normal.

    Read from ``zip_path``, or, when ``phantom`` is set, generated in memory
    (``zip_path`` is then None).
    """

    study_id: str
    label: int
    zip_path: Path | None
    series_uid: str | None = None
    phantom: PhantomStudy | None = None


def phantom_records(corpus: PhantomCorpus) -> list[StudyRecord]:
    """The studies of ``corpus`` (ids and labels as ``write_corpus`` writes them)."""
    from ml.phantom import corpus_plan

    return [
        StudyRecord(sid, label, None, phantom=PhantomStudy(seed, label, corpus))
        for sid, seed, label in corpus_plan(corpus.n, corpus.seed)
    ]


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


def preprocess_phantom(study: PhantomStudy, cfg: PreprocessConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate ``study`` in memory and preprocess it: (float32 [1, D, H, W] tensor, bool
    [1, D, H, W] lesion map on the model grid, see ``PreprocessGeometry.mask_to_model``)."""
    from ml.phantom import PhantomSpec, generate_phantom, phantom_volume
    from ml.preprocess import preprocess

    c = study.corpus
    ph = generate_phantom(
        PhantomSpec(
            seed=study.seed,
            label=study.label,
            difficulty=c.difficulty,
            rows=c.rows,
            cols=c.cols,
            pixel_spacing_mm=c.pixel_spacing_mm,
            slice_spacing_mm=c.slice_spacing_mm,
        )
    )
    res = preprocess(phantom_volume(ph), cfg)
    lesions = torch.from_numpy(res.geometry.mask_to_model(ph.mask))[None]
    return res.tensor[0], lesions


def preprocess_study(zip_path: Path, cfg: PreprocessConfig, series_uid: str | None = None) -> torch.Tensor:
    """ZIP → selected series → preprocessing; returns float32 [1, D, H, W]."""
    result = read_study(zip_path, series_uid=series_uid, preprocess=cfg).preprocessed
    assert result is not None
    return result.tensor[0]


class TensorCache:
    """Preprocessed tensors on disk under ``root/<config key>/<sha[:2]>/<sha>[-<series>].pt``.

    ``sha`` is the ZIP's sha256, or :meth:`PhantomStudy.cache_key` for an in-memory
    phantom, whose lesion map on the model grid is kept beside it as ``<sha>.lesions.pt``.
    """

    def __init__(self, root: str | Path, cfg: PreprocessConfig) -> None:
        self.cfg = cfg
        self.dir = Path(root) / config_key(cfg)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
        self._sha: dict[Path, str] = {}

    def path_for(self, rec: StudyRecord) -> Path:
        if rec.phantom is not None:
            key = rec.phantom.cache_key()
            return self.dir / key[:2] / f"{key}.pt"
        if rec.zip_path is None:
            raise ValueError(f"study {rec.study_id} has neither a ZIP nor a phantom")
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
        if rec.phantom is not None:
            t, lesions = preprocess_phantom(rec.phantom, self.cfg)
            _save_atomic(lesions, p.with_suffix(".lesions.pt"))  # before the tensor: its presence = complete
        else:
            assert rec.zip_path is not None  # path_for refused a record with neither
            t = preprocess_study(rec.zip_path, self.cfg, rec.series_uid)
        _save_atomic(t.half().contiguous(), p)
        return t

    def lesions(self, rec: StudyRecord) -> torch.Tensor | None:
        """The study's lesion map (bool [1, D, H, W] on the model grid), or None where the
        corpus has none (studies read from ZIPs)."""
        if rec.phantom is None:
            return None
        p = self.path_for(rec).with_suffix(".lesions.pt")
        if not p.is_file():
            self.path_for(rec).unlink(missing_ok=True)
            self.get(rec)
        m: torch.Tensor = torch.load(p, weights_only=True)
        return m

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


def _save_atomic(t: torch.Tensor, p: Path) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(f".tmp{os.getpid()}")
    torch.save(t, tmp)
    tmp.replace(p)


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
        return self.augmented(self.cache.get(rec))[0], rec.label

    def augmented(
        self, t: torch.Tensor, lesions: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``t`` with this dataset's random augmentation; ``lesions`` (a map on the same
        grid) gets the same flip and translation, so it stays aligned."""
        if not self.augment:
            return t, lesions
        if bool(torch.rand(()) < 0.5):
            t = torch.flip(t, dims=(3,))
            lesions = None if lesions is None else torch.flip(lesions, dims=(3,))
        t = (t + (torch.rand(()) - 0.5) * 0.04).clamp_(-1.0, 1.0)
        if self.shift:
            o = [int(v) for v in torch.randint(-self.shift, self.shift + 1, (3,)).tolist()]
            t = translate(t, (o[0], o[1], o[2]))
            lesions = None if lesions is None else translate(lesions, (o[0], o[1], o[2]), fill=False)
        return t, lesions


class LesionMapDataset(Dataset[tuple[torch.Tensor, int, torch.Tensor]]):
    """``base``'s items plus each study's lesion map (bool [1, D, H, W], aligned with the
    augmented tensor; all False where the corpus has no map, e.g. ZIP studies)."""

    def __init__(self, base: CTDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        rec = self.base.records[i]
        t = self.base.cache.get(rec)
        m = self.base.cache.lesions(rec)
        t, m = self.base.augmented(t, torch.zeros(t.shape, dtype=torch.bool) if m is None else m)
        assert m is not None
        return t, rec.label, m


def translate(t: torch.Tensor, offsets: tuple[int, int, int], fill: float | bool = -1.0) -> torch.Tensor:
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
