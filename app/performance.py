"""Live performance of a model: its predictions against readers' feedback, in a time window.

:func:`model_figures` computes one model's figures from (probabilities, ground truths,
operating points) with ml.evaluate's recipe (AUC, rates at each threshold, stratified
percentile-bootstrap 95 % CIs with a fixed seed, ECE and reliability bins); it knows nothing of
the database, so any set of predictions (a shadow model's) can be measured the same way.
:func:`live_performance` reads a window's jobs, results and feedback and assembles the
:class:`~app.schemas_performance.Performance` answer, next to :func:`card_figures`.

The ground truth of a job is the majority of its readers' current answers; a tie goes to
the most recent current answer (the ``feedback_consensus`` view). Every succeeded prediction
with a ground truth counts, indeterminate ones included (their probability is still the
model's); the indeterminate rate is reported beside.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from app.db import Conn
from app.repository.drift import shadow_pairs
from app.schemas_performance import (
    CalibrationFigures,
    CardFigures,
    CardOperatingPoint,
    Estimate,
    ModelFigures,
    OperatingPointFigures,
    Performance,
    Rate,
    RefusalRate,
    ReliabilityBin,
    ShadowFigures,
)
from ml.evaluate import bootstrap_ci, brier_score, confusion_at, ece, reliability_curve, roc_auc
from ml.evaluate.metrics import metric_at
from ml.model.manifest import ModelEntry

__all__ = [
    "GROUND_TRUTH_RULE",
    "N_BINS",
    "N_BOOT",
    "SEED",
    "LiveData",
    "card_figures",
    "live_performance",
    "model_figures",
    "shadow_figures",
]

GROUND_TRUTH_RULE: Final = (
    "the majority of the readers' current answers; a tie goes to the most recent current answer"
)
#: bootstrap resamples, seed and reliability bins of every report
N_BOOT: Final = 1000
SEED: Final = 0
N_BINS: Final = 10
_RATES: Final = ("sensitivity", "specificity", "ppv", "npv")


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _ci(pair: tuple[float, float] | None) -> tuple[float, float] | None:
    if pair is None or not (math.isfinite(pair[0]) and math.isfinite(pair[1])):
        return None
    return float(pair[0]), float(pair[1])


def model_figures(
    probabilities: npt.ArrayLike,
    labels: npt.ArrayLike,
    operating_points: Mapping[str, float],
    *,
    n_boot: int = N_BOOT,
    seed: int = SEED,
    n_bins: int = N_BINS,
) -> ModelFigures:
    """One model's figures on ``probabilities`` (0–1) against ``labels`` (0 normal, 1 pathology).

    ``operating_points`` maps a name to its threshold (pathology when ``p >= threshold``).
    Every CI is ml.evaluate's stratified percentile bootstrap with ``n_boot`` resamples and
    ``seed``; undefined figures (no study of a class) are None.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    points: dict[str, OperatingPointFigures] = {}
    for name, threshold in operating_points.items():
        c = confusion_at(y, p, threshold)
        rates = {
            rate: Estimate(
                value=_finite(getattr(c, rate)),
                ci95=_ci(bootstrap_ci(y, p, metric_at(rate, threshold), n=n_boot, seed=seed)),
            )
            for rate in _RATES
        }
        points[name] = OperatingPointFigures(
            threshold=float(threshold), tp=c.tp, fp=c.fp, tn=c.tn, fn=c.fn, **rates
        )
    mean_p, frac, counts = reliability_curve(y, p, n_bins)
    bins = [
        ReliabilityBin(
            lower=i / n_bins,
            upper=(i + 1) / n_bins,
            count=int(counts[i]),
            mean_probability=_finite(float(mean_p[i])),
            fraction_pathology=_finite(float(frac[i])),
        )
        for i in range(n_bins)
    ]
    positives = int(y.sum())
    return ModelFigures(
        n=int(y.size),
        n_pathology=positives,
        prevalence=positives / y.size if y.size else None,
        auc=Estimate(
            value=_finite(roc_auc(y, p)), ci95=_ci(bootstrap_ci(y, p, roc_auc, n=n_boot, seed=seed))
        ),
        operating_points=points,
        calibration=CalibrationFigures(
            ece=_finite(ece(y, p, n_bins)), brier=_finite(brier_score(y, p)), bins=bins
        ),
    )


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def _pair(v: Any) -> tuple[float, float] | None:
    if isinstance(v, list | tuple) and len(v) == 2:
        lo, hi = _number(v[0]), _number(v[1])
        if lo is not None and hi is not None:
            return lo, hi
    return None


def card_figures(entry: ModelEntry) -> CardFigures:
    """The test figures of ``entry``'s card: ``metrics.test`` (else the top-level ``metrics``) and
    the operating points as the manifest publishes them."""
    metrics = entry.metrics
    test = metrics.get("test")
    section: Mapping[str, Any] = test if isinstance(test, dict) else metrics
    where = metrics.get("operating_points_evaluated_on") if isinstance(test, dict) else metrics.get("source")
    n = section.get("n")
    return CardFigures(
        evaluated_on=where if isinstance(where, str) else None,
        n=n if isinstance(n, int) and not isinstance(n, bool) else None,
        auc=Estimate(value=_number(section.get("auc")), ci95=_pair(section.get("auc_ci95"))),
        operating_points={
            name: CardOperatingPoint(
                threshold=op.threshold,
                sensitivity=Estimate(value=op.sensitivity, ci95=op.sensitivity_ci95),
                specificity=Estimate(value=op.specificity, ci95=op.specificity_ci95),
            )
            for name, op in entry.operating_points.items()
        },
    )


