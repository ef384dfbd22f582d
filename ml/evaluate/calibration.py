"""Calibration: temperature scaling of log-odds and how well probabilities match outcomes."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from ml.evaluate.checks import FloatArray, IntArray, as_labels, as_scores, labels_and_scores


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
    labels = as_labels(y)
    z = as_scores(logits_or_logodds, labels.size)
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
    labels, probs = labels_and_scores(y, p)
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
