"""The shipped demo model loads from the repo and classifies a fresh phantom pair correctly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ml.explain.methods import explain
from ml.geometry import CTVolume
from ml.inference import Predictor
from ml.io import read_study, sha256_file
from ml.model import Manifest
from ml.phantom import StudyInfo, make_study

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


def _fresh_study(
    tmp_path: Path, label: int, kinds: tuple[str, ...] | None, seed: int
) -> tuple[StudyInfo, CTVolume]:
    """A DICOM phantom of the demo corpus's geometry (128² pixels of 3 mm, 2.5 mm slices), read back."""
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
    volume = read_study(info.zip_path).volume
    assert volume is not None
    return info, volume


@pytest.mark.parametrize(("label", "kinds", "seed"), [(0, None, 424242), (1, ("consolidation",), 515151)])
def test_demo_classifies_fresh_phantoms(
    demo: Predictor, tmp_path: Path, label: int, kinds: tuple[str, ...] | None, seed: int
) -> None:
    _, volume = _fresh_study(tmp_path, label, kinds, seed)
    pred, _ = demo.predict_volume(volume)
    assert pred.decisions["balanced"] == bool(label), pred
    assert (pred.probability >= 0.5) == bool(label) or pred.decisions["balanced"] == bool(label)


@pytest.mark.parametrize(("kinds", "seed"), [(("consolidation",), 515151), (("nodule",), 626262)])
def test_demo_gradcam_peak_lies_on_the_lesion(
    demo: Predictor, tmp_path: Path, kinds: tuple[str, ...], seed: int
) -> None:
    """The product's default explanation (Grad-CAM, margin, layer4) peaks within 5 mm of the
    phantom's ground-truth lesion, in patient mm through the preprocessing geometry
    (bench/explain.py measures the rate over 60 held-out phantoms)."""
    info, volume = _fresh_study(tmp_path, 1, kinds, seed)
    _, result = demo.predict_volume(volume)
    cam = explain(demo, result.tensor, "gradcam").map
    peak = np.unravel_index(int(cam.argmax()), tuple(cam.shape))
    peak_lps = result.geometry.model_to_lps(np.asarray([peak], np.float64))[0]
    ph = info.phantom
    lesion_lps = ph.geometry.index_to_lps(np.argwhere(ph.mask > 0)[:, ::-1].astype(np.float64))
    dist = np.linalg.norm(lesion_lps - peak_lps[None], axis=1).min()
    assert dist <= 5.0, f"Grad-CAM peak {peak_lps.round(1)} mm is {dist:.1f} mm from the lesion"
