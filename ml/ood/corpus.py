"""OOD statistics for any manifest model from the operator's own studies (``service4ct fit-ood``).

An operator who brings their own weights also brings studies from their own
scanners: this reads each study ZIP with the model's preprocessing, runs the
model once per study (logits and pooled features), fits :func:`ml.ood.fit_ood`
(threshold on a held-out part, keeping ``keep`` of it), writes the statistics
file beside the weights and records it, with its sha256, in the manifest entry.
Labels are optional: without them ``mahalanobis`` fits one Gaussian.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ml.errors import InputError
from ml.inference import Predictor
from ml.model import Manifest, OODRef, resolve_weights
from ml.model.checkpoint import load_model
from ml.ood.scores import OOD_METHODS
from ml.ood.stats import fit_ood
from ml.preprocess import PreprocessConfig

if TYPE_CHECKING:
    from ml.io.study import StudyRead

__all__ = ["MIN_STUDIES", "FittedOOD", "fit_model_ood", "readable_studies"]

#: fewest readable studies a fit accepts (the threshold is set on a held-out part)
MIN_STUDIES = 20


@dataclass
class FittedOOD:
    """What :func:`fit_model_ood` did."""

    ref: OODRef
    path: Path
    used: int
    skipped: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.ref.to_dict(),
            "file": str(self.path),
            "used": self.used,
            "skipped": dict(self.skipped),
        }


def readable_studies(
    studies: Sequence[Path],
    preprocess: PreprocessConfig,
    skipped: Counter[str],
    on_study: Callable[[int, int], None] | None = None,
) -> Iterator[tuple[int, StudyRead]]:
    """(index, read) of each study that can be read with ``preprocess``; the others are counted
    in ``skipped`` by error code. ``on_study(i, n)`` is called before each study."""
    from ml.io import read_study

    for i, path in enumerate(studies):
        if on_study is not None:
            on_study(i, len(studies))
        try:
            yield i, read_study(path, preprocess=preprocess)
        except InputError as e:
            skipped[e.code] += 1


def fit_model_ood(
    manifest_path: str | Path,
    name: str | None,
    studies: Sequence[Path],
    labels: Sequence[int] | None = None,
    *,
    method: str = OOD_METHODS[0],
    keep: float = 0.95,
    fitted_on: str = "operator corpus",
    device: str = "cpu",
    seed: int = 0,
    out_path: str | Path | None = None,
    on_study: Callable[[int, int], None] | None = None,
) -> FittedOOD:
    """Fit and publish the OOD statistics of manifest model ``name`` (None: the default).

    Studies that cannot be read are skipped and counted by error code. The file goes to
    ``out_path``, by default ``<weights stem>.ood.npz`` beside the weight file, which must be
    local (fit on a local copy of ``s3://`` weights); the manifest entry's ``ood`` is replaced.

    Raises:
        ModelUnavailable: the model cannot be loaded.
        ValueError: unknown method, labels that do not match the studies, or fewer than
            :data:`MIN_STUDIES` readable studies.
    """

    if method not in OOD_METHODS:
        raise ValueError(f"method must be one of {OOD_METHODS}, not {method!r}")
    if labels is not None and len(labels) != len(studies):
        raise ValueError("one label per study is required")
    mpath = Path(manifest_path)
    manifest = Manifest.load(mpath)
    entry = manifest.get(name)
    weights = resolve_weights(entry, mpath.parent)
    predictor = Predictor(entry, load_model(entry, weights, torch.device("cpu")), device=device)
    logits: list[np.ndarray] = []
    feats: list[np.ndarray] = []
    kept: list[int] = []
    skipped: Counter[str] = Counter()
    for i, read in readable_studies(studies, entry.preprocess, skipped, on_study):
        assert read.preprocessed is not None
        lg, ft = predictor.logits_and_features(read.preprocessed.tensor)
        logits.append(lg.double().numpy()[0])
        feats.append(ft.double().numpy()[0])
        kept.append(i)
    if len(kept) < MIN_STUDIES:
        raise ValueError(
            f"only {len(kept)} readable studies; at least {MIN_STUDIES} are needed to fit OOD statistics"
        )
    y = None if labels is None else np.asarray([labels[i] for i in kept])
    stats = fit_ood(
        np.stack(feats), np.stack(logits), y, method=method, fitted_on=fitted_on, keep=keep, seed=seed
    )
    if out_path is None:  # beside the (local: resolve_weights has no fetcher here) weight file
        out_path = weights.parent / f"{weights.name.split('.')[0]}.ood.npz"
    out = Path(out_path)
    sha = stats.save(out)
    try:
        uri = str(out.resolve().relative_to(mpath.parent.resolve()))
    except ValueError:
        uri = str(out.resolve())
    ref = OODRef(uri=uri, sha256=sha, **{k: v for k, v in stats.meta().items()})
    manifest.upsert(dataclasses.replace(entry, ood=ref))
    manifest.save(mpath)
    return FittedOOD(ref=ref, path=out, used=len(kept), skipped=skipped)
