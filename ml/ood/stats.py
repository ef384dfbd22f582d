"""OOD statistics that travel with a model's weights: fitting, scoring, the file format.

A fitted :class:`OODStats` holds one method (see :data:`~ml.ood.scores.OOD_METHODS`),
its parameters (for ``mahalanobis`` the class means and shared precision of the
pooled penultimate features) and the threshold above which a study is flagged.

Fitting (:func:`fit_ood`) splits the in-distribution corpus in two, seeded:
the statistics are fitted on one part and the threshold is set on the other,
held-out part so that it keeps ``keep`` (default 95 %) of held-out studies;
``in_distribution_rate`` is the share of held-out studies that were kept.

File format: an ``.npz`` written with :func:`numpy.savez` (no pickled objects,
read with ``allow_pickle=False``) holding ``meta`` (a JSON string) and, for
``mahalanobis``, ``means`` [K, C] and ``precision`` [C, C]. The weights manifest
records the file's sha256; :meth:`OODStats.load` checks it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ml.ood.scores import (
    OOD_METHODS,
    GaussianFeatureModel,
    energy_score,
    msp_score,
    threshold_keeping,
)

__all__ = ["OODStats", "fit_ood", "held_out_split"]

FloatArray = npt.NDArray[np.float64]
FORMAT_VERSION = 1


@dataclass(frozen=True)
class OODStats:
    """A fitted OOD detector.

    Attributes:
        method: one of :data:`~ml.ood.scores.OOD_METHODS`.
        threshold: a study is flagged when its score is ``> threshold``.
        fitted_on: free text naming the corpus (e.g. ``"tuning corpus"``).
        n: number of studies used (fit + held-out).
        in_distribution_rate: share of held-out in-distribution studies kept, in [0, 1].
        temperature: logit temperature for ``msp`` and ``energy`` (1 = raw logits).
        gaussian: class means and precision (``mahalanobis`` only).
    """

    method: str
    threshold: float
    fitted_on: str
    n: int
    in_distribution_rate: float
    temperature: float = 1.0
    gaussian: GaussianFeatureModel | None = None

    def __post_init__(self) -> None:
        if self.method not in OOD_METHODS:
            raise ValueError(f"unknown OOD method {self.method!r}; choose from {OOD_METHODS}")
        if self.method == "mahalanobis" and self.gaussian is None:
            raise ValueError("the mahalanobis method needs its Gaussian feature statistics")
        if not np.isfinite(self.threshold):
            raise ValueError("OOD threshold must be finite")
        if not 0.0 <= self.in_distribution_rate <= 1.0:
            raise ValueError("in_distribution_rate must be in [0, 1]")
        if not self.temperature > 0:
            raise ValueError("temperature must be positive")

    def scores(self, features: npt.ArrayLike, logits: npt.ArrayLike) -> FloatArray:
        """OOD scores (higher = less familiar) for pooled features [N, C] and logits [N, K]."""
        if self.method == "mahalanobis":
            assert self.gaussian is not None
            return self.gaussian.score(features)
        if self.method == "energy":
            return energy_score(logits, self.temperature)
        return msp_score(logits, self.temperature)

    def flags(self, scores: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """True where a score exceeds the threshold."""
        out: npt.NDArray[np.bool_] = np.asarray(scores, dtype=np.float64) > self.threshold
        return out

    def meta(self) -> dict[str, Any]:
        """The manifest-facing summary (no arrays)."""
        return {
            "method": self.method,
            "threshold": self.threshold,
            "fitted_on": self.fitted_on,
            "n": self.n,
            "in_distribution_rate": self.in_distribution_rate,
        }

    # ------------------------------------------------------------------ file
    def to_bytes(self) -> bytes:
        """The ``.npz`` file content."""
        meta = {**self.meta(), "format_version": FORMAT_VERSION, "temperature": self.temperature}
        arrays: dict[str, Any] = {"meta": np.array(json.dumps(meta, sort_keys=True))}
        if self.gaussian is not None:
            arrays["means"] = self.gaussian.means
            arrays["precision"] = self.gaussian.precision
            arrays["shrinkage"] = np.array(self.gaussian.shrinkage)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    def save(self, path: str | Path) -> str:
        """Write the file; returns its sha256 (hex) for the manifest."""
        data = self.to_bytes()
        Path(path).write_bytes(data)
        return hashlib.sha256(data).hexdigest()

    @classmethod
    def from_bytes(cls, data: bytes) -> OODStats:
        """Parse a file written by :meth:`to_bytes` (ValueError on anything else)."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                gaussian = None
                if "means" in z.files:
                    gaussian = GaussianFeatureModel(
                        means=np.asarray(z["means"], dtype=np.float64),
                        precision=np.asarray(z["precision"], dtype=np.float64),
                        shrinkage=float(z["shrinkage"]),
                    )
        except (OSError, KeyError, EOFError, json.JSONDecodeError) as e:
            raise ValueError(f"not an OOD statistics file: {type(e).__name__}: {e}") from e
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported OOD statistics format {meta.get('format_version')!r}")
        return cls(
            method=str(meta["method"]),
            threshold=float(meta["threshold"]),
            fitted_on=str(meta["fitted_on"]),
            n=int(meta["n"]),
            in_distribution_rate=float(meta["in_distribution_rate"]),
            temperature=float(meta.get("temperature", 1.0)),
            gaussian=gaussian,
        )

    @classmethod
    def load(cls, path: str | Path, sha256: str | None = None) -> OODStats:
        """Read ``path``; when ``sha256`` is given the file must match it (ValueError otherwise)."""
        data = Path(path).read_bytes()
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256.lower():
            raise ValueError(f"OOD statistics {Path(path).name} do not match the manifest's sha256")
        return cls.from_bytes(data)


