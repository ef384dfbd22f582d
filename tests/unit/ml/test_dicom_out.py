"""DICOM results (ml/dicom_out): SR and Secondary Capture in the source study, valid per dciodvfy."""

from __future__ import annotations

import io
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicomcheck import dciodvfy_errors  # type: ignore[import-not-found]
from pydicom import dcmwrite

from ml.dicom_out import Finding, SourceReference, SourceUIDError, invalid_uids
from ml.dicom_out import content as codes
from ml.dicom_out.sc import build_sc
from ml.dicom_out.sr import build_sr
from ml.io import read_study
from ml.phantom import make_study

REAL = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "real-ct" / "cap002.zip"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> SourceReference:
    zp = tmp_path_factory.mktemp("dcm") / "phantom.zip"
    make_study(zp, seed=5)
    read = read_study(zp, decode=False, keep_source=True)
    assert read.source is not None
    return read.source


def _finding(**kw: object) -> Finding:
    base: dict[str, object] = {
        "probability": 0.93,
        "label": "pathology",
        "operating_point": "balanced",
        "threshold": 0.098,
        "model_name": "resnet10-demo",
        "model_version": "0.5.1",
        "model_sha256": "e5" * 32,
        "clinical_use": False,
        "peak_slice": 7,
    }
    base.update(kw)
    return Finding(**base)  # type: ignore[arg-type]


def _write(ds: pydicom.Dataset, path: Path) -> Path:
    dcmwrite(path, ds, enforce_file_format=True)
    return path


def _evaluations(sr: hd.sr.ComprehensiveSR) -> dict[str, list[str]]:
    """Concept name meaning → code values of every CODE item of the report."""
    out: dict[str, list[str]] = {}
    for item in hd.sr.utils.find_content_items(sr, value_type=hd.sr.ValueTypeValues.CODE, recursive=True):
        name = item.ConceptNameCodeSequence[0].CodeMeaning
        out.setdefault(name, []).append(item.ConceptCodeSequence[0].CodeValue)
    return out


def test_sr_in_the_source_study_valid_and_read_back(source: SourceReference, tmp_path: Path) -> None:
    sr = build_sr(_finding(), source)
    path = _write(sr, tmp_path / "sr.dcm")
    assert dciodvfy_errors(path) == []
    back = hd.sr.ComprehensiveSR.from_dataset(pydicom.dcmread(path))
    assert back.StudyInstanceUID == source.study_uid
    assert back.SeriesInstanceUID != source.series_uid
    assert back.SOPInstanceUID not in {i for _, i in source.instances}
    # the patient module is the source's
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"):
        assert str(getattr(back, kw)) == str(getattr(source.patient_study, kw))
    # every source instance is evidence, in the source series
    evidence = back.CurrentRequestedProcedureEvidenceSequence[0]
    series = evidence.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == source.series_uid
    assert {s.ReferencedSOPInstanceUID for s in series.ReferencedSOPSequence} == {
        i for _, i in source.instances
    }
    assert back.PreliminaryFlag == "PRELIMINARY" and back.VerificationFlag == "UNVERIFIED"
    evals = _evaluations(back)
    assert evals["Finding"] == ["S4CT-PATHOLOGY"]
    assert evals["Intended use of the result"] == ["S4CT-NOTCLIN"]
    nums = {
        i.ConceptNameCodeSequence[0].CodeValue: float(i.MeasuredValueSequence[0].NumericValue)
        for i in hd.sr.utils.find_content_items(back, value_type=hd.sr.ValueTypeValues.NUM, recursive=True)
    }
    assert nums == {"S4CT-PROB": pytest.approx(0.93), "S4CT-THRESHOLD": pytest.approx(0.098)}
    texts = {
        i.ConceptNameCodeSequence[0].CodeMeaning: i.TextValue
        for i in hd.sr.utils.find_content_items(back, value_type=hd.sr.ValueTypeValues.TEXT, recursive=True)
    }
    assert texts["Algorithm Name"] == "resnet10-demo" and texts["Algorithm Version"] == "0.5.1"
    assert texts["Algorithm Parameters"] == "sha256:" + "e5" * 32
    # the peak slice is the measurement group's source image
    images = hd.sr.utils.find_content_items(back, value_type=hd.sr.ValueTypeValues.IMAGE, recursive=True)
    assert [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in images] == [source.instances[7][1]]


def test_sr_indeterminate_with_reasons_and_clinical_model(source: SourceReference, tmp_path: Path) -> None:
    finding = _finding(
        label="indeterminate",
        indeterminate_reasons=("out_of_distribution", "no_lungs_found"),
        clinical_use=True,
        peak_slice=None,
    )
    path = _write(build_sr(finding, source), tmp_path / "sr.dcm")
    assert dciodvfy_errors(path) == []
    evals = _evaluations(hd.sr.ComprehensiveSR.from_dataset(pydicom.dcmread(path)))
    assert evals["Finding"] == ["S4CT-INDETERM"]
    assert evals["Reason the result is indeterminate"] == ["S4CT-OOD", "S4CT-NOLUNGS"]
    assert evals["Intended use of the result"] == ["S4CT-CLINICAL"]
    assert set(codes.LABEL_CODES) == {"pathology", "normal", "indeterminate"}


