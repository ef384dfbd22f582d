"""`service4ct fit-ood`: OOD statistics for operator weights, fitted on the operator's own studies."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from cli import run_cli

from ml.inference import Predictor
from ml.model import Manifest
from ml.phantom import write_corpus
from tests.unit.app.test_predict import tiny_manifest

N = 21


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    d = tmp_path / "weights"
    d.mkdir()
    return tiny_manifest(d)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("operator")
    labels = write_corpus(root, N, seed=21, rows=48, cols=48, pixel_spacing_mm=8.0, slice_spacing_mm=5.0)
    (root / "studies" / "zz-broken.zip").write_bytes(b"PK\x03\x04 not really a zip")
    return Path(labels)


def test_fit_ood_on_a_folder_of_studies_publishes_checked_statistics(manifest: Path, corpus: Path) -> None:
    studies = corpus.parent / "studies"
    r = run_cli("fit-ood", "tiny", str(studies), "--manifest", str(manifest), "--device", "cpu")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["used"] == N and out["skipped"] == {"zip_invalid": 1}
    assert (out["method"], out["fitted_on"], out["n"]) == ("mahalanobis", "studies", N)
    assert 0.9 <= out["in_distribution_rate"] <= 1.0
    entry = Manifest.load(manifest).get("tiny")
    assert entry.ood is not None and entry.ood.uri == "tiny.ood.npz"
    assert entry.ood.sha256 == hashlib.sha256((manifest.parent / "tiny.ood.npz").read_bytes()).hexdigest()
    p = Predictor.from_manifest(manifest, device="cpu")
    assert p.ood is not None and p.ood.threshold == entry.ood.threshold
    assert p.predict(torch.zeros(1, 1, 32, 32, 32))[0].ood is not None


def test_fit_ood_on_a_labelled_corpus_with_another_method(manifest: Path, corpus: Path) -> None:
    r = run_cli(
        "fit-ood",
        "tiny",
        str(corpus),
        "--manifest",
        str(manifest),
        "--method",
        "energy",
        "--fitted-on",
        "site A",
    )
    assert r.returncode == 0, r.stderr
    entry = Manifest.load(manifest).get("tiny")
    assert entry.ood is not None and (entry.ood.method, entry.ood.fitted_on) == ("energy", "site A")


def test_fit_ood_refuses_too_few_studies_and_unknown_methods(
    manifest: Path, corpus: Path, tmp_path: Path
) -> None:
    few = tmp_path / "few"
    few.mkdir()
    for z in sorted((corpus.parent / "studies").glob("*.zip"))[:3]:
        shutil.copy(z, few / z.name)
    r = run_cli("fit-ood", "tiny", str(few), "--manifest", str(manifest))
    assert r.returncode == 2 and "at least 20" in r.stderr
    r = run_cli("fit-ood", "tiny", str(few), "--manifest", str(manifest), "--method", "odin")
    assert r.returncode == 2 and "method" in r.stderr
    r = run_cli("fit-ood", "nope", str(few), "--manifest", str(manifest))
    assert r.returncode == 2 and "model_unavailable" in r.stderr
    assert Manifest.load(manifest).get("tiny").ood is None  # nothing published by a refused fit
