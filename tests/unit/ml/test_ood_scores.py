"""OOD scores, their fitting and their file: hand-computed values and round trips."""

from __future__ import annotations

import hashlib
import io
import json
import math

import numpy as np
import pytest

from ml.ood import (
    GaussianFeatureModel,
    OODStats,
    energy_score,
    fit_ood,
    held_out_split,
    msp_score,
    threshold_keeping,
)
from ml.ood.scores import ledoit_wolf_covariance


def test_msp_hand_values() -> None:
    s = msp_score([[0.0, 0.0], [math.log(3.0), 0.0], [0.0, math.log(3.0)]])
    assert s == pytest.approx([0.5, 0.25, 0.25])
    # temperature 2 halves the logits: max softmax of (log 3 / 2, 0) = √3 / (√3 + 1)
    assert msp_score([[math.log(3.0), 0.0]], temperature=2.0)[0] == pytest.approx(
        1 - math.sqrt(3) / (math.sqrt(3) + 1)
    )


def test_energy_hand_values_and_orientation() -> None:
    e = energy_score([[0.0, 0.0], [5.0, 5.0], [100.0, -100.0]])
    assert e[0] == pytest.approx(-math.log(2.0))
    assert e[1] == pytest.approx(-(5.0 + math.log(2.0)))
    assert e[2] == pytest.approx(-100.0)  # stable for large logits
    assert e[2] < e[1] < e[0]  # larger logits = lower energy = more familiar
    assert energy_score([[2.0, 0.0]], temperature=2.0)[0] == pytest.approx(-2.0 * math.log(math.e + 1.0))


@pytest.mark.parametrize("bad", [[[np.nan, 0.0]], [0.0, 1.0]])
def test_scores_refuse_bad_logits(bad: object) -> None:
    with pytest.raises(ValueError):
        msp_score(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        energy_score(bad)  # type: ignore[arg-type]


def test_ledoit_wolf_matches_the_per_sample_formula() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 8)) * np.arange(1, 9)
    x -= x.mean(axis=0)
    cov, shrink = ledoit_wolf_covariance(x)
    n, d = x.shape
    s = x.T @ x / n
    mu = np.trace(s) / d
    delta = np.sum((s - mu * np.eye(d)) ** 2) / d
    beta = sum(np.sum((np.outer(r, r) - s) ** 2) for r in x) / n**2 / d
    want = min(beta, delta) / delta
    assert shrink == pytest.approx(want)
    np.testing.assert_allclose(cov, (1 - want) * s + want * mu * np.eye(d))
    assert 0.0 < shrink < 1.0


def test_ledoit_wolf_leaves_an_isotropic_covariance_alone() -> None:
    x = np.concatenate([np.eye(4), -np.eye(4)]) * 2.0  # S = 1·I exactly
    cov, shrink = ledoit_wolf_covariance(x)
    assert shrink == 0.0
    np.testing.assert_allclose(cov, np.eye(4))


def test_gaussian_model_is_the_class_conditional_mahalanobis_distance() -> None:
    rng = np.random.default_rng(1)
    centre = np.array([5.0, 0.0, 0.0])
    a = rng.normal(size=(200, 3)) + centre
    b = rng.normal(size=(200, 3)) - centre
    g = GaussianFeatureModel.fit(np.concatenate([a, b]), [0] * 200 + [1] * 200)
    assert g.means.shape == (2, 3)
    np.testing.assert_allclose(g.means, [a.mean(0), b.mean(0)])
    pts = np.array([a.mean(0), b.mean(0), [0.0, 0.0, 0.0], [0.0, 6.0, 0.0]])
    got = g.score(pts)
    want = [min((p - m) @ g.precision @ (p - m) for m in g.means) for p in pts]
    np.testing.assert_allclose(got, want, rtol=1e-10)
    assert got[0] == pytest.approx(0.0, abs=1e-12) and got[1] == pytest.approx(0.0, abs=1e-12)
    # unit-variance classes: the origin is 5 σ from both means, (0, 6, 0) is √(25 + 36) σ away
    assert got[2] == pytest.approx(25.0, rel=0.15) and got[3] == pytest.approx(61.0, rel=0.15)