def held_out_split(
    n: int, held_out_fraction: float = 0.3, seed: int = 0
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Seeded (fit, held-out) index arrays over ``n`` studies; both non-empty for n ≥ 4."""
    if n < 4:
        raise ValueError(f"need at least 4 studies to fit and hold out, got {n}")
    if not 0.0 < held_out_fraction < 1.0:
        raise ValueError("held_out_fraction must be in (0, 1)")
    perm = np.random.default_rng(seed).permutation(n)
    k = min(max(round(n * held_out_fraction), 2), n - 2)
    return np.sort(perm[k:]), np.sort(perm[:k])


def fit_ood(
    features: npt.ArrayLike,
    logits: npt.ArrayLike,
    labels: npt.ArrayLike | None = None,
    *,
    method: str = OOD_METHODS[0],
    fitted_on: str = "",
    keep: float = 0.95,
    held_out_fraction: float = 0.3,
    temperature: float = 1.0,
    seed: int = 0,
) -> OODStats:
    """Fit ``method`` on in-distribution studies and set its threshold on a held-out part.

    Args:
        features: pooled penultimate features [N, C] of in-distribution studies.
        logits: the model's logits [N, K] for the same studies.
        labels: class per study (0 normal, 1 pathology) or None (unlabelled corpus:
            one Gaussian for ``mahalanobis``; the other methods ignore labels).
        keep: share of held-out in-distribution studies the threshold keeps.
    """
    f = np.asarray(features, dtype=np.float64)
    z = np.asarray(logits, dtype=np.float64)
    if f.ndim != 2 or z.ndim != 2 or len(f) != len(z):
        raise ValueError(f"features [N, C] and logits [N, K] must have the same N: {f.shape} vs {z.shape}")
    y = None if labels is None else np.asarray(labels, dtype=np.int64)
    fit_idx, held_idx = held_out_split(len(f), held_out_fraction, seed)
    gaussian = None
    if method == "mahalanobis":
        try:
            gaussian = GaussianFeatureModel.fit(f[fit_idx], None if y is None else y[fit_idx])
        except ValueError:
            if y is None:
                raise
            gaussian = GaussianFeatureModel.fit(f[fit_idx], None)  # too few of a class: one Gaussian
    probe = OODStats(
        method=method,
        threshold=0.0,
        fitted_on=fitted_on,
        n=len(f),
        in_distribution_rate=1.0,
        temperature=temperature,
        gaussian=gaussian,
    )
    held_scores = probe.scores(f[held_idx], z[held_idx])
    threshold = threshold_keeping(held_scores, keep)
    rate = float(np.mean(held_scores <= threshold))
    return dataclasses.replace(probe, threshold=threshold, in_distribution_rate=rate)
