"""Evaluation recipe for the binary triage model (normal = 0, pathology = 1).

Everything here is plain numpy (no scikit-learn) and deterministic given a seed:

* discrimination: :func:`roc_curve`, :func:`roc_auc` (equal to the Mann-Whitney U
  statistic with ties counted 1/2, see :func:`mann_whitney_auc`);
* confusion-matrix metrics at a threshold (a study is called positive when its
  score is ``>=`` the threshold): :func:`confusion_at`, :func:`sensitivity`,
  :func:`specificity`, :func:`f1`, :func:`accuracy`, :func:`ppv`, :func:`npv`;
* uncertainty: :func:`bootstrap_ci` (percentile bootstrap, stratified by default);
* operating points chosen on validation scores and evaluated on test scores:
  :func:`select_operating_points`, :func:`evaluate_operating_points`;
* calibration: :func:`fit_temperature`, :func:`apply_temperature`,
  :func:`reliability_curve`, :func:`ece`, :func:`brier_score`;
* data splitting: :func:`stratified_kfold`;
* reporting: :func:`summarize`, :func:`plot_roc`, :func:`plot_calibration`,
  :func:`write_model_card`.

Metrics whose denominator is empty (e.g. sensitivity when the sample has no
positive) are ``nan`` rather than an error; malformed input (labels other than
0/1, non-finite scores, mismatched lengths) raises :class:`ValueError`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
MetricFn = Callable[[IntArray, FloatArray], float]

OPERATING_POINT_NAMES: Final[tuple[str, ...]] = ("balanced", "high_sensitivity", "high_specificity")
"""Names of the operating points returned by :func:`select_operating_points`."""

_EPS: Final[float] = 1e-12  # tolerance when comparing a rate with a target (19/20 vs 0.95)

__all__ = [
    "OPERATING_POINT_NAMES",
    "Confusion",
    "accuracy",
    "apply_temperature",
    "bootstrap_ci",
    "brier_score",
    "confusion_at",
    "ece",
    "evaluate_operating_points",
    "f1",
    "fit_temperature",
    "logit",
    "mann_whitney_auc",
    "npv",
    "plot_calibration",
    "plot_roc",
    "ppv",
    "reliability_curve",
    "roc_auc",
    "roc_curve",
    "select_operating_points",
    "sensitivity",
    "sigmoid",
    "specificity",
    "stratified_kfold",
    "summarize",
    "write_model_card",
]


# --------------------------------------------------------------------------- input checks


def _as_labels(y_true: npt.ArrayLike) -> IntArray:
    """Return ``y_true`` as a 1-D int64 array of 0/1, or raise ``ValueError``."""
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    if y.size and not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 (normal) or 1 (pathology)")
    return y.astype(np.int64)


def _as_scores(scores: npt.ArrayLike, n: int | None = None) -> FloatArray:
    """Return ``scores`` as a 1-D finite float64 array (of length ``n`` if given)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {s.shape}")
    if n is not None and s.size != n:
        raise ValueError(f"labels and scores differ in length ({n} vs {s.size})")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    return s


