"""Population stability index (PSI) of a model's inputs and outputs against a reference.

The reference is the distribution of each *signal* on the model card's test corpus,
binned once (:func:`build_reference`) and stored with the model (the manifest entry's
``metrics["drift_reference"]``, :meth:`DriftReference.to_dict`). A window of live
studies is binned with the *same* bins and compared per signal:

    PSI = Σ_i (a_i − e_i) · ln(a_i / e_i)

with ``e_i`` the reference share and ``a_i`` the window share of bin ``i``. A share of 0
(an empty bin) is replaced by :data:`EPSILON` before the sum, so that a bin the
reference never saw contributes a large but finite term. Common reading: < 0.1 stable,
0.1–0.25 moderate shift, > 0.25 major shift.

Signals (units):

- numeric: ``probability`` (calibrated probability of pathology, fixed bins of 0.1),
  ``ood_score`` (the model's OOD score, unitless), ``slice_thickness_mm`` and
  ``coverage_mm`` (extent of the selected series along the slice normal, mm) — bins are
  the reference's deciles (repeated edges merged), open at both ends;
- categorical: ``kernel`` (ConvolutionKernel) and ``manufacturer``: the reference's
  categories (at most ``max_categories``, the most frequent) plus ``other`` for the rest.

Missing values (a header without SliceThickness, a model without OOD statistics) are
left out of both distributions. Pure: numpy only, no I/O.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "CATEGORICAL_SIGNALS",
    "EPSILON",
    "NUMERIC_SIGNALS",
    "OTHER",
    "WITHHELD",
    "CategoricalBins",
    "DriftReference",
    "NumericBins",
    "build_reference",
    "header_signals",
    "psi",
    "window_psi",
]

#: share used in place of an empty bin's 0 (reference or window) in the PSI sum
EPSILON = 1e-4
#: the categorical bin of every value the reference did not list
OTHER = "other"
NUMERIC_SIGNALS = ("probability", "ood_score", "slice_thickness_mm", "coverage_mm")
CATEGORICAL_SIGNALS = ("kernel", "manufacturer")
#: a kernel or manufacturer text that carries one of the study's identifiers
WITHHELD = "[withheld]"
#: longest kept kernel / manufacturer text (characters)
MAX_TEXT = 64
#: fixed probability bin edges (interior cut points): ten bins of 0.1
PROBABILITY_EDGES = tuple(round(0.1 * i, 1) for i in range(1, 10))


def header_signals(summary: Mapping[str, Any], phi_tokens: Iterable[str]) -> dict[str, Any]:
    """The input-property signals of a series summary (:meth:`ml.io.series.SeriesInfo.summary`).

    ``slice_thickness_mm`` and ``coverage_mm`` (mm, None when absent); ``kernel`` and
    ``manufacturer`` (None when empty, cut to :data:`MAX_TEXT` characters, :data:`WITHHELD` when
    one of the study's identifier tokens appears in them, as the series picker does).
    """
    tokens = [t.upper() for t in phi_tokens if t]

    def text(value: Any) -> str | None:
        if not isinstance(value, str) or not value.strip():
            return None
        v = value.strip()[:MAX_TEXT]
        return WITHHELD if any(t in v.upper() for t in tokens) else v

    def number(value: Any) -> float | None:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        return float(value) if ok else None

    return {
        "slice_thickness_mm": number(summary.get("slice_thickness_mm")),
        "coverage_mm": number(summary.get("coverage_mm")),
        "kernel": text(summary.get("kernel")),
        "manufacturer": text(summary.get("manufacturer")),
    }


def psi(expected: Sequence[float], actual: Sequence[float], eps: float = EPSILON) -> float:
    """PSI of two share vectors over the same bins (each sums to 1; 0 shares become ``eps``)."""
    if len(expected) != len(actual) or not expected:
        raise ValueError("expected and actual need the same, non-zero number of bins")
    e = np.maximum(np.asarray(expected, dtype=np.float64), eps)
    a = np.maximum(np.asarray(actual, dtype=np.float64), eps)
    return float(np.sum((a - e) * np.log(a / e)))


def _shares(counts: Sequence[int]) -> tuple[float, ...]:
    total = sum(counts)
    if total == 0:
        raise ValueError("no values to bin")
    return tuple(c / total for c in counts)


@dataclass(frozen=True)
class NumericBins:
    """Bins ``(-inf, e0], (e0, e1], …, (e_last, inf)`` and the reference share of each."""

    edges: tuple[float, ...]
    shares: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.shares) != len(self.edges) + 1:
            raise ValueError("a numeric reference needs one more share than edges")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("bin edges must increase strictly")

    def counts(self, values: Iterable[float]) -> list[int]:
        """How many of ``values`` fall in each bin (non-finite values are left out)."""
        v = np.asarray([x for x in values if math.isfinite(x)], dtype=np.float64)
        idx = np.searchsorted(np.asarray(self.edges, dtype=np.float64), v, side="left")
        return [int(c) for c in np.bincount(idx, minlength=len(self.shares))]


@dataclass(frozen=True)
class CategoricalBins:
    """The reference's categories plus :data:`OTHER` (last), and the reference share of each."""

    categories: tuple[str, ...]
    shares: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.shares) != len(self.categories) + 1:
            raise ValueError("a categorical reference needs one share per category plus 'other'")

    def counts(self, values: Iterable[str]) -> list[int]:
        index = {c: i for i, c in enumerate(self.categories)}
        out = [0] * (len(self.categories) + 1)
        for v in values:
            out[index.get(v, len(self.categories))] += 1
        return out


