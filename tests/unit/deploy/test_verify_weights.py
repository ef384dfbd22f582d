"""The image build's weight check: weights and OOD statistics files are verified by sha256."""

from __future__ import annotations

import json
import runpy
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
main = runpy.run_path(str(ROOT / "deploy" / "docker" / "verify_weights.py"))["main"]


@pytest.fixture()
def weights(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "weights", tmp_path / "weights")
    return tmp_path / "weights"


def test_the_shipped_manifest_verifies(weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(str(weights / "manifest.json")) == 0
    out = capsys.readouterr().out
    assert ".ood.npz verified" in out and ".pt verified" in out


def test_a_tampered_ood_statistics_file_fails_the_build(
    weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = json.loads((weights / "manifest.json").read_text())
    oods = [m["ood"]["uri"] for m in manifest["models"].values() if m.get("ood")]
    assert oods
    with (weights / oods[0]).open("ab") as fh:
        fh.write(b"\0")
    assert main(str(weights / "manifest.json")) == 1
    assert "sha256" in capsys.readouterr().err