def test_secondary_capture_with_banner(source: SourceReference, tmp_path: Path) -> None:
    overlay = np.full((256, 256, 3), 90, dtype=np.uint8)
    sc = build_sc(_finding(), source, overlay)
    path = _write(sc, tmp_path / "sc.dcm")
    assert dciodvfy_errors(path) == []
    back = pydicom.dcmread(path)
    assert back.StudyInstanceUID == source.study_uid and back.SeriesInstanceUID != source.series_uid
    assert back.BurnedInAnnotation == "YES" and back.PhotometricInterpretation == "RGB"
    assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == source.instances[7][1]
    assert str(back.PatientID) == str(source.patient_study.PatientID)
    px = back.pixel_array
    band = px.shape[0] - overlay.shape[0]
    assert band > 0 and (px[band:] == overlay).all()  # the overlay below, unchanged
    assert (px[: band - 2].min(axis=2) > 200).any()  # white banner text on black
    assert "NOT FOR CLINICAL USE" in back.DerivationDescription
    assert "NOT FOR CLINICAL USE" not in _finding(clinical_use=True).banner()


def test_invalid_source_uids_are_refused_by_name(source: SourceReference) -> None:
    from dataclasses import replace

    bad = replace(source, study_uid="3f1c9d2e-5a1b-4c3d-9e8f-0a1b2c3d4e5f")
    assert invalid_uids(bad) == ["StudyInstanceUID"]
    with pytest.raises(SourceUIDError) as e:
        build_sr(_finding(), bad)
    assert e.value.code == "dicom_source_uids_invalid" and "3f1c9d2e" not in e.value.detail
    with pytest.raises(SourceUIDError):
        build_sc(_finding(), bad, np.zeros((8, 8, 3), dtype=np.uint8))


def test_real_sample_with_uuid_uids_is_refused() -> None:
    if not REAL.is_file():
        pytest.skip("real CT sample ../shared/data/real-ct/cap002.zip not present")
    read = read_study(REAL, decode=False, keep_source=True)
    assert read.source is not None
    assert "StudyInstanceUID" in invalid_uids(read.source)
    with pytest.raises(SourceUIDError):
        build_sr(_finding(), read.source)


def test_hostile_patient_and_study_values_are_not_copied_invalid(tmp_path: Path) -> None:
    """Values that would make the result invalid are written empty; the objects stay valid."""
    import zipfile

    zp = tmp_path / "s.zip"
    make_study(zp, seed=6)
    out = tmp_path / "hostile.zip"
    with zipfile.ZipFile(zp) as zin, zipfile.ZipFile(out, "w") as zout:
        for n in zin.namelist():
            data = zin.read(n)
            if not n.endswith("/"):
                ds = pydicom.dcmread(io.BytesIO(data))
                ds.PatientSex = "Male"
                ds.StudyDate = "2024-01-15"
                ds.StudyTime = "9h30"
                ds.AccessionNumber = "A" * 40
                ds.PatientName = "DOE^JOHN\\SMITH^JANE"
                buf = io.BytesIO()
                ds.save_as(buf)
                data = buf.getvalue()
            zout.writestr(n, data)
    read = read_study(out, decode=False, keep_source=True)
    assert read.source is not None
    ps = read.source.patient_study
    assert (ps.PatientSex, ps.StudyDate, ps.StudyTime, str(ps.PatientName)) == ("", "", "", "")
    assert ps.AccessionNumber == "A" * 16
    for kind, ds in (
        ("sr", build_sr(_finding(), read.source)),
        ("sc", build_sc(_finding(), read.source, np.zeros((32, 32, 3), np.uint8))),
    ):
        assert dciodvfy_errors(_write(ds, tmp_path / f"{kind}.dcm")) == [], kind


def test_segmentation_of_the_salient_region(source: SourceReference, tmp_path: Path) -> None:
    from ml.dicom_out.seg import build_seg

    shape = (len(source.instances), source.rows, source.columns)
    saliency = np.zeros(shape, np.float32)
    saliency[10:13, 20:30, 25:40] = 1.0
    saliency[11, 25, 30] = 1.5  # max 1.5: the region is >= 0.75
    saliency[20, 5, 5] = 0.5  # below half the maximum: not in the segment
    seg = build_seg(_finding(), source, saliency)
    assert seg is not None
    path = _write(seg, tmp_path / "seg.dcm")
    assert dciodvfy_errors(path) == []
    back = hd.seg.segread(path)
    assert (
        back.StudyInstanceUID == source.study_uid
        and back.FrameOfReferenceUID == source.frame_of_reference_uid
    )
    refs = [r.ReferencedSOPInstanceUID for r in back.ReferencedSeriesSequence[0].ReferencedInstanceSequence]
    assert sorted(refs) == sorted(source.instances[z][1] for z in (10, 11, 12))
    assert back.NumberOfFrames == 3
    frames = back.pixel_array
    assert frames.sum() == 3 * 10 * 15  # the whole region, bit-exact
    assert build_seg(_finding(), source, np.zeros(shape, np.float32)) is None  # nothing salient
    with pytest.raises(ValueError, match="shape"):
        build_seg(_finding(), source, np.zeros((2, 2, 2), np.float32))


def test_no_warning_quotes_a_patient_value(source: SourceReference) -> None:
    """highdicom warns about a one-component name by quoting it: an identifier, silenced (rule 7)."""
    import copy
    import warnings
    from dataclasses import replace

    from ml.dicom_out.seg import build_seg

    ps = copy.deepcopy(source.patient_study)
    ps.PatientName = "SOLONAMEPATIENT"
    odd = replace(source, patient_study=ps)
    saliency = np.zeros((len(odd.instances), odd.rows, odd.columns), np.float32)
    saliency[5, 5, 5] = 1.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_sr(_finding(), odd)
        build_sc(_finding(), odd, np.zeros((16, 16, 3), np.uint8))
        build_seg(_finding(), odd, saliency)
    assert not [w for w in caught if "SOLONAME" in str(w.message)]