def test_gaussian_model_without_labels_is_one_gaussian_and_refuses_tiny_classes() -> None:
    f = np.random.default_rng(2).normal(size=(50, 4))
    assert GaussianFeatureModel.fit(f).means.shape == (1, 4)
    with pytest.raises(ValueError, match="fewer than 2"):
        GaussianFeatureModel.fit(f, [0] * 49 + [1])
    with pytest.raises(ValueError):
        GaussianFeatureModel.fit(f).score(np.zeros((1, 5)))


def test_threshold_keeping_keeps_the_requested_share() -> None:
    s = np.arange(1, 101, dtype=float)
    t = threshold_keeping(s, 0.95)
    assert t == 95.0
    assert np.mean(s <= t) == 0.95
    assert threshold_keeping([3.0], 0.95) == 3.0
    for bad in ([], [np.inf]):
        with pytest.raises(ValueError):
            threshold_keeping(bad)


def test_held_out_split_is_seeded_and_disjoint() -> None:
    fit, held = held_out_split(20, 0.3, seed=5)
    assert len(held) == 6 and len(fit) == 14
    assert set(fit).isdisjoint(held) and set(fit) | set(held) == set(range(20))
    assert np.array_equal(held_out_split(20, 0.3, seed=5)[1], held)
    with pytest.raises(ValueError):
        held_out_split(3)


def _synthetic(n: int, shift: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    f = rng.normal(size=(n, 16)) + np.where(y[:, None] == 1, 1.5, -1.5) + shift
    logits = np.stack([-f[:, 0], f[:, 0]], axis=1) * (1.0 + shift)
    return f, logits, y


@pytest.mark.parametrize("method", ["mahalanobis", "energy", "msp"])
def test_fit_ood_keeps_held_out_in_distribution_and_round_trips(method: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    f, z, y = _synthetic(400, 0.0, 3)
    stats = fit_ood(f, z, y, method=method, fitted_on="synthetic", keep=0.95)
    assert stats.n == 400 and stats.method == method
    assert 0.95 <= stats.in_distribution_rate <= 0.97
    fresh_f, fresh_z, _ = _synthetic(1000, 0.0, 4)
    assert np.mean(stats.flags(stats.scores(fresh_f, fresh_z))) < 0.10
    sha = stats.save(tmp_path / "m.ood.npz")
    assert sha == hashlib.sha256((tmp_path / "m.ood.npz").read_bytes()).hexdigest()
    back = OODStats.load(tmp_path / "m.ood.npz", sha)
    assert back.meta() == stats.meta()
    np.testing.assert_array_equal(back.scores(fresh_f, fresh_z), stats.scores(fresh_f, fresh_z))
    with pytest.raises(ValueError, match="sha256"):
        OODStats.load(tmp_path / "m.ood.npz", "0" * 64)


def test_mahalanobis_flags_shifted_features() -> None:
    f, z, y = _synthetic(400, 0.0, 5)
    stats = fit_ood(f, z, y, method="mahalanobis")
    far_f, far_z, _ = _synthetic(200, 8.0, 6)  # both classes land far beyond class 1
    assert np.mean(stats.flags(stats.scores(far_f, far_z))) > 0.95


def test_stats_file_refuses_pickles_and_foreign_files() -> None:
    buf = io.BytesIO()
    np.savez(buf, meta=np.array([{"method": "msp"}], dtype=object))
    with pytest.raises(ValueError):
        OODStats.from_bytes(buf.getvalue())
    with pytest.raises(ValueError):
        OODStats.from_bytes(b"not a zip")
    buf = io.BytesIO()
    meta = {"format_version": 99, "method": "msp", "threshold": 0.1, "fitted_on": "", "n": 4}
    np.savez(buf, meta=np.array(json.dumps(meta)))
    with pytest.raises(ValueError, match="format"):
        OODStats.from_bytes(buf.getvalue())


def test_stats_validate_their_fields() -> None:
    with pytest.raises(ValueError, match="unknown OOD method"):
        OODStats(method="odin", threshold=1.0, fitted_on="", n=4, in_distribution_rate=0.95)
    with pytest.raises(ValueError, match="Gaussian"):
        OODStats(method="mahalanobis", threshold=1.0, fitted_on="", n=4, in_distribution_rate=0.95)
    with pytest.raises(ValueError):
        OODStats(method="msp", threshold=float("nan"), fitted_on="", n=4, in_distribution_rate=0.95)
