"""The out-of-distribution statistics a training run (or ``retune``) publishes with the weights.

Fitted on the corpus that also chooses the operating points (the tuning corpus when
there is one, else the validation split): the model's pooled penultimate features
and logits of those studies, one forward each, then :func:`ml.ood.fit_ood` (the
statistics on one part, the threshold on a held-out part so that it keeps
``cfg.ood_keep`` of it).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ml.data import StudyRecord
from ml.ood import OODStats, fit_ood
from ml.train.config import TrainConfig
from ml.train.scoring import SPLIT_TITLES, SplitOutputs

__all__ = ["MIN_OOD_STUDIES", "fit_run_ood", "ood_split"]

log = logging.getLogger("ml.train")

#: fewer studies than this fit no OOD statistics (the threshold needs a held-out part)
MIN_OOD_STUDIES = 8


def ood_split(splits: Mapping[str, Sequence[StudyRecord]]) -> str:
    """The split the OOD statistics are fitted on: ``tuning`` when it has studies, else ``validation``."""
    return "tuning" if splits.get("tuning") else "validation"


def fit_run_ood(
    cfg: TrainConfig,
    splits: Mapping[str, Sequence[StudyRecord]],
    outputs: SplitOutputs,
    out_dir: Path,
) -> dict[str, Any] | None:
    """Fit ``cfg.ood_method`` and write ``ood.npz`` in ``out_dir``; None when ``ood_method`` is ``none``.

    ``outputs`` are the split's logits and features from :func:`ml.train.scoring.score_splits`
    (the forward passes that scored it), so fitting runs no model.

    With fewer than :data:`MIN_OOD_STUDIES` studies it logs a warning and returns None.
    Returns the summary block ``{"method", "threshold", "fitted_on", "n",
    "in_distribution_rate", "file", "sha256"}`` that :func:`ml.train.publish.publish_entry`
    turns into the manifest entry's ``ood``.
    """
    if cfg.ood_method == "none":
        return None
    split = ood_split(splits)
    records = list(splits.get(split, []))
    if len(records) < MIN_OOD_STUDIES:
        log.warning(
            "only %d %s studies: no OOD statistics are published (at least %d are needed)",
            len(records),
            SPLIT_TITLES[split],
            MIN_OOD_STUDIES,
        )
        return None
    logits, feats = outputs[split]
    labels = np.asarray([r.label for r in records])
    stats: OODStats = fit_ood(
        feats,
        logits,
        labels,
        method=cfg.ood_method,
        fitted_on=SPLIT_TITLES[split],
        keep=cfg.ood_keep,
        seed=cfg.seed,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "ood.npz"
    sha = stats.save(path)
    return {**stats.meta(), "file": str(path), "sha256": sha}
