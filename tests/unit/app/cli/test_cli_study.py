"""`service4ct inspect` and `preprocess`: QC error codes, the real-like study, the model's preprocessing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli import ROOT, run_cli

from ml.phantom import make_study

MANIFEST = ROOT / "weights" / "manifest.json"


@pytest.mark.parametrize(("variant", "code"), [("non_ct", "not_ct"), ("thick", "slice_thickness_too_large")])
def test_inspect_error_codes(tmp_path: Path, variant: str, code: str) -> None:
    info = make_study(tmp_path / "s.zip", seed=1, variant=variant)
    r = run_cli("inspect", str(info.zip_path))
    assert r.returncode == 2 and r.stderr.startswith(f"error: {code}: ")
    r = run_cli("inspect", str(info.zip_path), "--json")
    assert r.returncode == 2 and json.loads(r.stdout)["error"] == code


def test_not_a_zip(tmp_path: Path) -> None:
    p = tmp_path / "x.zip"
    p.write_bytes(b"%PDF-1.4 not a zip")
    r = run_cli("preprocess", str(p), "-o", str(tmp_path / "o.pt"), "--json")
    assert r.returncode == 2 and json.loads(r.stdout)["error"] == "zip_invalid"


def test_real_like_study_inspect_and_preprocess(tmp_path: Path) -> None:
    """A JPEG-lossless, Siemens-style 150×512² 2 mm study (extension-less file names)."""
    info = make_study(tmp_path / "real_like.zip", seed=7, variant="real_like")
    r = run_cli("inspect", str(info.zip_path), "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    sm = rep["series"][0]["summary"]
    assert sm["slices"] == 150 and sm["rows"] == 512 and sm["manufacturer"] == "SIEMENS"
    assert sm["transfer_syntaxes"] == ["1.2.840.10008.1.2.4.70"]
    r = run_cli("preprocess", str(info.zip_path), "-o", str(tmp_path / "t.pt"), "--size", "128", "--json")
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "t.json").read_text())
    assert meta["series_uid"] == info.primary_series_uid
    assert meta["tensor_shape"] == [1, 1, 128, 128, 128]
    # the crop excludes the air above the body (anterior-posterior axis y)
    crop = meta["crop_box_zyx"]
    extent = [b - a for a, b in zip(crop["start_zyx"], crop["stop_zyx"], strict=True)]
    assert extent[1] < meta["geometry"]["resampled"]["size"][1] - 20


def test_preprocess_defaults_to_the_models_preprocessing(tmp_path: Path) -> None:
    """Without options the manifest's default model's config; --manifest/--model pick another; --size wins."""
    info = make_study(tmp_path / "s.zip", seed=2)

    def preprocess(*options: str) -> dict[str, object]:
        r = run_cli("preprocess", str(info.zip_path), "-o", str(tmp_path / "t.pt"), "--json", *options)
        assert r.returncode == 0, r.stderr
        meta: dict[str, object] = json.loads(r.stdout)
        return meta

    shipped = json.loads(MANIFEST.read_text())
    entry = shipped["models"][shipped["default"]]
    meta = preprocess()
    assert meta["preprocess_config"] == entry["preprocess"]
    assert meta["tensor_shape"] == [1, 1, *entry["input_size"]]

    other = {**entry, "input_size": [48, 48, 48]}
    other["preprocess"] = {**entry["preprocess"], "target_size": [48, 48, 48], "hu_window": [-900.0, 300.0]}
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({**shipped, "models": {entry["name"]: other}}))
    meta = preprocess("--manifest", str(manifest), "--model", entry["name"])
    assert meta["preprocess_config"] == other["preprocess"] and meta["tensor_shape"] == [1, 1, 48, 48, 48]
    meta = preprocess("--manifest", str(manifest), "--size", "32")
    assert meta["preprocess_config"] == {**other["preprocess"], "target_size": [32, 32, 32]}
    assert meta["tensor_shape"] == [1, 1, 32, 32, 32]

    r = run_cli("preprocess", str(info.zip_path), "-o", str(tmp_path / "t.pt"), "--model", "nope", "--json")
    assert r.returncode == 2 and json.loads(r.stdout)["error"] == "model_unavailable"