@dataclass(frozen=True)
class LiveData:
    """A report and the (probability, ground truth) pairs it was computed from (for plots)."""

    performance: Performance
    probabilities: npt.NDArray[np.float64]
    labels: npt.NDArray[np.int64]


_WINDOW = "j.kind = 'predict' AND j.model = %s AND j.created_at >= %s AND j.created_at < %s"


def _where(model: str, since: dt.datetime, until: dt.datetime, client: str | None) -> tuple[str, list[Any]]:
    if client is None:
        return _WINDOW, [model, since, until]
    return _WINDOW + " AND j.client = %s", [model, since, until, client]


def _rate(count: int, of: int) -> Rate:
    return Rate(count=count, of=of, rate=count / of if of else None)


def _thresholds(entry: ModelEntry) -> dict[str, float]:
    return {name: op.threshold for name, op in entry.operating_points.items()}


def shadow_figures(
    conn: Conn,
    shadow: ModelEntry,
    primary: ModelEntry,
    since: dt.datetime,
    until: dt.datetime,
    client: str | None,
    n_boot: int,
) -> ShadowFigures:
    """``shadow`` beside ``primary`` on the window's succeeded jobs that both answered."""
    pairs = shadow_pairs(conn, primary.name, shadow.name, since, until, client)
    judged = [p for p in pairs if p.ground_truth is not None]
    y = np.asarray([int(p.ground_truth == "pathology") for p in judged], dtype=np.int64)
    sp = np.asarray([p.shadow_probability for p in judged], dtype=np.float64)
    pp = np.asarray([p.primary_probability for p in judged], dtype=np.float64)
    return ShadowFigures(
        model=shadow.name,
        version=shadow.version,
        paired=len(pairs),
        agreement=_rate(sum(p.primary_label == p.shadow_label for p in pairs), len(pairs)),
        with_feedback=len(judged),
        live=model_figures(sp, y, _thresholds(shadow), n_boot=n_boot),
        primary_live=model_figures(pp, y, _thresholds(primary), n_boot=n_boot),
    )


def live_performance(
    conn: Conn,
    entry: ModelEntry,
    since: dt.datetime,
    until: dt.datetime,
    client: str | None,
    *,
    n_boot: int = N_BOOT,
    shadows: Sequence[ModelEntry] = (),
) -> LiveData:
    """``entry``'s prediction jobs created in ``[since, until)`` (of ``client``, or every client),
    and each of ``shadows`` (entries with ``shadow_of`` = ``entry``) on the jobs it also answered."""
    where, params = _where(entry.name, since, until, client)
    counts = conn.execute(
        (
            "SELECT count(*) AS jobs, count(DISTINCT j.study_sha256) AS studies, "
            "count(*) FILTER (WHERE j.state = 'succeeded') AS succeeded, "
            "count(*) FILTER (WHERE j.state = 'failed') AS failed, "
            "count(*) FILTER (WHERE r.label = 'indeterminate') AS indeterminate, "
            "count(*) FILTER (WHERE (r.body -> 'ood' ->> 'flagged') = 'true') AS ood_flagged, "
            "count(*) FILTER (WHERE jsonb_typeof(r.body -> 'ood') = 'object') AS ood_checked "
            f"FROM jobs j LEFT JOIN results r ON r.job_id = j.id WHERE {where}"
        ).encode(),
        params,
    ).fetchone()
    assert counts is not None
    refused = conn.execute(
        (
            "SELECT j.error_code AS code, count(*) AS n FROM jobs j "
            f"WHERE {where} AND j.state = 'failed' GROUP BY j.error_code ORDER BY count(*) DESC, j.error_code"
        ).encode(),
        params,
    ).fetchall()
    pairs = conn.execute(
        (
            "SELECT r.probability, c.ground_truth FROM jobs j JOIN results r ON r.job_id = j.id "
            f"JOIN feedback_consensus c ON c.job_id = j.id WHERE {where} AND j.state = 'succeeded' "
            "ORDER BY j.created_at, j.id"
        ).encode(),
        params,
    ).fetchall()
    p = np.asarray([float(r["probability"]) for r in pairs], dtype=np.float64)
    y = np.asarray([int(r["ground_truth"] == "pathology") for r in pairs], dtype=np.int64)
    finished = int(counts["succeeded"]) + int(counts["failed"])
    thresholds = _thresholds(entry)
    report = Performance(
        model=entry.name,
        version=entry.version,
        since=since,
        until=until,
        client=client,
        jobs=int(counts["jobs"]),
        studies=int(counts["studies"]),
        succeeded=int(counts["succeeded"]),
        failed=int(counts["failed"]),
        with_feedback=len(pairs),
        ground_truth_rule=GROUND_TRUTH_RULE,
        indeterminate=_rate(int(counts["indeterminate"]), int(counts["succeeded"])),
        ood_flagged=_rate(int(counts["ood_flagged"]), int(counts["ood_checked"])),
        refusals=[
            RefusalRate(code=str(r["code"]), count=int(r["n"]), of=finished, rate=int(r["n"]) / finished)
            for r in refused
        ],
        bootstrap=n_boot,
        live=model_figures(p, y, thresholds, n_boot=n_boot),
        card=card_figures(entry),
        shadows=[shadow_figures(conn, s, entry, since, until, client, n_boot) for s in shadows],
    )
    return LiveData(report, p, y)
