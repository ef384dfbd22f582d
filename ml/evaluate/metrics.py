"""Discrimination and confusion-matrix metrics.

* discrimination: :func:`roc_curve`, :func:`roc_auc` (equal to the Mann-Whitney U
  statistic with ties counted 1/2, see :func:`mann_whitney_auc`);
* confusion-matrix metrics at a threshold (a study is called positive when its
  score is ``>=`` the threshold): :func:`confusion_at`, :func:`sensitivity`,
  :func:`specificity`, :func:`f1`, :func:`accuracy`, :func:`ppv`, :func:`npv`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ml.evaluate.checks import FloatArray, IntArray, MetricFn, labels_and_scores, ratio

# --------------------------------------------------------------------------- ROC / AUC


def roc_curve(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Receiver operating characteristic over every distinct score.

    Returns ``(fpr, tpr, thresholds)`` ordered by decreasing threshold. The first
    point is ``(0, 0)`` with threshold ``+inf`` (nothing called positive); each
    further point uses one distinct score as threshold (``score >= threshold`` is
    positive), so tied scores move the curve diagonally in one step. ``tpr``
    (``fpr``) is all-``nan`` when there is no positive (negative).
    """
    y, s = labels_and_scores(y_true, scores)
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    # last index of each run of equal scores
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1] if s.size else np.zeros(0, np.int64)
    tps = np.cumsum(y_sorted)[last] if s.size else np.zeros(0, np.int64)
    fps = (last + 1) - tps
    tps = np.r_[0, tps].astype(np.float64)
    fps = np.r_[0, fps].astype(np.float64)
    thresholds = np.r_[np.inf, s_sorted[last]].astype(np.float64)
    n_pos = float(y.sum())
    n_neg = float(y.size - y.sum())
    tpr = tps / n_pos if n_pos else np.full_like(tps, np.nan)
    fpr = fps / n_neg if n_neg else np.full_like(fps, np.nan)
    return fpr, tpr, thresholds


def roc_auc(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve (trapezoidal rule; ties count 1/2); ``nan`` if a class is absent."""
    fpr, tpr, _ = roc_curve(y_true, scores)
    if not (np.all(np.isfinite(fpr)) and np.all(np.isfinite(tpr))):
        return math.nan
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def _average_ranks(values: FloatArray) -> FloatArray:
    """1-based ranks with ties given their average rank."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts).astype(np.float64)  # rank of the last member of each tie group
    group_rank = ends - (counts - 1) / 2.0
    return group_rank[inverse.reshape(-1)]


def mann_whitney_auc(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """``U / (n_pos * n_neg)`` from the rank-sum formula, ties counted 1/2.

    ``U`` counts the (positive, negative) pairs in which the positive scores
    higher. It equals :func:`roc_auc`; kept as an independent check. ``nan`` if a
    class is absent.
    """
    y, s = labels_and_scores(y_true, scores)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _average_ranks(s)
    u = float(ranks[y == 1].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


# --------------------------------------------------------------------------- confusion metrics


@dataclass(frozen=True)
class Confusion:
    """Confusion-matrix counts at one threshold, with the derived rates.

    Every rate is ``nan`` when its denominator is zero.
    """

    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def n(self) -> int:
        """Number of samples."""
        return self.tp + self.fp + self.tn + self.fn

    @property
    def sensitivity(self) -> float:
        """True-positive rate ``tp / (tp + fn)`` (recall)."""
        return ratio(self.tp, self.tp + self.fn)

    @property
    def specificity(self) -> float:
        """True-negative rate ``tn / (tn + fp)``."""
        return ratio(self.tn, self.tn + self.fp)

    @property
    def ppv(self) -> float:
        """Positive predictive value ``tp / (tp + fp)`` (precision)."""
        return ratio(self.tp, self.tp + self.fp)

    @property
    def npv(self) -> float:
        """Negative predictive value ``tn / (tn + fn)``."""
        return ratio(self.tn, self.tn + self.fn)

    @property
    def f1(self) -> float:
        """``2 tp / (2 tp + fp + fn)`` (harmonic mean of PPV and sensitivity)."""
        return ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def accuracy(self) -> float:
        """``(tp + tn) / n``."""
        return ratio(self.tp + self.tn, self.n)


def confusion_at(y_true: npt.ArrayLike, scores: npt.ArrayLike, threshold: float) -> Confusion:
    """Confusion counts when ``score >= threshold`` is called positive.

    A ``nan`` threshold calls nothing positive (every comparison is false).
    """
    y, s = labels_and_scores(y_true, scores)
    pred = s >= threshold
    pos = y == 1
    tp = int(np.sum(pred & pos))
    fp = int(np.sum(pred & ~pos))
    fn = int(np.sum(~pred & pos))
    tn = int(np.sum(~pred & ~pos))
    return Confusion(tp=tp, fp=fp, tn=tn, fn=fn)


def sensitivity(y_true: npt.ArrayLike, scores: npt.ArrayLike, threshold: float = 0.5) -> float:
    """Sensitivity at ``threshold``; ``nan`` without positives."""
    return confusion_at(y_true, scores, threshold).sensitivity


def specificity(y_true: npt.ArrayLike, scores: npt.ArrayLike, threshold: float = 0.5) -> float:
    """Specificity at ``threshold``; ``nan`` without negatives."""
    return confusion_at(y_true, scores, threshold).specificity


def ppv(y_true: npt.ArrayLike, scores: npt.ArrayLike, threshold: float = 0.5) -> float:
    """Positive predictive value at ``threshold``; ``nan`` if nothing is called positive."""
    return confusion_at(y_true, scores, threshold).ppv


def npv(y_true: npt.ArrayLike, scores: npt.ArrayLike, threshold: float = 0.5) -> float:
    """Negative predictive value at ``threshold``; ``nan`` if nothing is called negative."""
    return confusion_at(y_true, scores, threshold).npv


def f1(y_true: npt.ArrayLike, scores: npt.ArrayLike, threshold: float = 0.5) -> float:
    """F1 score at ``threshold``; ``nan`` with no positive and no positive call."""
    return confusion_at(y_true, scores, threshold).f1


def accuracy(y_true: npt.ArrayLike, scores: npt.ArrayLike, threshold: float = 0.5) -> float:
    """Accuracy at ``threshold``; ``nan`` for an empty sample."""
    return confusion_at(y_true, scores, threshold).accuracy


def metric_at(name: str, threshold: float) -> MetricFn:
    """A bootstrap metric: the confusion-matrix rate ``name`` at ``threshold``."""

    def fn(y: IntArray, s: FloatArray) -> float:
        value: float = getattr(confusion_at(y, s, threshold), name)
        return value

    return fn
