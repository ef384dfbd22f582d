"""Drift monitoring: what a finished job contributes, and the gauges read from PostgreSQL.

The worker stores one observation per succeeded predict job (:func:`observation`: the
probability, the OOD check, the indeterminate label and four header properties of the
selected series — slice thickness and coverage in mm, kernel, manufacturer; free text that
carries one of the study's identifiers is withheld, as in the model's reference). The API's
metrics port exports, per model of the manifest, over the window (``drift_window_jobs`` most
recent jobs, of the last ``drift_window_hours`` when set):

- ``s4ct_drift_psi{model,signal}``: population stability index of each signal against the
  model's reference (``metrics.drift_reference`` of its manifest entry,
  :mod:`ml.evaluate.drift`), once the window holds ``drift_min_jobs`` jobs;
- ``s4ct_ood_flag_rate{model}``, ``s4ct_indeterminate_rate{model}``: shares of the window;
- ``s4ct_drift_window_jobs{model}``: jobs in the window;
- ``s4ct_drift_threshold{kind}``: the settings' thresholds, so that the alert rules follow them;
- ``s4ct_shadow_agreement{model,shadow}``: share of the ``drift_window_jobs`` most recent jobs
  both answered where the shadow's label equals the primary's (``s4ct_shadow_window_jobs``: how
  many), for each shadow model of the manifest (:mod:`app.worker.shadow`).

Cost: one bounded query per model (``LIMIT drift_window_jobs`` on an index), at most every
``drift_refresh_s``; scrapes in between reuse the last figures.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from app.config import Settings
from app.db import Database
from app.logs import logger
from app.repository.drift import drift_window, recent_shadow_agreement
from app.schemas import JobResult
from ml.evaluate.drift import CATEGORICAL_SIGNALS, NUMERIC_SIGNALS, DriftReference, window_psi
from ml.model import Manifest

__all__ = ["DriftCollector", "DriftFigures", "drift_families", "observation", "window_figures"]


def observation(result: JobResult, header: Mapping[str, Any]) -> dict[str, Any]:
    """The drift observation of a succeeded job (columns of :data:`app.repository.drift.DRIFT_COLUMNS`);
    ``header``: the selected series' :func:`ml.evaluate.drift.header_signals`."""
    return {
        "model": result.model.name,
        "probability": result.probability,
        "ood_score": None if result.ood is None else result.ood.score,
        "ood_flagged": None if result.ood is None else result.ood.flagged,
        "indeterminate": result.label == "indeterminate",
        **{k: header.get(k) for k in ("slice_thickness_mm", "coverage_mm", "kernel", "manufacturer")},
    }


@dataclass
class DriftFigures:
    """The window figures of one model."""

    jobs: int = 0
    psi: dict[str, float] = field(default_factory=dict)
    ood_flag_rate: float | None = None
    indeterminate_rate: float | None = None
    #: shadow model name → (jobs both answered in the window, of which the labels agree)
    shadows: dict[str, tuple[int, int]] = field(default_factory=dict)


def window_figures(
    rows: list[dict[str, Any]], reference: DriftReference | None, min_jobs: int
) -> DriftFigures:
    """PSI per signal and the rates of a window of observation rows."""
    out = DriftFigures(jobs=len(rows))
    if not rows:
        return out
    flagged = [r["ood_flagged"] for r in rows if r["ood_flagged"] is not None]
    out.ood_flag_rate = sum(flagged) / len(flagged) if flagged else None
    out.indeterminate_rate = sum(bool(r["indeterminate"]) for r in rows) / len(rows)
    if reference is not None and len(rows) >= min_jobs:
        numeric = {k: [r[k] for r in rows] for k in NUMERIC_SIGNALS}
        categorical = {k: [r[k] for r in rows] for k in CATEGORICAL_SIGNALS}
        out.psi = window_psi(reference, numeric, categorical, min_values=min_jobs)
    return out


def _reference(manifest: Manifest, name: str) -> DriftReference | None:
    raw = manifest.entries[name].metrics.get("drift_reference")
    if not isinstance(raw, Mapping):
        return None
    try:
        return DriftReference.from_dict(raw)
    except (KeyError, TypeError, ValueError):
        logger.warning("model {}: its drift_reference cannot be read; no PSI", name)
        return None


