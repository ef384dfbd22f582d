"""Resampling: percentile-bootstrap confidence intervals and seeded stratified k-fold splits."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from ml.evaluate.checks import IntArray, MetricFn, labels_and_scores

# --------------------------------------------------------------------------- bootstrap


def bootstrap_ci(
    y_true: npt.ArrayLike,
    scores: npt.ArrayLike,
    metric_fn: MetricFn,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    stratified: bool = True,
) -> tuple[float, float]:
    """Percentile bootstrap ``(1 - alpha)`` confidence interval of ``metric_fn(y, s)``.

    ``stratified=True`` resamples positives and negatives separately (each class
    keeps its size), so every resample has both classes. Otherwise whole-sample
    resamples lacking a class are redrawn (up to ``10 * n`` draws in all) when the
    data have both classes. Resamples whose metric is ``nan`` are skipped.
    Returns ``(nan, nan)`` when no resample gives a finite value. Deterministic
    for a given ``seed``.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must be in (0, 1)")
    y, s = labels_and_scores(y_true, scores)
    if y.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    pos = np.flatnonzero(y == 1)
    neg = np.flatnonzero(y == 0)
    both = pos.size > 0 and neg.size > 0
    values: list[float] = []
    draws = 0
    while len(values) < n and draws < 10 * n:
        draws += 1
        if stratified and both:
            idx = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        else:
            idx = rng.integers(0, y.size, y.size)
            if both and not 0 < int(y[idx].sum()) < idx.size:
                continue  # a class went missing: redraw
        v = float(metric_fn(y[idx], s[idx]))
        if math.isfinite(v):
            values.append(v)
    if not values:
        return math.nan, math.nan
    arr = np.asarray(values)
    lo, hi = np.quantile(arr, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


# --------------------------------------------------------------------------- splitting


def stratified_kfold(labels: npt.ArrayLike, k: int, seed: int = 0) -> list[tuple[IntArray, IntArray]]:
    """Seeded stratified ``k``-fold split.

    Each class is shuffled and dealt round-robin over the folds, continuing where
    the previous class stopped, so every sample lies in exactly one validation
    fold, each class's count per fold differs by at most one between folds, and
    fold sizes differ by at most one. Works for any discrete labels. Returns
    ``[(train_idx, val_idx), ...]`` with sorted index arrays.
    """
    lab = np.asarray(labels)
    if lab.ndim != 1:
        raise ValueError("labels must be 1-D")
    if not 2 <= k <= lab.size:
        raise ValueError(f"k must be in [2, n_samples={lab.size}], got {k}")
    rng = np.random.default_rng(seed)
    fold_of = np.empty(lab.size, dtype=np.int64)
    offset = 0
    for cls in np.unique(lab):
        members = rng.permutation(np.flatnonzero(lab == cls))
        fold_of[members] = (offset + np.arange(members.size)) % k
        offset = (offset + members.size) % k
    everything = np.arange(lab.size, dtype=np.int64)
    return [(everything[fold_of != f], everything[fold_of == f]) for f in range(k)]
