"""ml.io.read_study, the one study reader: stages and their timings, PHI tokens, series override, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ml.io
from ml.errors import InputError
from ml.io import STAGES, read_study
from ml.phantom import StudyInfo, make_study
from ml.preprocess import PreprocessConfig

SMALL = PreprocessConfig(target_size=(16, 16, 16))
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, StudyInfo]:
    d = tmp_path_factory.mktemp("read")
    small = {"rows": 32, "cols": 32, "pixel_spacing_mm": 12.0}
    return {
        "standard": make_study(d / "standard.zip", seed=31, n_slices=24, **small),  # type: ignore[arg-type]
        "multi_series": make_study(d / "multi.zip", seed=32, variant="multi_series", **small),  # type: ignore[arg-type]
        "non_ct": make_study(d / "mr.zip", seed=33, variant="non_ct", **small),  # type: ignore[arg-type]
    }


class Recorder:
    """The callbacks' calls, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.seconds: dict[str, float] = {}

    def started(self, stage: str) -> None:
        self.calls.append(("start", stage))

    def done(self, stage: str, seconds: float) -> None:
        self.calls.append(("done", stage))
        self.seconds[stage] = seconds

    def phi(self, tokens: frozenset[str]) -> None:
        self.calls.append(("phi", *sorted(tokens)))


def _read(source: Path | bytes, rec: Recorder, **kw: object) -> ml.io.StudyRead:
    return read_study(source, on_stage_start=rec.started, on_stage=rec.done, on_phi_tokens=rec.phi, **kw)  # type: ignore[arg-type]


def test_every_stage_is_timed_and_reported_in_order(studies: dict[str, StudyInfo]) -> None:
    rec = Recorder()
    read = _read(studies["standard"].zip_path, rec, preprocess=SMALL)
    assert tuple(read.timings) == STAGES
    assert rec.seconds == read.timings and all(s >= 0 for s in read.timings.values())
    stages = [c for c in rec.calls if c[0] != "phi"]
    assert stages == [(event, s) for s in STAGES for event in ("start", "done")]
    # the PHI tokens arrive right after the headers were read, before QC starts
    phi_at = next(i for i, c in enumerate(rec.calls) if c[0] == "phi")
    assert rec.calls[phi_at - 1] == ("done", "reading") and rec.calls[phi_at + 1] == ("start", "qc")
    assert read.preprocessed is not None and tuple(read.preprocessed.tensor.shape) == (1, 1, 16, 16, 16)
    assert read.volume is None  # released once the tensor exists (keep_volume=False)
    assert read.series.series_uid == studies["standard"].primary_series_uid


def test_without_preprocessing_or_decoding_the_later_stages_do_not_run(
    studies: dict[str, StudyInfo],
) -> None:
    info = studies["standard"]
    read = read_study(info.zip_path)
    assert tuple(read.timings) == ("reading", "qc", "decoding", "cleanup")
    assert read.preprocessed is None and read.volume is not None
    np.testing.assert_array_equal(read.volume.hu(), info.phantom.hu.astype(np.float32))
    header_only = read_study(info.zip_path, decode=False)
    assert tuple(header_only.timings) == ("reading", "qc", "cleanup") and header_only.volume is None
    assert header_only.qc.to_dict() == read.qc.to_dict()
    with pytest.raises(ValueError, match="decode"):
        read_study(info.zip_path, decode=False, preprocess=SMALL)


def test_keep_volume_keeps_the_decoded_series_beside_the_tensor(studies: dict[str, StudyInfo]) -> None:
    read = read_study(studies["standard"].zip_path, preprocess=SMALL, keep_volume=True)
    assert read.volume is not None and read.preprocessed is not None
    assert read.preprocessed.geometry.source == read.volume.geometry


def test_phi_tokens_are_collected_and_returned(studies: dict[str, StudyInfo]) -> None:
    info = studies["standard"]
    rec = Recorder()
    read = _read(info.zip_path, rec, decode=False)
    ids = info.identifiers
    assert {ids.patient_id, ids.patient_name, ids.accession_number} <= read.phi_tokens
    assert ("phi", *sorted(read.phi_tokens)) in rec.calls


def test_series_override_selects_that_series(studies: dict[str, StudyInfo]) -> None:
    info = studies["multi_series"]
    roles = {s.series_uid: s.role for s in info.series}
    ranked = read_study(info.zip_path, decode=False)
    assert roles[ranked.series.series_uid] == "primary" and not ranked.qc.override
    thick = next(u for u, r in roles.items() if r == "thick")
    read = read_study(info.zip_path, series_uid=thick)
    assert read.series.series_uid == thick and read.qc.override
    assert read.volume is not None and read.volume.series_uid == thick
    assert read.qc.to_dict()["selected_by"] == "override"


@pytest.mark.parametrize(
    ("variant", "series_uid", "code"),
    [("multi_series", "1.2.3.4.5.6", "series_not_found"), ("non_ct", None, "not_ct")],
)
def test_qc_codes_propagate_after_the_phi_tokens_were_handed_over(
    studies: dict[str, StudyInfo], tmp_path: Path, variant: str, series_uid: str | None, code: str
) -> None:
    rec = Recorder()
    with pytest.raises(InputError) as ei:
        _read(studies[variant].zip_path, rec, series_uid=series_uid, workdir=tmp_path)
    assert ei.value.code == code
    assert any(c[0] == "phi" and len(c) > 1 for c in rec.calls)  # the refused study's identifiers are known
    assert ("done", "qc") not in rec.calls and "cleanup" not in rec.seconds
    assert list(tmp_path.iterdir()) == []  # the extracted files are removed all the same


def test_archive_errors_propagate_with_their_code(tmp_path: Path) -> None:
    rec = Recorder()
    with pytest.raises(InputError) as ei:
        _read(b"PK\x03\x04 not really a zip", rec, workdir=tmp_path)
    assert ei.value.code == "zip_invalid"
    assert rec.calls == [("start", "reading")]
    assert list(tmp_path.iterdir()) == []


def test_bytes_read_like_the_path(studies: dict[str, StudyInfo], tmp_path: Path) -> None:
    info = studies["standard"]
    from_bytes = read_study(info.zip_path.read_bytes(), workdir=tmp_path)
    from_path = read_study(info.zip_path)
    assert from_bytes.qc.to_dict() == from_path.qc.to_dict()
    assert from_bytes.volume is not None and from_path.volume is not None
    np.testing.assert_array_equal(from_bytes.volume.stored, from_path.volume.stored)
    assert list(tmp_path.iterdir()) == []


def test_package_names_resolve_and_importing_it_stays_light() -> None:
    for name in ml.io.__all__:
        assert getattr(ml.io, name) is not None, name
    with pytest.raises(AttributeError):
        _ = ml.io.header_int  # type: ignore[attr-defined]  # a submodule's name, not the package's
    code = (
        "import sys\nfrom ml.io import ZipLimits, sha256_file\n"
        "print(sorted(m for m in ('pydicom', 'numpy', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