def _pair(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> tuple[IntArray, FloatArray]:
    """Validate labels and scores together."""
    y = _as_labels(y_true)
    return y, _as_scores(scores, y.size)


def _ratio(num: float, den: float) -> float:
    """``num / den``, or ``nan`` when the denominator is zero."""
    return float(num) / float(den) if den else math.nan


# --------------------------------------------------------------------------- ROC / AUC


def roc_curve(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Receiver operating characteristic over every distinct score.

    Returns ``(fpr, tpr, thresholds)`` ordered by decreasing threshold. The first
    point is ``(0, 0)`` with threshold ``+inf`` (nothing called positive); each
    further point uses one distinct score as threshold (``score >= threshold`` is
    positive), so tied scores move the curve diagonally in one step. ``tpr``
    (``fpr``) is all-``nan`` when there is no positive (negative).
    """
    y, s = _pair(y_true, scores)
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
    y, s = _pair(y_true, scores)
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
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def specificity(self) -> float:
        """True-negative rate ``tn / (tn + fp)``."""
        return _ratio(self.tn, self.tn + self.fp)

    @property
    def ppv(self) -> float:
        """Positive predictive value ``tp / (tp + fp)`` (precision)."""
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def npv(self) -> float:
        """Negative predictive value ``tn / (tn + fn)``."""
        return _ratio(self.tn, self.tn + self.fn)

    @property
    def f1(self) -> float:
        """``2 tp / (2 tp + fp + fn)`` (harmonic mean of PPV and sensitivity)."""
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def accuracy(self) -> float:
        """``(tp + tn) / n``."""
        return _ratio(self.tp + self.tn, self.n)


def confusion_at(y_true: npt.ArrayLike, scores: npt.ArrayLike, threshold: float) -> Confusion:
    """Confusion counts when ``score >= threshold`` is called positive.

    A ``nan`` threshold calls nothing positive (every comparison is false).
    """
    y, s = _pair(y_true, scores)
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
    y, s = _pair(y_true, scores)
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


# --------------------------------------------------------------------------- operating points


def select_operating_points(
    y_val: npt.ArrayLike,
    s_val: npt.ArrayLike,
    sens_target: float = 0.95,
    spec_target: float = 0.95,
) -> dict[str, float]:
    """Choose named thresholds on validation scores.

    * ``balanced``: maximises Youden's J = sensitivity + specificity - 1; when several
      thresholds tie (common on a balanced set: passing one more positive and one more
      negative leaves J unchanged), the lowest of them, the most sensitive: a triage
      service ranks a missed pathology worse than a false alarm;
    * ``high_sensitivity``: the highest threshold with sensitivity >= ``sens_target``,
      but never above ``balanced``;
    * ``high_specificity``: the lowest threshold with specificity >= ``spec_target``,
      but never below ``balanced``.

    The bounds keep the names true: where ``balanced`` already meets a target (a strong
    model: sensitivity and specificity both above 0.95), the "high" point would
    otherwise be the *less* sensitive (or specific) of the two; it is then ``balanced``.

    Thresholds are observed scores, except that ``high_specificity`` may have to
    call nothing positive, in which case it is the next float above the largest
    score. All three are ``nan`` when the validation set lacks a class.
    """
    fpr, tpr, thr = roc_curve(y_val, s_val)
    if thr.size < 2 or not (np.all(np.isfinite(fpr)) and np.all(np.isfinite(tpr))):
        return dict.fromkeys(OPERATING_POINT_NAMES, math.nan)
    j = tpr[1:] - fpr[1:]
    balanced = float(thr[1:][int(np.flatnonzero(j >= j.max() - _EPS)[-1])])
    high_sens = float(thr[int(np.flatnonzero(tpr >= sens_target - _EPS)[0])])
    i_spec = int(np.flatnonzero((1.0 - fpr) >= spec_target - _EPS)[-1])
    high_spec = float(thr[i_spec]) if i_spec > 0 else float(np.nextafter(thr[1], np.inf))
    return {
        "balanced": balanced,
        "high_sensitivity": min(high_sens, balanced),
        "high_specificity": max(high_spec, balanced),
    }


def _metric_at(name: str, threshold: float) -> MetricFn:
    """A bootstrap metric: the confusion-matrix rate ``name`` at ``threshold``."""

    def fn(y: IntArray, s: FloatArray) -> float:
        value: float = getattr(confusion_at(y, s, threshold), name)
        return value

    return fn


def evaluate_operating_points(
    y_test: npt.ArrayLike,
    s_test: npt.ArrayLike,
    thresholds: Mapping[str, float],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Metrics of each named threshold on test data, with bootstrap 95 % CIs.

    Returns ``{name: {"threshold", "sensitivity", "specificity",
    "sensitivity_ci95": [lo, hi], "specificity_ci95": [lo, hi], "f1", "ppv",
    "npv", "n"}}``; undefined values are ``nan``.
    """
    y, s = _pair(y_test, s_test)
    out: dict[str, dict[str, Any]] = {}
    for name, threshold in thresholds.items():
        c = confusion_at(y, s, threshold)
        sens_ci = bootstrap_ci(y, s, _metric_at("sensitivity", threshold), n=n_boot, seed=seed)
        spec_ci = bootstrap_ci(y, s, _metric_at("specificity", threshold), n=n_boot, seed=seed)
        out[name] = {
            "threshold": float(threshold),
            "sensitivity": c.sensitivity,
            "specificity": c.specificity,
            "sensitivity_ci95": [sens_ci[0], sens_ci[1]],
            "specificity_ci95": [spec_ci[0], spec_ci[1]],
            "f1": c.f1,
            "ppv": c.ppv,
            "npv": c.npv,
            "n": c.n,
        }
    return out


# --------------------------------------------------------------------------- calibration


def sigmoid(z: npt.ArrayLike) -> FloatArray:
    """Numerically stable logistic function."""
    x = np.asarray(z, dtype=np.float64)
    out: FloatArray = np.exp(-np.logaddexp(0.0, -x))
    return out


def logit(p: npt.ArrayLike, eps: float = 1e-7) -> FloatArray:
    """Log-odds of probabilities clipped to ``[eps, 1 - eps]``."""
    q = np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps)
    out: FloatArray = np.log(q) - np.log1p(-q)
    return out


def _nll(z: FloatArray, y: IntArray, temperature: float) -> float:
    """Mean binary cross-entropy of ``sigmoid(z / T)`` against ``y``."""
    a = z / temperature
    return float(np.mean(np.logaddexp(0.0, a) - y * a))


def fit_temperature(
    logits_or_logodds: npt.ArrayLike,
    y: npt.ArrayLike,
    t_min: float = 1e-2,
    t_max: float = 1e2,
    tol: float = 1e-7,
) -> float:
    """Temperature ``T > 0`` minimising the NLL of ``sigmoid(z / T)``.

    ``z`` is the 1-D pathology logit (log-odds). The NLL is convex in ``1 / T``,
    hence unimodal in ``log T``; a golden-section search on ``log T`` over
    ``[t_min, t_max]`` finds the minimum deterministically (the result is clipped
    to that range). Returns 1.0 (no change) when a class is absent or all logits
    are zero: the data carry no information about the temperature.
    """
    labels = _as_labels(y)
    z = _as_scores(logits_or_logodds, labels.size)
    if not 0 < int(labels.sum()) < labels.size or not np.any(z):
        return 1.0
    lo, hi = math.log(t_min), math.log(t_max)
    inv_phi = (math.sqrt(5.0) - 1.0) / 2.0
    c = hi - inv_phi * (hi - lo)
    d = lo + inv_phi * (hi - lo)
    fc = _nll(z, labels, math.exp(c))
    fd = _nll(z, labels, math.exp(d))
    while hi - lo > tol:
        if fc <= fd:
            hi, d, fd = d, c, fc
            c = hi - inv_phi * (hi - lo)
            fc = _nll(z, labels, math.exp(c))
        else:
            lo, c, fc = c, d, fd
            d = lo + inv_phi * (hi - lo)
            fd = _nll(z, labels, math.exp(d))
    return math.exp((lo + hi) / 2.0)


def apply_temperature(logits_or_logodds: npt.ArrayLike, temperature: float) -> FloatArray:
    """Calibrated probabilities ``sigmoid(z / T)``."""
    if not temperature > 0:
        raise ValueError("temperature must be > 0")
    return sigmoid(np.asarray(logits_or_logodds, dtype=np.float64) / temperature)


def _check_probs(y: npt.ArrayLike, p: npt.ArrayLike) -> tuple[IntArray, FloatArray]:
    labels, probs = _pair(y, p)
    if probs.size and (probs.min() < 0.0 or probs.max() > 1.0):
        raise ValueError("probabilities must lie in [0, 1]")
    return labels, probs


def reliability_curve(
    y: npt.ArrayLike, p: npt.ArrayLike, n_bins: int = 10
) -> tuple[FloatArray, FloatArray, IntArray]:
    """Reliability diagram data over ``n_bins`` equal-width bins of ``[0, 1]``.

    Returns ``(mean_predicted, fraction_positive, counts)``, one entry per bin
    (bin ``i`` is ``[i/n, (i+1)/n)``, the last one closed); empty bins have
    ``nan`` means and count 0.
    """
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    labels, probs = _check_probs(y, p)
    idx = np.minimum((probs * n_bins).astype(np.int64), n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins).astype(np.int64)
    sum_p = np.bincount(idx, weights=probs, minlength=n_bins)
    sum_y = np.bincount(idx, weights=labels.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(counts > 0, sum_p / np.maximum(counts, 1), np.nan)
        frac = np.where(counts > 0, sum_y / np.maximum(counts, 1), np.nan)
    return mean_p.astype(np.float64), frac.astype(np.float64), counts


def ece(y: npt.ArrayLike, p: npt.ArrayLike, n_bins: int = 10) -> float:
    """Expected calibration error: count-weighted mean ``|fraction_positive - mean_predicted|``.

    ``nan`` for an empty sample.
    """
    mean_p, frac, counts = reliability_curve(y, p, n_bins)
    total = int(counts.sum())
    if total == 0:
        return math.nan
    used = counts > 0
    return float(np.sum(counts[used] * np.abs(frac[used] - mean_p[used])) / total)


def brier_score(y: npt.ArrayLike, p: npt.ArrayLike) -> float:
    """Mean squared error of probabilities against 0/1 labels; ``nan`` for an empty sample."""
    labels, probs = _check_probs(y, p)
    if labels.size == 0:
        return math.nan
    return float(np.mean((probs - labels) ** 2))


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


# --------------------------------------------------------------------------- summary


def summarize(
    y_true: npt.ArrayLike, scores: npt.ArrayLike, *, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Headline metrics with bootstrap 95 % CIs.

    Returns ``{"n", "n_positive", "prevalence", "auc", "auc_ci95", "threshold"
    (0.5), "sensitivity", "sensitivity_ci95", "specificity", "specificity_ci95",
    "f1", "f1_ci95"}``; CIs are ``[lo, hi]`` lists and undefined values ``nan``.
    """
    y, s = _pair(y_true, scores)
    threshold = 0.5
    c = confusion_at(y, s, threshold)
    out: dict[str, Any] = {
        "n": int(y.size),
        "n_positive": int(y.sum()),
        "prevalence": _ratio(int(y.sum()), y.size),
        "auc": roc_auc(y, s),
        "auc_ci95": list(bootstrap_ci(y, s, roc_auc, n=n_boot, seed=seed)),
        "threshold": threshold,
    }
    for name in ("sensitivity", "specificity", "f1"):
        out[name] = getattr(c, name)
        out[f"{name}_ci95"] = list(bootstrap_ci(y, s, _metric_at(name, threshold), n=n_boot, seed=seed))
    return out


# --------------------------------------------------------------------------- plots


def _new_figure(width_in: float, height_in: float) -> Any:
    """A matplotlib Figure bound to the Agg (file-only) canvas; pyplot is never touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_roc(
    curves: Mapping[str, tuple[npt.ArrayLike, npt.ArrayLike]],
    path: str | os.PathLike[str],
    title: str = "ROC",
    operating_points: Mapping[str, tuple[float, float]] | None = None,
) -> None:
    """Write a PNG of one ROC curve per ``label -> (y, scores)``, AUC in the legend.

    ``operating_points`` maps a name to its ``(fpr, tpr)`` and is drawn as markers.
    """
    from matplotlib.figure import Figure

    fig: Figure = _new_figure(5.0, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")
    for label, (y, s) in curves.items():
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, linewidth=1.5, label=f"{label} (AUC {_fmt(roc_auc(y, s))})")
    for name, (x, t) in (operating_points or {}).items():
        ax.plot([x], [t], marker="o", linestyle="none", label=f"{name} ({_fmt(1 - x)} spec, {_fmt(t)} sens)")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("1 - specificity (false-positive rate)")
    ax.set_ylabel("sensitivity (true-positive rate)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png", dpi=100)


def plot_calibration(
    y: npt.ArrayLike,
    p: npt.ArrayLike,
    path: str | os.PathLike[str],
    n_bins: int = 10,
    title: str = "Calibration",
) -> None:
    """Write a PNG with a reliability diagram (with ECE) above a histogram of ``p``."""
    from matplotlib.figure import Figure

    mean_p, frac, _counts = reliability_curve(y, p, n_bins)
    probs = np.asarray(p, dtype=np.float64)
    fig: Figure = _new_figure(5.0, 6.0)
    ax, hx = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="perfect")
    used = np.isfinite(mean_p)
    ax.plot(mean_p[used], frac[used], marker="o", label=f"model (ECE {_fmt(ece(y, p, n_bins))})")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("fraction with pathology")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize="small")
    hx.hist(probs, bins=n_bins, range=(0.0, 1.0), color="0.4")
    hx.set_xlabel("predicted P(pathology)")
    hx.set_ylabel("count")
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png", dpi=100)


# --------------------------------------------------------------------------- model card


def _fmt(value: Any, digits: int = 3) -> str:
    """Format a number for humans; ``nan``/``None`` become ``n/a``."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        v = float(value)
        return "n/a" if not math.isfinite(v) else f"{v:.{digits}f}"
    return str(value)


def _fmt_ci(ci: Any) -> str:
    """Format a ``[lo, hi]`` interval, or ``n/a``."""
    if isinstance(ci, Sequence) and not isinstance(ci, str) and len(ci) == 2:
        lo, hi = _fmt(ci[0]), _fmt(ci[1])
        return "n/a" if "n/a" in (lo, hi) else f"[{lo}, {hi}]"
    return "n/a"


def _link(image: str, card_dir: Path) -> str:
    """Image path as written in the card: relative to the card when given absolute."""
    p = Path(image)
    if p.is_absolute():
        try:
            return Path(os.path.relpath(p, card_dir)).as_posix()
        except ValueError:  # another drive (Windows)
            return p.as_posix()
    return p.as_posix()


def write_model_card(
    path: str | os.PathLike[str],
    *,
    name: str,
    version: str,
    arch_text: str,
    input_size: Sequence[int] | str,
    metrics: Mapping[str, Any],
    operating_points: Mapping[str, Mapping[str, Any]],
    training_data: str,
    intended_use: str,
    limitations: Sequence[str],
    reproduce_command: str,
    roc_png: str | None,
    calibration_png: str | None,
    clinical_use: bool,
    notes: str = "",
) -> None:
    """Write a Markdown model card.

    ``metrics`` is typically :func:`summarize`'s output: every key ``k`` whose
    ``k + "_ci95"`` is also present gets its CI in the same row. ``operating_points``
    is :func:`evaluate_operating_points`'s output. Image paths are linked as given
    (absolute ones are made relative to the card's folder). When ``clinical_use``
    is False a "NOT FOR CLINICAL USE" banner heads the card. ``notes`` (Markdown, e.g.
    how the model was trained, what it reached against its goals) ends the card verbatim.
    """
    out = Path(path)
    size = input_size if isinstance(input_size, str) else " x ".join(str(int(v)) for v in input_size)
    lines: list[str] = [f"# Model card: {name} {version}", ""]
    if not clinical_use:
        lines += [
            "> **NOT FOR CLINICAL USE**",
            ">",
            "> Research/demo model. It has not been validated or approved for diagnosis,"
            " triage or any other clinical decision.",
            "",
        ]
    lines += [
        "## Model",
        "",
        f"- Name: {name}",
        f"- Version: {version}",
        f"- Architecture: {arch_text}",
        f"- Input size: {size}",
        f"- Clinical use: {'yes' if clinical_use else 'NO'}",
        "",
        "## Intended use",
        "",
        intended_use,
        "",
        "## Training data",
        "",
        training_data,
        "",
        "## Metrics",
        "",
        "| Metric | Value | 95% CI |",
        "|---|---|---|",
    ]
    for key, value in metrics.items():
        if key.endswith("_ci95"):
            continue
        ci = metrics.get(f"{key}_ci95")
        lines.append(f"| {key} | {_fmt(value)} | {_fmt_ci(ci) if ci is not None else ''} |")
    lines += ["", "## Operating points", ""]
    if operating_points:
        lines += [
            "| Name | Threshold | Sensitivity (95% CI) | Specificity (95% CI) | PPV | NPV | F1 | n |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for op_name, op in operating_points.items():
            lines.append(
                f"| {op_name} | {_fmt(op.get('threshold'), 4)}"
                f" | {_fmt(op.get('sensitivity'))} {_fmt_ci(op.get('sensitivity_ci95'))}"
                f" | {_fmt(op.get('specificity'))} {_fmt_ci(op.get('specificity_ci95'))}"
                f" | {_fmt(op.get('ppv'))} | {_fmt(op.get('npv'))} | {_fmt(op.get('f1'))}"
                f" | {_fmt(op.get('n'))} |"
            )
    else:
        lines.append("None selected.")
    lines.append("")
    if roc_png:
        lines += ["## ROC curve", "", f"![ROC curve]({_link(roc_png, out.parent)})", ""]
    if calibration_png:
        lines += ["## Calibration", "", f"![Calibration]({_link(calibration_png, out.parent)})", ""]
    lines += ["## Limitations", ""]
    lines += [f"- {item}" for item in limitations] or ["- None stated."]
    lines += ["", "## Reproduce", "", "```bash", reproduce_command, "```", ""]
    if notes.strip():
        lines += [notes.strip(), ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines), encoding="utf-8")
