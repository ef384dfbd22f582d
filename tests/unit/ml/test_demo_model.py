"""The shipped demo model loads from the repo and classifies a fresh phantom pair correctly."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml.dicom import load_volume, open_study
from ml.inference import Predictor
from ml.phantom import make_study
from ml.qc import rank_series
from ml.weights import Manifest, sha256_file

ROOT = Path(__file__).resolve().parents[3]
MANIFEST = ROOT / "weights" / "manifest.json"


@pytest.fixture(scope="module")
def demo() -> Predictor:
    return Predictor.from_manifest(MANIFEST, "resnet10-demo", device="cpu")


def test_demo_entry_is_complete_and_verified() -> None:
    entry = Manifest.load(MANIFEST).get("resnet10-demo")
    assert entry.clinical_use is False and "NOT FOR CLINICAL USE" in entry.intended_use
    assert set(entry.operating_points) == {"balanced", "high_sensitivity", "high_specificity"}
    weights = MANIFEST.parent / entry.uri
    assert weights.stat().st_size <= 30 * 2**20
    assert sha256_file(weights) == entry.sha256
    assert entry.model_card and (MANIFEST.parent / entry.model_card).is_file()


@pytest.mark.parametrize(("label", "kinds", "seed"), [(0, None, 424242), (1, ("consolidation",), 515151)])
def test_demo_classifies_fresh_phantoms(
    demo: Predictor, tmp_path: Path, label: int, kinds: tuple[str, ...] | None, seed: int
) -> None:
    info = make_study(
        tmp_path / "s.zip",
        seed=seed,
        variant="standard",
        label=label,
        kinds=kinds,
        difficulty=(0.7, 1.0),
        rows=128,
        cols=128,
        pixel_spacing_mm=3.0,
        slice_spacing_mm=2.5,
    )
    with open_study(info.zip_path) as st:
        volume = load_volume(rank_series(st).selected.series)
    pred, _ = demo.predict_volume(volume)
    assert pred.decisions["balanced"] == bool(label), pred
    assert (pred.probability >= 0.5) == bool(label) or pred.decisions["balanced"] == bool(label)
