"""The drift reference of a manifest model from a corpus of study ZIPs (``service4ct drift-reference``).

Reads each study with the model's preprocessing, runs the model once (probability and
OOD score), takes the selected series' header properties (slice thickness and coverage
in mm, kernel, manufacturer; withheld when they carry an identifier, as the worker does:
:func:`ml.evaluate.drift.header_signals`), bins them (:func:`ml.evaluate.drift.build_reference`)
and records the result in the manifest entry's ``metrics["drift_reference"]``. The weights
and the OOD statistics file are read only: their sha256 does not change.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from ml.evaluate.drift import (
    CATEGORICAL_SIGNALS,
    NUMERIC_SIGNALS,
    DriftReference,
    build_reference,
    header_signals,
)
from ml.model import Manifest

__all__ = ["corpus_reference"]


def corpus_reference(
    manifest_path: str | Path,
    name: str | None,
    studies: Sequence[Path],
    *,
    fitted_on: str = "held-out test",
    save: bool = True,
    on_study: Callable[[int, int], None] | None = None,
) -> tuple[DriftReference, Counter[str]]:
    """The drift reference of model ``name`` on ``studies`` (unreadable ones are counted by code).

    With ``save`` the manifest entry's ``metrics["drift_reference"]`` is replaced.
    Raises ValueError when no study could be read.
    """
    from ml.inference import Predictor
    from ml.ood.corpus import readable_studies

    mpath = Path(manifest_path)
    manifest = Manifest.load(mpath)
    entry = manifest.get(name)
    predictor = Predictor.from_manifest(mpath, entry.name, device="cpu")
    numeric: dict[str, list[float | None]] = {k: [] for k in NUMERIC_SIGNALS}
    categorical: dict[str, list[str | None]] = {k: [] for k in CATEGORICAL_SIGNALS}
    skipped: Counter[str] = Counter()
    for _, read in readable_studies(studies, entry.preprocess, skipped, on_study):
        assert read.preprocessed is not None
        pred = predictor.predict(read.preprocessed.tensor, [read.preprocessed.geometry.model_voxel_mm()])[0]
        header = header_signals(read.series.summary(), read.phi_tokens)  # as the worker records it
        numeric["probability"].append(pred.probability)
        numeric["ood_score"].append(None if pred.ood is None else pred.ood.score)
        for k in ("slice_thickness_mm", "coverage_mm"):
            numeric[k].append(header[k])
        for k in CATEGORICAL_SIGNALS:
            categorical[k].append(header[k])
    if not numeric["probability"]:
        raise ValueError("no study of the corpus could be read")
    ref = build_reference(numeric, categorical, fitted_on=fitted_on)
    if save:
        metrics = {**entry.metrics, "drift_reference": ref.to_dict()}
        manifest.upsert(dataclasses.replace(entry, metrics=metrics))
        manifest.save(mpath)
    return ref, skipped
