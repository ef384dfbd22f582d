"""`service4ct phantom`: a seeded corpus (studies, labels, masks) that `inspect` reads back."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
from cli import run_cli


def test_phantom_corpus_then_inspect(tmp_path: Path) -> None:
    r = run_cli(
        "phantom",
        str(tmp_path / "c"),
        "--n",
        "4",
        "--seed",
        "3",
        "--rows",
        "64",
        "--pixel-spacing",
        "6",
        "--slice-spacing",
        "5",
    )
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader((tmp_path / "c" / "labels.csv").open()))
    assert len(rows) == 4 and sorted(int(x["label"]) for x in rows) == [0, 0, 1, 1]
    for row in rows:
        mask = nib.load(str(tmp_path / "c" / "masks" / f"{row['study_id']}.nii.gz"))
        assert (np.asarray(mask.dataobj).max() > 0) == (row["label"] == "1")
    r = run_cli("inspect", str(tmp_path / "c" / rows[0]["zip"]))
    assert r.returncode == 0, r.stderr
    assert "usable" in r.stdout and "selected:" in r.stdout


def test_unknown_variant_is_refused(tmp_path: Path) -> None:
    r = run_cli("phantom", str(tmp_path / "c"), "--n", "1", "--variant", "nope")
    assert r.returncode == 2 and "unknown variant" in r.stderr
