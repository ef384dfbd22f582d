"""The predictor knows when it does not know: OOD score in the same forward, plausibility, indeterminate."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from ml.errors import ModelUnavailable
from ml.inference import LABEL_INDETERMINATE, Predictor, load_ood_stats
from ml.model import Manifest, ModelEntry, OODRef
from ml.model.checkpoint import save_weights
from ml.ood import OODStats, fit_ood
from ml.ood.features import logits_and_features
from tests.unit.ml.test_inference import SIZE, _batch, tiny_entry, tiny_model

VOX = (8.0, 8.0, 8.0)  # one model voxel of the 32³ input spans 8 mm: a 256 mm field


def _fitted(model: torch.nn.Module, method: str = "mahalanobis") -> OODStats:
    with torch.inference_mode():
        logits, feats = logits_and_features(model, _batch(24, seed=7))  # type: ignore[arg-type]
    return fit_ood(feats.double().numpy(), logits.double().numpy(), None, method=method, fitted_on="noise")


def _chest(n_z: int = SIZE) -> torch.Tensor:
    """A model input in [-1, 1]: an elliptic body with two lungs, 8 mm voxels (HU window [-1000, 600])."""
    z, y, x = np.mgrid[0:n_z, 0:SIZE, 0:SIZE]
    hu = np.full((n_z, SIZE, SIZE), -1000.0)
    hu[((y - 16) / 13.0) ** 2 + ((x - 16) / 15.0) ** 2 <= 1] = 40.0
    for cx in (10, 22):
        hu[(((y - 16) / 8.0) ** 2 + ((x - cx) / 4.5) ** 2 <= 1) & (z >= 3) & (z < n_z - 3)] = -850.0
    return torch.from_numpy(((hu + 1000) / 1600 * 2 - 1).astype(np.float32))[None, None]


def test_logits_come_from_the_same_forward_as_the_features() -> None:
    model = tiny_model()
    x = _batch(2)
    with torch.inference_mode():
        logits, feats = logits_and_features(model, x)
        assert torch.equal(logits, model(x))
        assert torch.equal(model.fc(feats), logits)
    assert feats.shape == (2, model.fc.in_features)


def test_without_ood_statistics_nothing_changes() -> None:
    p = Predictor(tiny_entry(), tiny_model(), device="cpu")
    pred = p.predict(_batch(1))[0]
    assert pred.ood is None and pred.plausibility is None and pred.indeterminate_reasons == ()
    assert pred.label in ("normal", "pathology")


def test_a_flagged_study_is_indeterminate_but_keeps_its_probability() -> None:
    model = tiny_model()
    stats = _fitted(model)
    plain = Predictor(tiny_entry(), model, device="cpu")
    strict = Predictor(tiny_entry(), model, device="cpu", ood=dataclasses.replace(stats, threshold=-1.0))
    x = _batch(1, seed=3)
    a, b = plain.predict(x)[0], strict.predict(x)[0]
    assert b.ood is not None and b.ood.flagged and b.ood.method == "mahalanobis"
    assert b.ood.score == pytest.approx(float(stats.scores(*_feats_logits(model, x))[0]))
    assert b.label == LABEL_INDETERMINATE and b.indeterminate_reasons == ("out_of_distribution",)
    assert b.probability == a.probability and b.decisions == a.decisions


def _feats_logits(model: torch.nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    with torch.inference_mode():
        logits, feats = logits_and_features(model, x)  # type: ignore[arg-type]
    return feats.double().numpy(), logits.double().numpy()


def test_a_familiar_study_keeps_its_label() -> None:
    model = tiny_model()
    lenient = dataclasses.replace(_fitted(model), threshold=1e12)
    pred = Predictor(tiny_entry(), model, device="cpu", ood=lenient).predict(_batch(1))[0]
    assert pred.ood is not None and not pred.ood.flagged
    assert pred.label != LABEL_INDETERMINATE


def test_plausibility_runs_per_volume_when_voxel_sizes_are_given() -> None:
    p = Predictor(tiny_entry(), tiny_model(), device="cpu")
    batch = torch.cat([_chest(), torch.full((1, 1, SIZE, SIZE, SIZE), -1.0)])  # a chest, then only air
    chest, empty = p.predict(batch, [VOX, VOX])
    assert chest.indeterminate_reasons == () and chest.plausibility is not None
    assert chest.plausibility["lung_volume_ml"] > 1000
    assert empty.label == LABEL_INDETERMINATE and empty.indeterminate_reasons == ("no_lungs_found",)
    with pytest.raises(ValueError, match="voxel_mm"):
        p.predict(batch, [VOX])


def test_ood_reason_comes_first() -> None:
    model = tiny_model()
    strict = dataclasses.replace(_fitted(model, "energy"), threshold=-1e12)
    pred = Predictor(tiny_entry(), model, device="cpu", ood=strict).predict(
        torch.full((1, 1, SIZE, SIZE, SIZE), -1.0), [VOX]
    )[0]
    assert pred.indeterminate_reasons == ("out_of_distribution", "no_lungs_found")


def _publish(tmp_path: Path, stats: OODStats, **ref_changes: object) -> Path:
    model = tiny_model()
    sha = save_weights(model, tmp_path / "tiny.pt")
    ood_sha = stats.save(tmp_path / "tiny.ood.npz")
    ref = OODRef(
        method=stats.method,
        uri="tiny.ood.npz",
        sha256=ood_sha,
        threshold=stats.threshold,
        fitted_on=stats.fitted_on,
        n=stats.n,
        in_distribution_rate=stats.in_distribution_rate,
    )
    entry = dataclasses.replace(tiny_entry(sha256=sha), ood=dataclasses.replace(ref, **ref_changes))  # type: ignore[arg-type]
    Manifest(entries={"tiny": entry}, default="tiny").save(tmp_path / "manifest.json")
    return tmp_path / "manifest.json"


def test_the_manifest_brings_the_statistics(tmp_path: Path) -> None:
    stats = _fitted(tiny_model())
    manifest = _publish(tmp_path, stats)
    p = Predictor.from_manifest(manifest, device="cpu")
    assert p.ood is not None and p.ood.meta() == stats.meta()
    entry = Manifest.load(manifest).get()
    assert entry.ood is not None and ModelEntry.from_dict(entry.to_dict()) == entry


def test_statistics_that_do_not_match_the_manifest_are_refused(tmp_path: Path) -> None:
    stats = _fitted(tiny_model())
    manifest = _publish(tmp_path, stats, threshold=stats.threshold + 1.0)
    with pytest.raises(ModelUnavailable, match="disagrees"):
        Predictor.from_manifest(manifest, device="cpu")
    manifest = _publish(tmp_path, stats, sha256=hashlib.sha256(b"other").hexdigest())
    with pytest.raises(ModelUnavailable, match="sha256 mismatch"):
        load_ood_stats(Manifest.load(manifest).get(), tmp_path)
    (tmp_path / "tiny.ood.npz").unlink()
    with pytest.raises(ModelUnavailable, match="OOD statistics file"):
        load_ood_stats(Manifest.load(manifest).get(), tmp_path)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"method": "odin"}, "ood.method"),
        ({"sha256": "XYZ"}, "sha256"),
        ({"uri": "http://x/y"}, "uri"),
        ({"in_distribution_rate": 1.5}, "in_distribution_rate"),
        ({"n": 0}, "ood.n"),
    ],
)
def test_the_manifest_ood_block_is_validated(change: dict[str, object], match: str) -> None:
    good = {
        "method": "mahalanobis",
        "uri": "m.ood.npz",
        "sha256": "0" * 64,
        "threshold": 3.0,
        "fitted_on": "tuning corpus",
        "n": 240,
        "in_distribution_rate": 0.95,
    }
    assert OODRef.from_dict(good).to_dict() == good
    with pytest.raises(ValueError, match=match):
        OODRef.from_dict({**good, **change})
    with pytest.raises(ValueError, match="unknown"):
        OODRef.from_dict({**good, "extra": 1})
