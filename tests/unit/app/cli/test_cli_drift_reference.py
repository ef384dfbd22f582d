"""`service4ct drift-reference`: the reference histograms of a model recorded in its manifest entry."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cli import run_cli

from ml.evaluate.drift import DriftReference
from ml.model import Manifest
from ml.phantom import write_corpus
from tests.unit.app.test_predict import tiny_manifest


def test_drift_reference_is_recorded_without_touching_the_weights(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    manifest = tiny_manifest(weights)
    labels = write_corpus(
        tmp_path / "c", 6, seed=5, rows=48, cols=48, pixel_spacing_mm=8.0, slice_spacing_mm=5.0
    )
    (Path(labels).parent / "studies" / "zz-broken.zip").write_bytes(b"PK\x03\x04 not a zip")
    before = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in weights.iterdir() if p.suffix != ".json"
    }
    r = run_cli("drift-reference", "tiny", str(Path(labels).parent / "studies"), "--manifest", str(manifest))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n"] == 6 and out["skipped"] == {"zip_invalid": 1}
    entry = Manifest.load(manifest).get("tiny")
    ref = DriftReference.from_dict(entry.metrics["drift_reference"])
    assert ref.fitted_on == "studies" and ref.n == 6
    assert ref.numeric["slice_thickness_mm"].edges == (5.0,)  # every study has 5 mm slices
    assert (
        sum(ref.numeric["probability"].shares) == 1.0
        or abs(sum(ref.numeric["probability"].shares) - 1) < 1e-9
    )
    assert set(ref.categorical) == {"kernel", "manufacturer"}
    after = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in weights.iterdir() if p.suffix != ".json"
    }
    assert after == before
    r = run_cli("drift-reference", "nope", str(Path(labels).parent / "studies"), "--manifest", str(manifest))
    assert r.returncode != 0
