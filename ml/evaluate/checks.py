"""Array types and the input checks every metric shares.

Malformed input (labels other than 0/1, non-finite scores, mismatched lengths) raises
:class:`ValueError`; an empty denominator gives ``nan`` (:func:`ratio`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
MetricFn = Callable[[IntArray, FloatArray], float]


def as_labels(y_true: npt.ArrayLike) -> IntArray:
    """Return ``y_true`` as a 1-D int64 array of 0/1, or raise ``ValueError``."""
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    if y.size and not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 (normal) or 1 (pathology)")
    return y.astype(np.int64)


def as_scores(scores: npt.ArrayLike, n: int | None = None) -> FloatArray:
    """Return ``scores`` as a 1-D finite float64 array (of length ``n`` if given)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {s.shape}")
    if n is not None and s.size != n:
        raise ValueError(f"labels and scores differ in length ({n} vs {s.size})")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    return s


def labels_and_scores(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> tuple[IntArray, FloatArray]:
    """Validate labels and scores together."""
    y = as_labels(y_true)
    return y, as_scores(scores, y.size)


def ratio(num: float, den: float) -> float:
    """``num / den``, or ``nan`` when the denominator is zero."""
    return float(num) / float(den) if den else math.nan