class DriftCollector(Collector):
    """The drift gauges of every manifest model that is not a shadow (read at scrape time, cached)."""

    def __init__(self, db: Database, manifest: Manifest, settings: Settings) -> None:
        self.db, self.manifest, self.s = db, manifest, settings
        self.models = [n for n, e in sorted(manifest.entries.items()) if e.shadow_of is None]
        self.shadows = {n: [e.name for e in manifest.shadows_of(n)] for n in self.models}
        self.references = {n: _reference(manifest, n) for n in self.models}
        self._lock = threading.Lock()
        self._at = -float("inf")
        self._figures: dict[str, DriftFigures] = {}

    def figures(self) -> dict[str, DriftFigures]:
        """Per model, recomputed when older than ``drift_refresh_s``."""
        with self._lock:
            if time.monotonic() - self._at >= self.s.drift_refresh_s:
                out: dict[str, DriftFigures] = {}
                with self.db.conn() as conn:
                    for name in self.models:
                        rows = drift_window(conn, name, self.s.drift_window_jobs, self.s.drift_window_hours)
                        f = window_figures(rows, self.references[name], self.s.drift_min_jobs)
                        for shadow in self.shadows[name]:
                            f.shadows[shadow] = recent_shadow_agreement(
                                conn, name, shadow, self.s.drift_window_jobs
                            )
                        out[name] = f
                self._figures, self._at = out, time.monotonic()
            return self._figures

    def collect(self) -> Iterator[Any]:
        try:
            figures = self.figures()
        except Exception as e:  # PostgreSQL down: the thresholds only, this scrape
            logger.warning("drift gauges not computed ({})", type(e).__name__)
            figures = {}
        yield from drift_families(figures, self.s)


def drift_families(figures: Mapping[str, DriftFigures], s: Settings) -> list[GaugeMetricFamily]:
    """The drift gauges of ``figures`` (model → window figures) and the settings' thresholds."""
    thresholds = GaugeMetricFamily(
        "s4ct_drift_threshold", "Drift alert thresholds from the settings", labels=["kind"]
    )
    for kind, value in (
        ("psi_warn", s.drift_psi_warn),
        ("psi_alert", s.drift_psi_alert),
        ("ood_rate", s.drift_ood_rate_alert),
        ("indeterminate_rate", s.drift_indeterminate_rate_alert),
    ):
        thresholds.add_metric([kind], value)
    psi = GaugeMetricFamily(
        "s4ct_drift_psi",
        "Population stability index of a signal over the drift window vs the model's reference",
        labels=["model", "signal"],
    )
    jobs = GaugeMetricFamily("s4ct_drift_window_jobs", "Jobs in the drift window", labels=["model"])
    ood = GaugeMetricFamily(
        "s4ct_ood_flag_rate", "Share of the drift window flagged out-of-distribution", labels=["model"]
    )
    ind = GaugeMetricFamily(
        "s4ct_indeterminate_rate", "Share of the drift window labelled indeterminate", labels=["model"]
    )
    agreement = GaugeMetricFamily(
        "s4ct_shadow_agreement",
        "Share of recent jobs where a shadow model's label equals its primary's",
        labels=["model", "shadow"],
    )
    shadow_jobs = GaugeMetricFamily(
        "s4ct_shadow_window_jobs",
        "Recent jobs both a primary and its shadow answered",
        labels=["model", "shadow"],
    )
    for name, f in figures.items():
        for shadow, (n, agree) in sorted(f.shadows.items()):
            shadow_jobs.add_metric([name, shadow], n)
            if n:
                agreement.add_metric([name, shadow], agree / n)
        jobs.add_metric([name], f.jobs)
        for signal, value in sorted(f.psi.items()):
            psi.add_metric([name, signal], value)
        if f.ood_flag_rate is not None:
            ood.add_metric([name], f.ood_flag_rate)
        if f.indeterminate_rate is not None:
            ind.add_metric([name], f.indeterminate_rate)
    return [thresholds, psi, jobs, ood, ind, agreement, shadow_jobs]
