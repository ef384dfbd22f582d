"""Tests of ml.evaluate against hand-computed values and known synthetic truths."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from ml.evaluate import (
    OPERATING_POINT_NAMES,
    accuracy,
    apply_temperature,
    bootstrap_ci,
    brier_score,
    confusion_at,
    ece,
    evaluate_operating_points,
    f1,
    fit_temperature,
    mann_whitney_auc,
    npv,
    plot_calibration,
    plot_roc,
    ppv,
    reliability_curve,
    roc_auc,
    roc_curve,
    select_operating_points,
    sensitivity,
    sigmoid,
    specificity,
    stratified_kfold,
    summarize,
    write_model_card,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _synthetic(n: int, seed: int, separation: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels with ~30 % prevalence and noisy scores shifted up for positives."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    s = separation * y + rng.normal(size=n)
    return y, s


# --------------------------------------------------------------------------- ROC / AUC


def test_auc_hand_example() -> None:
    # positives 0.35, 0.8; negatives 0.1, 0.4. Pairs (pos > neg):
    # 0.35>0.1 yes, 0.35>0.4 no, 0.8>0.1 yes, 0.8>0.4 yes -> 3 of 4 = 0.75
    y = [0, 0, 1, 1]
    s = [0.1, 0.4, 0.35, 0.8]
    assert roc_auc(y, s) == pytest.approx(0.75)
    assert mann_whitney_auc(y, s) == pytest.approx(0.75)


def test_roc_curve_hand_example() -> None:
    # descending scores: 0.8(P) 0.4(N) 0.35(P) 0.1(N)
    fpr, tpr, thr = roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert thr[0] == math.inf
    np.testing.assert_allclose(thr[1:], [0.8, 0.4, 0.35, 0.1])
    np.testing.assert_allclose(fpr, [0.0, 0.0, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(tpr, [0.0, 0.5, 0.5, 1.0, 1.0])


def test_roc_curve_ties_step_diagonally() -> None:
    # at threshold 0.5: both positives and one of two negatives -> (0.5, 1.0) in one step
    # AUC: triangle-ish trapezoid 0.5*1/2 = 0.25, then 0.5*1 = 0.5 -> 0.75
    # Mann-Whitney: each positive beats 0.2 (1) and ties 0.5 (1/2) -> 2 * 1.5 / 4 = 0.75
    y = [0, 1, 0, 1]
    s = [0.5, 0.5, 0.2, 0.5]
    fpr, tpr, thr = roc_curve(y, s)
    np.testing.assert_allclose(thr[1:], [0.5, 0.2])
    np.testing.assert_allclose(fpr, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(tpr, [0.0, 1.0, 1.0])
    assert roc_auc(y, s) == pytest.approx(0.75)
    assert mann_whitney_auc(y, s) == pytest.approx(0.75)


def test_auc_perfect_inverted_and_ties() -> None:
    y = [0, 0, 0, 1, 1]
    assert roc_auc(y, [0.1, 0.2, 0.3, 0.8, 0.9]) == pytest.approx(1.0)
    assert roc_auc(y, [0.9, 0.8, 0.7, 0.2, 0.1]) == pytest.approx(0.0)
    assert roc_auc(y, [0.5] * 5) == pytest.approx(0.5)


def test_auc_equals_mann_whitney_on_random_data() -> None:
    rng = np.random.default_rng(3)
    for _ in range(5):
        y = rng.integers(0, 2, 200)
        s = np.round(rng.normal(size=200) + 0.7 * y, 1)  # rounding makes many ties
        assert roc_auc(y, s) == pytest.approx(mann_whitney_auc(y, s), abs=1e-12)
        # brute force over all pairs, ties 1/2
        pos, neg = s[y == 1], s[y == 0]
        diff = pos[:, None] - neg[None, :]
        brute = (np.sum(diff > 0) + 0.5 * np.sum(diff == 0)) / diff.size
        assert roc_auc(y, s) == pytest.approx(brute, abs=1e-12)


def test_auc_nan_when_class_absent() -> None:
    assert math.isnan(roc_auc([0, 0, 0], [0.1, 0.2, 0.3]))
    assert math.isnan(mann_whitney_auc([1, 1], [0.1, 0.2]))
    assert math.isnan(roc_auc([], []))


def test_invalid_input_raises() -> None:
    with pytest.raises(ValueError):
        roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError):
        roc_auc([0, 1], [0.1])
    with pytest.raises(ValueError):
        roc_auc([0, 1], [0.1, math.nan])


# --------------------------------------------------------------------------- confusion metrics

# idx:   0    1    2    3    4    5    6    7
Y8 = [1, 1, 1, 0, 0, 0, 0, 1]
S8 = [0.9, 0.6, 0.3, 0.2, 0.7, 0.5, 0.1, 0.5]
# threshold 0.5 (>= is positive): predicted positive = idx 0, 1, 4, 5, 7
# tp = {0, 1, 7} = 3, fn = {2} = 1, fp = {4, 5} = 2, tn = {3, 6} = 2


def test_confusion_hand_example() -> None:
    c = confusion_at(Y8, S8, 0.5)
    assert (c.tp, c.fp, c.tn, c.fn) == (3, 2, 2, 1)
    assert c.n == 8


def test_rates_hand_example() -> None:
    assert sensitivity(Y8, S8, 0.5) == pytest.approx(3 / 4)
    assert specificity(Y8, S8, 0.5) == pytest.approx(2 / 4)
    assert ppv(Y8, S8, 0.5) == pytest.approx(3 / 5)
    assert npv(Y8, S8, 0.5) == pytest.approx(2 / 3)
    # F1 = 2tp / (2tp + fp + fn) = 6 / 9; also the harmonic mean of 0.6 and 0.75
    assert f1(Y8, S8, 0.5) == pytest.approx(6 / 9)
    assert f1(Y8, S8, 0.5) == pytest.approx(2 * 0.6 * 0.75 / (0.6 + 0.75))
    assert accuracy(Y8, S8, 0.5) == pytest.approx(5 / 8)


def test_rates_nan_when_class_absent() -> None:
    y, s = [0, 0, 0], [0.1, 0.6, 0.7]
    assert math.isnan(sensitivity(y, s))
    assert specificity(y, s) == pytest.approx(1 / 3)
    assert f1(y, s) == pytest.approx(0.0)  # 2 false positives, no true positive
    assert math.isnan(f1([0, 0], [0.1, 0.2]))  # nothing positive at all
    assert math.isnan(specificity([1, 1], [0.1, 0.9]))
    assert math.isnan(ppv([1, 1], [0.1, 0.2]))  # nothing called positive
    assert math.isnan(accuracy([], []))


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_contains_estimate_and_reproducible() -> None:
    y, s = _synthetic(200, seed=1)
    auc = roc_auc(y, s)
    lo, hi = bootstrap_ci(y, s, roc_auc, n=300, seed=7)
    assert lo < auc < hi
    assert (lo, hi) == bootstrap_ci(y, s, roc_auc, n=300, seed=7)
    assert (lo, hi) != bootstrap_ci(y, s, roc_auc, n=300, seed=8)


def test_bootstrap_ci_narrows_with_sample_size() -> None:
    small = _synthetic(60, seed=2)
    large = _synthetic(1000, seed=2)
    lo_s, hi_s = bootstrap_ci(*small, roc_auc, n=200, seed=0)
    lo_l, hi_l = bootstrap_ci(*large, roc_auc, n=200, seed=0)
    assert hi_l - lo_l < 0.6 * (hi_s - lo_s)


def test_bootstrap_unstratified_skips_single_class_resamples() -> None:
    # 1 positive in 10: many plain resamples lack it; they are redrawn, never nan
    y = [1] + [0] * 9
    s = [0.9, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.95]
    lo, hi = bootstrap_ci(y, s, roc_auc, n=100, seed=0, stratified=False)
    assert 0.0 <= lo <= hi <= 1.0
    lo2, hi2 = bootstrap_ci(y, s, roc_auc, n=100, seed=0, stratified=True)
    assert 0.0 <= lo2 <= 8 / 9 <= hi2 <= 1.0  # point estimate: the positive beats 8 of 9 negatives


def test_bootstrap_nan_when_metric_undefined() -> None:
    lo, hi = bootstrap_ci([0, 0, 0], [0.1, 0.2, 0.3], roc_auc, n=20)
    assert math.isnan(lo) and math.isnan(hi)


# --------------------------------------------------------------------------- operating points

# negatives 0.1 0.2 0.3 0.5 0.55 (N = 5); positives 0.4 0.6 0.7 0.9 (P = 4)
# descending: thr   tpr   fpr   J
#             0.9   .25   0     .25
#             0.7   .50   0     .50
#             0.6   .75   0     .75   <- Youden max
#             0.55  .75   .2    .55
#             0.5   .75   .4    .35
#             0.4   1.0   .4    .60
#             0.3   1.0   .6    .40  ...
Y_OP = [0, 0, 0, 0, 0, 1, 1, 1, 1]
S_OP = [0.1, 0.2, 0.3, 0.5, 0.55, 0.4, 0.6, 0.7, 0.9]


def test_youden_and_targets_hand_example() -> None:
    ops = select_operating_points(Y_OP, S_OP, sens_target=0.75, spec_target=0.8)
    assert set(ops) == set(OPERATING_POINT_NAMES)
    assert ops["balanced"] == pytest.approx(0.6)
    assert ops["high_sensitivity"] == pytest.approx(0.6)  # highest thr with tpr >= .75
    # chosen for the target alone: the lowest thr with fpr <= .2 is 0.55 (more sensitive than
    # balanced, specificity .8 as asked), the highest with tpr >= .5 is 0.7
    assert ops["high_specificity"] == pytest.approx(0.55)
    assert select_operating_points(Y_OP, S_OP, sens_target=0.5)["high_sensitivity"] == pytest.approx(0.7)
    strict = select_operating_points(Y_OP, S_OP, sens_target=1.0, spec_target=1.0)
    assert strict["high_sensitivity"] == pytest.approx(0.4)
    assert strict["high_specificity"] == pytest.approx(0.6)


def test_youden_ties_go_to_the_most_sensitive_threshold() -> None:
    # descending: 0.9 (tpr .5, fpr 0, J .5), 0.8 (.5, .5, 0), 0.7 (1, .5, .5), 0.6 (1, 1, 0)
    ops = select_operating_points([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.6])
    assert ops["balanced"] == pytest.approx(0.7)
    assert sensitivity([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.6], ops["balanced"]) == 1.0


def test_high_specificity_may_call_nothing_positive() -> None:
    # the top score is a negative: specificity 1 needs a threshold above every score
    thr = select_operating_points([1, 0], [0.2, 0.9], spec_target=1.0)["high_specificity"]
    assert 0.9 < thr < 0.9 + 1e-9
    assert specificity([1, 0], [0.2, 0.9], thr) == 1.0


def test_fixed_sensitivity_threshold_meets_target() -> None:
    y, s = _synthetic(500, seed=4)
    ops = select_operating_points(y, s, sens_target=0.95, spec_target=0.9)
    t = ops["high_sensitivity"]
    assert sensitivity(y, s, t) >= 0.95
    higher = np.unique(s[s > t])
    assert sensitivity(y, s, float(higher[0])) < 0.95  # the next threshold up misses it
    t_spec = ops["high_specificity"]
    assert specificity(y, s, t_spec) >= 0.9
    lower = np.unique(s[s < t_spec])
    assert specificity(y, s, float(lower[-1])) < 0.9


def test_targeted_points_are_distinct_from_balanced_on_a_strong_model() -> None:
    y, s = _synthetic(400, seed=7)
    ops = select_operating_points(y, s)  # default targets 0.98 / 0.98
    assert ops["high_sensitivity"] < ops["balanced"] < ops["high_specificity"]
    assert sensitivity(y, s, ops["high_sensitivity"]) >= 0.98
    assert specificity(y, s, ops["high_specificity"]) >= 0.98


def test_operating_points_nan_without_both_classes() -> None:
    ops = select_operating_points([0, 0, 0], [0.1, 0.2, 0.3])
    assert all(math.isnan(v) for v in ops.values())


def test_evaluate_operating_points() -> None:
    y, s = _synthetic(300, seed=5)
    ops = select_operating_points(y, s, sens_target=0.95, spec_target=0.95)
    res = evaluate_operating_points(y, s, ops, n_boot=100, seed=0)
    assert set(res) == set(OPERATING_POINT_NAMES)
    keys = {"threshold", "sensitivity", "specificity", "sensitivity_ci95", "specificity_ci95"}
    keys |= {"f1", "ppv", "npv", "n"}
    for name, r in res.items():
        assert set(r) == keys
        assert r["n"] == 300
        assert r["threshold"] == ops[name]
        c = confusion_at(y, s, ops[name])
        assert r["sensitivity"] == c.sensitivity and r["npv"] == c.npv
        lo, hi = r["sensitivity_ci95"]
        assert lo <= r["sensitivity"] <= hi
    assert res["high_sensitivity"]["sensitivity"] >= 0.95
    assert res["high_specificity"]["specificity"] >= 0.95


# --------------------------------------------------------------------------- calibration


@pytest.mark.parametrize("t_true", [2.5, 0.5])
def test_fit_temperature_recovers_known_t(t_true: float) -> None:
    rng = np.random.default_rng(11)
    z_cal = rng.normal(0.0, 2.0, 20000)  # calibrated log-odds
    y = (rng.random(z_cal.size) < sigmoid(z_cal)).astype(int)
    logits = t_true * z_cal  # miscalibrated by temperature t_true
    t = fit_temperature(logits, y)
    assert t == pytest.approx(t_true, rel=0.10)
    assert fit_temperature(logits, y) == t  # deterministic
    np.testing.assert_allclose(apply_temperature(logits, t), sigmoid(logits / t))


def test_fit_temperature_degenerate() -> None:
    assert fit_temperature([1.0, 2.0], [1, 1]) == 1.0
    with pytest.raises(ValueError):
        apply_temperature([0.0], 0.0)


def test_ece_small_when_calibrated_and_large_when_not() -> None:
    rng = np.random.default_rng(12)
    p = rng.random(20000)
    y = (rng.random(p.size) < p).astype(int)
    assert ece(y, p, 10) < 0.02
    assert ece(y, np.clip(p * 0.5, 0, 1), 10) > 0.15


def test_reliability_curve_hand_example() -> None:
    # bins of width 0.5: [0, .5) holds .1 .2 (y 0, 1); [.5, 1] holds .8 1.0 (y 1, 1)
    mean_p, frac, counts = reliability_curve([0, 1, 1, 1], [0.1, 0.2, 0.8, 1.0], n_bins=2)
    np.testing.assert_allclose(mean_p, [0.15, 0.9])
    np.testing.assert_allclose(frac, [0.5, 1.0])
    assert counts.tolist() == [2, 2]
    # ECE = 2/4 * |0.5 - 0.15| + 2/4 * |1 - 0.9| = 0.175 + 0.05
    assert ece([0, 1, 1, 1], [0.1, 0.2, 0.8, 1.0], n_bins=2) == pytest.approx(0.225)
    _, frac3, counts3 = reliability_curve([0, 1], [0.05, 0.1], n_bins=3)
    assert counts3.tolist() == [2, 0, 0] and math.isnan(frac3[1])


def test_brier_hand_example() -> None:
    # ((0.1)^2 + (0.4)^2 + (0.2)^2 + 0) / 4 = (0.01 + 0.16 + 0.04) / 4
    assert brier_score([0, 1, 1, 0], [0.1, 0.6, 0.8, 0.0]) == pytest.approx(0.0525)


# --------------------------------------------------------------------------- k-fold


def test_stratified_kfold_properties() -> None:
    labels = np.array([1] * 23 + [0] * 57)
    k = 5
    folds = stratified_kfold(labels, k, seed=3)
    assert len(folds) == k
    vals = np.concatenate([v for _, v in folds])
    assert sorted(vals.tolist()) == list(range(labels.size))  # each sample in exactly one val fold
    for train, val in folds:
        assert not set(train.tolist()) & set(val.tolist())
        assert train.size + val.size == labels.size
    pos = [int(labels[v].sum()) for _, v in folds]
    neg = [int((labels[v] == 0).sum()) for _, v in folds]
    assert max(pos) - min(pos) <= 1
    assert max(neg) - min(neg) <= 1
    sizes = [v.size for _, v in folds]
    assert max(sizes) - min(sizes) <= 1
    again = stratified_kfold(labels, k, seed=3)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again, strict=True))
    other = stratified_kfold(labels, k, seed=4)
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(folds, other, strict=True))
    with pytest.raises(ValueError):
        stratified_kfold(labels, 1, seed=0)


# --------------------------------------------------------------------------- summary, plots, card


def test_summarize() -> None:
    y, s = _synthetic(200, seed=6)
    p = sigmoid(2 * s - 1)
    out = summarize(y, p, n_boot=100, seed=0)
    assert out["n"] == 200
    assert out["prevalence"] == pytest.approx(np.mean(y))
    assert out["auc"] == pytest.approx(roc_auc(y, p))
    assert out["sensitivity"] == pytest.approx(sensitivity(y, p, 0.5))
    for key in ("auc", "sensitivity", "specificity", "f1"):
        lo, hi = out[f"{key}_ci95"]
        assert lo <= out[key] <= hi
    assert summarize(y, p, n_boot=100, seed=0) == out


def test_plots_write_png(tmp_path: Path) -> None:
    y, s = _synthetic(120, seed=8)
    p = sigmoid(s)
    roc = tmp_path / "roc.png"
    plot_roc(
        {"val": (y, s), "test": (y[::-1], s)}, roc, title="ROC", operating_points={"balanced": (0.2, 0.7)}
    )
    cal = tmp_path / "cal.png"
    plot_calibration(y, p, cal)
    for f in (roc, cal):
        data = f.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000


def test_model_card(tmp_path: Path) -> None:
    y = [0, 0, 1, 1]
    s = [0.1, 0.4, 0.35, 0.8]
    metrics = summarize(y, s, n_boot=50, seed=0)
    ops = evaluate_operating_points(y, s, {"balanced": 0.35}, n_boot=50, seed=0)
    cmd = "python -m ml.train --config configs/seed.yaml --seed 0 && python -m ml.evaluate --split test"
    card = tmp_path / "card" / "MODEL_CARD.md"
    common = {
        "name": "ct-triage",
        "version": "0.1.0",
        "arch_text": "3-D ResNet-10",
        "input_size": (128, 128, 128),
        "metrics": metrics,
        "operating_points": ops,
        "training_data": "synthetic phantoms",
        "intended_use": "demo",
        "limitations": ["synthetic data only", "single site"],
        "reproduce_command": cmd,
        "roc_png": str(tmp_path / "card" / "roc.png"),
        "calibration_png": "calibration.png",
    }
    write_model_card(card, clinical_use=False, **common)  # type: ignore[arg-type]
    text = card.read_text()
    assert "NOT FOR CLINICAL USE" in text
    assert text.index("NOT FOR CLINICAL USE") < text.index("## Model")
    assert "| auc | 0.750 |" in text
    assert "| balanced | 0.3500 | 1.000" in text  # sensitivity at 0.35 = 2/2
    assert "0.500" in text  # specificity at 0.35 = 1/2
    assert cmd in text
    assert "![ROC curve](roc.png)" in text
    assert "![Calibration](calibration.png)" in text
    assert "- single site" in text
    assert "128 x 128 x 128" in text
    assert text.endswith("```\n")  # no notes: the card ends with the command
    write_model_card(card, clinical_use=True, notes="\n## Against the goal\n\nMet.\n", **common)  # type: ignore[arg-type]
    text = card.read_text()
    assert "NOT FOR CLINICAL USE" not in text
    assert text.endswith(f"{cmd}\n```\n\n## Against the goal\n\nMet.\n")
