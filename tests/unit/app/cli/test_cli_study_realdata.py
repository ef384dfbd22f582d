"""The real JPEG-lossless Siemens chest CT through `inspect` and `preprocess` (skipped when absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli import run_cli

pytestmark = pytest.mark.realdata


def _member_stems(zip_path: Path) -> set[str]:
    import zipfile

    with zipfile.ZipFile(zip_path) as zf:
        return {Path(n).stem for n in zf.namelist()}


def test_inspect_real_ct(real_ct_zip: Path) -> None:
    r = run_cli("inspect", str(real_ct_zip), "--json", "--log-level", "DEBUG")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    sel = rep["series"][0]
    assert sel["usable"] and sel["rank"] == 1
    sm = sel["summary"]
    assert sm["slices"] == 131 and sm["rows"] == 512 and sm["columns"] == 512
    assert sm["slice_spacing_mm"] == pytest.approx(2.0, abs=1e-3)
    assert sm["transfer_syntaxes"] == ["1.2.840.10008.1.2.4.70"]
    assert sm["orientation"] == "axial"
    # file names embed the pseudonymous PatientID: they must never be echoed
    out = r.stdout + r.stderr
    for stem in _member_stems(real_ct_zip):
        assert stem not in out


def test_preprocess_real_ct(real_ct_zip: Path, tmp_path: Path) -> None:
    out = tmp_path / "cap002.pt"
    r = run_cli("preprocess", str(real_ct_zip), "-o", str(out), "--size", "128", "--json")
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "cap002.json").read_text())
    assert meta["tensor_shape"] == [1, 1, 128, 128, 128]
    import torch

    t = torch.load(out)
    assert t.shape == (1, 1, 128, 128, 128) and t.dtype == torch.float32
    assert float(t.min()) >= -1.0 and float(t.max()) <= 1.0
    # the body fills the crop: a good share of voxels is tissue, not air
    assert float((t > -0.5).float().mean()) > 0.2
    for stem in _member_stems(real_ct_zip):
        assert stem not in r.stdout + r.stderr + (tmp_path / "cap002.json").read_text()
