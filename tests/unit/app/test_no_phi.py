"""No patient identifier (tags or identifier-bearing file names) in CLI output or logs."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pydicom
import pytest
from cli import run_cli

from ml.phantom import PHI_IDENTIFIERS, StudyInfo, make_study


def _identifiers(info: StudyInfo) -> list[str]:
    ids = info.identifiers
    values = [
        ids.patient_name,
        ids.patient_id,
        ids.birth_date,
        ids.accession_number,
        ids.institution_name,
        ids.referring_physician,
    ]
    parts = [p for v in values for p in v.replace("^", " ").split() if len(p) >= 5]
    return sorted(set(values + parts))


def _cli(*args: str) -> str:
    r = run_cli(*args)
    return f"rc={r.returncode}\n{r.stdout}\n{r.stderr}"


@pytest.fixture(scope="module")
def phi_study(tmp_path_factory: pytest.TempPathFactory) -> StudyInfo:
    return make_study(tmp_path_factory.mktemp("phi") / "study.zip", seed=11, variant="phi")


def test_fixture_really_carries_identifiers(phi_study: StudyInfo) -> None:
    with zipfile.ZipFile(phi_study.zip_path) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        assert any(PHI_IDENTIFIERS.patient_id in n for n in names)
        ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(zf.read(names[0])))
    assert str(ds.PatientName) == PHI_IDENTIFIERS.patient_name
    assert ds.PatientID == PHI_IDENTIFIERS.patient_id
    assert ds.PatientBirthDate == PHI_IDENTIFIERS.birth_date


@pytest.mark.parametrize("fmt", [[], ["--json"]])
def test_inspect_output_and_debug_logs_have_no_identifiers(phi_study: StudyInfo, fmt: list[str]) -> None:
    out = _cli("inspect", str(phi_study.zip_path), "--log-level", "DEBUG", *fmt)
    assert "rc=0" in out
    for token in _identifiers(phi_study):
        assert token.lower() not in out.lower(), f"identifier leaked: {token}"


def test_preprocess_output_and_metadata_have_no_identifiers(phi_study: StudyInfo, tmp_path: Path) -> None:
    out = _cli(
        "preprocess",
        str(phi_study.zip_path),
        "-o",
        str(tmp_path / "t.pt"),
        "--size",
        "32",
        "--log-level",
        "DEBUG",
        "--json",
    )
    assert "rc=0" in out
    text = out + (tmp_path / "t.json").read_text()
    for token in _identifiers(phi_study):
        assert token.lower() not in text.lower(), f"identifier leaked: {token}"


def test_error_output_has_no_identifiers(tmp_path: Path) -> None:
    info = make_study(tmp_path / "few.zip", seed=2, variant="few_slices", identifiers=PHI_IDENTIFIERS)
    out = _cli("inspect", str(info.zip_path), "--log-level", "DEBUG")
    assert "rc=2" in out and "too_few_slices" in out
    for token in _identifiers(info):
        assert token.lower() not in out.lower(), f"identifier leaked: {token}"
