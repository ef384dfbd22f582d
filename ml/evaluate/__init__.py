"""Evaluation recipe for the binary triage model (normal = 0, pathology = 1).

Everything here is plain numpy (no scikit-learn) and deterministic given a seed:

* discrimination and confusion-matrix metrics (:mod:`ml.evaluate.metrics`):
  :func:`roc_curve`, :func:`roc_auc` (equal to the Mann-Whitney U statistic with ties
  counted 1/2, see :func:`mann_whitney_auc`); at a threshold (a study is called positive
  when its score is ``>=`` the threshold): :func:`confusion_at`, :func:`sensitivity`,
  :func:`specificity`, :func:`f1`, :func:`accuracy`, :func:`ppv`, :func:`npv`;
* resampling (:mod:`ml.evaluate.resampling`): :func:`bootstrap_ci` (percentile
  bootstrap, stratified by default), :func:`stratified_kfold`;
* operating points chosen on validation scores and evaluated on test scores, and the
  headline metrics (:mod:`ml.evaluate.operating_points`): :func:`select_operating_points`,
  :func:`evaluate_operating_points`, :func:`summarize`;
* calibration (:mod:`ml.evaluate.calibration`): :func:`fit_temperature`,
  :func:`apply_temperature`, :func:`reliability_curve`, :func:`ece`, :func:`brier_score`;
* reporting: :func:`plot_roc`, :func:`plot_calibration` (:mod:`ml.evaluate.plots`),
  :func:`write_model_card` (:mod:`ml.evaluate.card`).

Metrics whose denominator is empty (e.g. sensitivity when the sample has no
positive) are ``nan`` rather than an error; malformed input (labels other than
0/1, non-finite scores, mismatched lengths) raises :class:`ValueError`
(:mod:`ml.evaluate.checks`).
"""

from ml.evaluate.calibration import (
    apply_temperature,
    brier_score,
    ece,
    fit_temperature,
    logit,
    reliability_curve,
    sigmoid,
)
from ml.evaluate.card import write_model_card
from ml.evaluate.metrics import (
    Confusion,
    accuracy,
    confusion_at,
    f1,
    mann_whitney_auc,
    npv,
    ppv,
    roc_auc,
    roc_curve,
    sensitivity,
    specificity,
)
from ml.evaluate.operating_points import (
    OPERATING_POINT_NAMES,
    evaluate_operating_points,
    select_operating_points,
    summarize,
)
from ml.evaluate.plots import plot_calibration, plot_roc
from ml.evaluate.resampling import bootstrap_ci, stratified_kfold

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
