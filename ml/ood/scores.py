"""Out-of-distribution scores computed from a classifier's own outputs (NumPy only).

Every score here is oriented the same way: **higher means less like the data the
model was fitted on**. A study is flagged when its score exceeds a threshold
chosen on held-out in-distribution studies (:func:`threshold_keeping`).

Methods (all generic: they need only the logits and/or the pooled penultimate
features of the network, never DICOM tags or file names):

``msp``
    Maximum softmax probability baseline (Hendrycks & Gimpel, 2017): the score
    is ``1 - max_k softmax(logits / T)_k``.
``energy``
    Energy score (Liu et al., 2020): ``-T · logsumexp(logits / T)``. In-distribution
    inputs get lower energy (larger logits).
``mahalanobis``
    Class-conditional Gaussian with a shared (tied) covariance on the pooled
    penultimate features (Lee et al., 2018): the score is the smallest squared
    Mahalanobis distance to a class mean. The covariance is shrunk towards a
    scaled identity with the Ledoit–Wolf (2004) coefficient, because feature
    dimensions (hundreds) are of the order of the number of studies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "OOD_METHODS",
    "GaussianFeatureModel",
    "energy_score",
    "ledoit_wolf_covariance",
    "msp_score",
    "threshold_keeping",
]

FloatArray = npt.NDArray[np.float64]

OOD_METHODS: tuple[str, ...] = ("mahalanobis", "energy", "msp")
"""Supported OOD scoring methods; the first is the default."""


def _logits(logits: npt.ArrayLike) -> FloatArray:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 1:
        raise ValueError(f"logits must be [N, K], got shape {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("logits must be finite")
    return z


def _logsumexp(z: FloatArray) -> FloatArray:
    m = z.max(axis=1, keepdims=True)
    out: FloatArray = (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]
    return out


def msp_score(logits: npt.ArrayLike, temperature: float = 1.0) -> FloatArray:
    """``1 - max softmax(logits / T)`` per row, in [0, 1 - 1/K]; logits [N, K]."""
    if not temperature > 0:
        raise ValueError("temperature must be positive")
    z = _logits(logits) / temperature
    p_max = np.exp(z.max(axis=1) - _logsumexp(z))
    out: FloatArray = 1.0 - p_max
    return out


def energy_score(logits: npt.ArrayLike, temperature: float = 1.0) -> FloatArray:
    """Energy ``-T · logsumexp(logits / T)`` per row (higher = more out-of-distribution)."""
    if not temperature > 0:
        raise ValueError("temperature must be positive")
    z = _logits(logits)
    out: FloatArray = -temperature * _logsumexp(z / temperature)
    return out


def ledoit_wolf_covariance(centred: npt.ArrayLike) -> tuple[FloatArray, float]:
    """Shrunk covariance of already centred rows ``[N, C]`` and the shrinkage used, in [0, 1].

    ``Σ = (1 - s)·S + s·μ·I`` with ``S = XᵀX / N``, ``μ = tr(S) / C`` and the
    Ledoit–Wolf estimate of ``s`` (the one that minimises the expected
    Frobenius error).
    """
    x = np.asarray(centred, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need at least 2 rows of features, got shape {x.shape}")
    n, c = x.shape
    s = x.T @ x / n
    mu = float(np.trace(s)) / c
    delta = float(((s - mu * np.eye(c)) ** 2).sum()) / c
    x2 = x**2
    beta_raw = float((x2.T @ x2).sum() / n - (s**2).sum()) / (c * n)
    shrink = 0.0 if delta <= 0 else min(max(beta_raw, 0.0), delta) / delta
    cov: FloatArray = (1.0 - shrink) * s + shrink * mu * np.eye(c)
    return cov, shrink


@dataclass(frozen=True)
class GaussianFeatureModel:
    """Class means and a shared precision matrix over pooled features.

    Attributes:
        means: [K, C] class means (K = 1 when fitted without labels).
        precision: [C, C] inverse of the shrunk shared covariance.
        shrinkage: the Ledoit–Wolf coefficient used, in [0, 1].
    """

    means: FloatArray
    precision: FloatArray
    shrinkage: float = 0.0

    def __post_init__(self) -> None:
        if self.means.ndim != 2 or self.precision.shape != (self.means.shape[1], self.means.shape[1]):
            raise ValueError(
                f"means [K, C] and precision [C, C] disagree: {self.means.shape} vs {self.precision.shape}"
            )
        if not (np.isfinite(self.means).all() and np.isfinite(self.precision).all()):
            raise ValueError("Gaussian feature statistics must be finite")

    @property
    def dim(self) -> int:
        """Feature dimension C."""
        return int(self.means.shape[1])

    @classmethod
    def fit(
        cls, features: npt.ArrayLike, labels: Sequence[int] | npt.ArrayLike | None = None
    ) -> GaussianFeatureModel:
        """Fit on features [N, C]; ``labels`` (one class id per row) or None for one Gaussian.

        Classes with fewer than two members are refused (their mean would be a single study).
        """
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or f.shape[0] < 2 or not np.isfinite(f).all():
            raise ValueError(f"features must be finite [N >= 2, C], got shape {f.shape}")
        y = np.zeros(len(f), dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
        if y.shape != (len(f),):
            raise ValueError("one label per feature row is required")
        classes = np.unique(y)
        means = []
        centred = np.empty_like(f)
        for k in classes:
            sel = y == k
            if int(sel.sum()) < 2:
                raise ValueError(f"class {int(k)} has fewer than 2 studies")
            mu = f[sel].mean(axis=0)
            means.append(mu)
            centred[sel] = f[sel] - mu
        cov, shrink = ledoit_wolf_covariance(centred)
        precision = np.asarray(np.linalg.pinv(cov, hermitian=True), dtype=np.float64)
        return cls(means=np.stack(means), precision=precision, shrinkage=shrink)

    def score(self, features: npt.ArrayLike) -> FloatArray:
        """Smallest squared Mahalanobis distance to a class mean, per row of ``features`` [N, C]."""
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise ValueError(f"features must be [N, {self.dim}], got shape {f.shape}")
        d = f[:, None, :] - self.means[None, :, :]  # [N, K, C]
        m = np.einsum("nkc,cd,nkd->nk", d, self.precision, d)
        out: FloatArray = np.maximum(m.min(axis=1), 0.0)
        return out


def threshold_keeping(in_distribution_scores: npt.ArrayLike, keep: float = 0.95) -> float:
    """The score threshold that keeps (does not flag) ``keep`` of the given in-distribution scores.

    A study is flagged when its score is strictly greater than the threshold, so
    the returned value is the ``keep`` quantile (the higher of the two order
    statistics around it: at least ``keep`` of the scores are ``<=`` it).
    """
    s = np.sort(np.asarray(in_distribution_scores, dtype=np.float64).ravel())
    if s.size == 0 or not np.isfinite(s).all():
        raise ValueError("need at least one finite in-distribution score")
    if not 0.0 < keep <= 1.0:
        raise ValueError("keep must be in (0, 1]")
    idx = min(int(np.ceil(keep * s.size)) - 1, s.size - 1)
    return float(s[max(idx, 0)])
