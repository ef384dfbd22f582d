"""Measuring a model at thresholds: named operating points chosen on one split and
measured on another, and the headline metrics at 0.5, each with bootstrap 95 % CIs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ml.evaluate.checks import labels_and_scores, ratio
from ml.evaluate.metrics import confusion_at, metric_at, roc_auc, roc_curve
from ml.evaluate.resampling import bootstrap_ci

OPERATING_POINT_NAMES: Final[tuple[str, ...]] = ("balanced", "high_sensitivity", "high_specificity")
"""Names of the operating points returned by :func:`select_operating_points`."""

_EPS: Final[float] = 1e-12  # tolerance when comparing a rate with a target (19/20 vs 0.95)


def select_operating_points(
    y_val: npt.ArrayLike,
    s_val: npt.ArrayLike,
    sens_target: float = 0.98,
    spec_target: float = 0.98,
) -> dict[str, float]:
    """Choose named thresholds on validation scores.

    * ``balanced``: maximises Youden's J = sensitivity + specificity - 1; when several
      thresholds tie (common on a balanced set: passing one more positive and one more
      negative leaves J unchanged), the lowest of them, the most sensitive: a triage
      service ranks a missed pathology worse than a false alarm;
    * ``high_sensitivity``: the highest threshold with sensitivity >= ``sens_target``
      (a rule-out point: the fewest false alarms that still meets the target);
    * ``high_specificity``: the lowest threshold with specificity >= ``spec_target``
      (a rule-in point: the most sensitive that still meets the target).

    The two targeted points are chosen for their targets alone, not bounded by
    ``balanced``, so each gives the product what its name promises: the sensitivity
    (specificity) target, met on the selection split. For a strong model whose
    ``balanced`` point already beats a target, the targeted point trades the surplus
    for the other rate.

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
    return {"balanced": balanced, "high_sensitivity": high_sens, "high_specificity": high_spec}


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
    y, s = labels_and_scores(y_test, s_test)
    out: dict[str, dict[str, Any]] = {}
    for name, threshold in thresholds.items():
        c = confusion_at(y, s, threshold)
        sens_ci = bootstrap_ci(y, s, metric_at("sensitivity", threshold), n=n_boot, seed=seed)
        spec_ci = bootstrap_ci(y, s, metric_at("specificity", threshold), n=n_boot, seed=seed)
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


def summarize(
    y_true: npt.ArrayLike, scores: npt.ArrayLike, *, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Headline metrics with bootstrap 95 % CIs.

    Returns ``{"n", "n_positive", "prevalence", "auc", "auc_ci95", "threshold"
    (0.5), "sensitivity", "sensitivity_ci95", "specificity", "specificity_ci95",
    "f1", "f1_ci95"}``; CIs are ``[lo, hi]`` lists and undefined values ``nan``.
    """
    y, s = labels_and_scores(y_true, scores)
    threshold = 0.5
    c = confusion_at(y, s, threshold)
    out: dict[str, Any] = {
        "n": int(y.size),
        "n_positive": int(y.sum()),
        "prevalence": ratio(int(y.sum()), y.size),
        "auc": roc_auc(y, s),
        "auc_ci95": list(bootstrap_ci(y, s, roc_auc, n=n_boot, seed=seed)),
        "threshold": threshold,
    }
    for name in ("sensitivity", "specificity", "f1"):
        out[name] = getattr(c, name)
        out[f"{name}_ci95"] = list(bootstrap_ci(y, s, metric_at(name, threshold), n=n_boot, seed=seed))
    return out