@dataclass(frozen=True)
class DriftReference:
    """Binned reference distributions of one model (``n`` studies of ``fitted_on``)."""

    fitted_on: str
    n: int
    numeric: dict[str, NumericBins]
    categorical: dict[str, CategoricalBins]

    @property
    def signals(self) -> tuple[str, ...]:
        return (*self.numeric, *self.categorical)

    def to_dict(self) -> dict[str, Any]:
        return {
            "fitted_on": self.fitted_on,
            "n": self.n,
            "epsilon": EPSILON,
            "numeric": {
                k: {"edges": list(b.edges), "shares": list(b.shares)} for k, b in self.numeric.items()
            },
            "categorical": {
                k: {"categories": list(b.categories), "shares": list(b.shares)}
                for k, b in self.categorical.items()
            },
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DriftReference:
        return cls(
            fitted_on=str(d["fitted_on"]),
            n=int(d["n"]),
            numeric={
                str(k): NumericBins(tuple(float(x) for x in v["edges"]), tuple(float(x) for x in v["shares"]))
                for k, v in d.get("numeric", {}).items()
            },
            categorical={
                str(k): CategoricalBins(
                    tuple(str(x) for x in v["categories"]), tuple(float(x) for x in v["shares"])
                )
                for k, v in d.get("categorical", {}).items()
            },
        )


def _quantile_edges(values: np.ndarray, n_bins: int) -> tuple[float, ...]:
    qs = np.quantile(values, np.linspace(0, 1, n_bins + 1)[1:-1])
    edges: list[float] = []
    for q in (float(x) for x in qs):
        if not edges or q > edges[-1]:
            edges.append(q)
    return tuple(edges)


def build_reference(
    numeric: Mapping[str, Sequence[float | None]],
    categorical: Mapping[str, Sequence[str | None]],
    *,
    fitted_on: str,
    n_bins: int = 10,
    max_categories: int = 8,
) -> DriftReference:
    """Bin the reference corpus: one value per study and signal (None = missing).

    ``probability`` gets :data:`PROBABILITY_EDGES`; other numeric signals their deciles
    (``n_bins`` quantile bins, repeated edges merged: a constant signal has one edge, two
    bins). A signal without any value is left out.
    """
    n = max([len(v) for v in (*numeric.values(), *categorical.values())], default=0)
    nums: dict[str, NumericBins] = {}
    for name, raw in numeric.items():
        v = np.asarray([x for x in raw if x is not None and math.isfinite(x)], dtype=np.float64)
        if v.size == 0:
            continue
        edges = PROBABILITY_EDGES if name == "probability" else _quantile_edges(v, n_bins)
        if not edges:  # cannot happen with n_bins >= 2; keeps a single value's bins well defined
            edges = (float(v[0]),)
        counts = NumericBins(edges, (0.0,) * (len(edges) + 1)).counts(v.tolist())
        nums[name] = NumericBins(edges, _shares(counts))
    cats: dict[str, CategoricalBins] = {}
    for name, craw in categorical.items():
        present = [x for x in craw if x is not None]
        if not present:
            continue
        top = tuple(c for c, _ in Counter(present).most_common(max_categories))
        empty = CategoricalBins(top, (0.0,) * (len(top) + 1))
        cats[name] = CategoricalBins(top, _shares(empty.counts(present)))
    return DriftReference(fitted_on=fitted_on, n=n, numeric=nums, categorical=cats)


def window_psi(
    reference: DriftReference,
    numeric: Mapping[str, Sequence[float | None]],
    categorical: Mapping[str, Sequence[str | None]],
    *,
    min_values: int = 1,
    eps: float = EPSILON,
) -> dict[str, float]:
    """PSI per signal of a window against ``reference``; signals with fewer than ``min_values``
    values in the window (or absent from the reference) are left out."""
    out: dict[str, float] = {}
    for name, bins in reference.numeric.items():
        nv = [x for x in numeric.get(name, ()) if x is not None and math.isfinite(x)]
        if len(nv) >= max(min_values, 1):
            out[name] = psi(bins.shares, _shares(bins.counts(nv)), eps)
    for name, cbins in reference.categorical.items():
        cv = [x for x in categorical.get(name, ()) if x is not None]
        if len(cv) >= max(min_values, 1):
            out[name] = psi(cbins.shares, _shares(cbins.counts(cv)), eps)
    return out
