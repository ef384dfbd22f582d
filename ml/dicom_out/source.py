"""What the DICOM results need from the source series: patient and study modules, UIDs.

:func:`read_source` reads the header of the selected series' first file (while the
extracted files still exist) and keeps only the Patient, General Study and Patient
Study attributes, the frame of reference and the UID of every slice. The result
objects are written into the patient's study (same StudyInstanceUID, patient module
copied), so these values are identifiers: they stay in memory, are never logged,
and :func:`invalid_uids` reports *which* UID is invalid, never its value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

from ml.io.headers import header_str, header_value, read_header
from ml.io.series import SeriesInfo

__all__ = ["SourceReference", "SourceUIDError", "invalid_uids", "read_source", "reference_dataset"]

#: Patient, General Study and Patient Study attributes copied into every result object
#: (type 2 ones are written empty when the source lacks them)
PATIENT_STUDY_KEYWORDS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
)
_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
_FORMATS = {
    "PatientBirthDate": re.compile(r"^\d{8}$"),
    "StudyDate": re.compile(r"^\d{8}$"),
    "StudyTime": re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$"),
    "PatientSex": re.compile(r"^[MFO]$"),
    "PatientAge": re.compile(r"^\d{3}[DWMY]$"),
    "PatientIdentityRemoved": re.compile(r"^(YES|NO)$"),
}
_MAX_LEN = {"StudyID": 16, "AccessionNumber": 16, "PatientID": 64, "IssuerOfPatientID": 64}


class SourceUIDError(ValueError):
    """The source series' UIDs are not valid DICOM UIDs: no result object can reference them.

    ``code`` is ``dicom_source_uids_invalid``; ``fields`` names the offending attributes.
    """

    code = "dicom_source_uids_invalid"

    def __init__(self, fields: list[str]) -> None:
        self.fields = fields
        self.detail = (
            "the source study has invalid DICOM UIDs ("
            + ", ".join(fields)
            + "); DICOM results would not be valid objects and are not written"
        )
        super().__init__(self.detail)


@dataclass(frozen=True)
class SourceReference:
    """The source series as the result objects reference it.

    Attributes:
        patient_study: a dataset with only the Patient / General Study / Patient Study
            attributes of the source (identifiers: never log it).
        study_uid, series_uid, frame_of_reference_uid: as read (unchecked; see :func:`invalid_uids`).
        modality: of the source series (``CT``).
        instances: (SOPClassUID, SOPInstanceUID) of each slice, in the series' sorted slice
            order (index = slice index z of the source volume); frames of a multi-frame
            object repeat its UIDs.
        orientation: ImageOrientationPatient (row cosine, column cosine) of the slices.
        positions_mm: ImagePositionPatient (LPS mm) of each slice, in the same order.
        rows, columns, pixel_spacing_mm (row, column spacing), slice_thickness_mm: the image grid.
        multiframe: the series is one multi-frame object (no per-slice instances to reference).
    """

    patient_study: Dataset
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    modality: str
    instances: tuple[tuple[str, str], ...]
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    positions_mm: tuple[tuple[float, float, float], ...] = ()
    rows: int = 0
    columns: int = 0
    pixel_spacing_mm: tuple[float, float] = (1.0, 1.0)
    slice_thickness_mm: float | None = None
    multiframe: bool = False

    def first_indices(self) -> list[int]:
        """The slice index of each instance's first frame (frames of one object share its UIDs)."""
        seen: set[str] = set()
        out = []
        for i, (_, inst) in enumerate(self.instances):
            if inst not in seen:
                seen.add(inst)
                out.append(i)
        return out

    def patient_orientation(self) -> tuple[str, str]:
        """DICOM PatientOrientation of a slice shown as stored: the patient directions of rows and columns."""
        letters = (("L", "R"), ("P", "A"), ("H", "F"))

        def label(v: tuple[float, ...]) -> str:
            k = max(range(3), key=lambda i: abs(v[i]))
            return letters[k][0 if v[k] >= 0 else 1]

        return label(self.orientation[:3]), label(self.orientation[3:6])


def _clean(kw: str, value: Any) -> Any:
    """A copied value, or "" when it would make the result object invalid (hostile headers)."""
    if isinstance(value, MultiValue | list | tuple):  # every copied attribute has one value
        return ""
    if kw in ("PatientName", "ReferringPhysicianName"):
        text = str(value)
        return text if len(text) <= 64 * 5 and "\\" not in text else ""
    if isinstance(value, str):
        v = value.strip()
        fmt = _FORMATS.get(kw)
        if fmt is not None and v and not fmt.match(v):
            return ""
        return v[: _MAX_LEN.get(kw, 64)]
    return value


def read_source(series: SeriesInfo) -> SourceReference:
    """Read the reference of ``series`` from its first file's header (its file must still exist)."""
    if not series.slices:
        raise ValueError("the series has no slices")
    ds = read_header(series.slices[0].source()) or Dataset()
    ps = Dataset()
    charset = header_value(ds, "SpecificCharacterSet")
    if charset:
        ps.SpecificCharacterSet = charset
    for kw in PATIENT_STUDY_KEYWORDS:
        value = header_value(ds, kw)
        if value is None or value == "":
            if kw in _TYPE2:
                setattr(ps, kw, "")
            continue
        cleaned = _clean(kw, value)
        if cleaned != "" or kw in _TYPE2:
            setattr(ps, kw, cleaned)
    sop_class = series.sop_class_uid
    return SourceReference(
        patient_study=ps,
        study_uid=series.study_uid,
        series_uid=series.series_uid,
        frame_of_reference_uid=header_str(ds, "FrameOfReferenceUID"),
        modality=series.modality or "CT",
        instances=tuple((sop_class, s.sop_instance_uid) for s in series.slices),
        orientation=series.slices[0].orientation,
        positions_mm=tuple(s.position_mm for s in series.slices),
        rows=series.rows,
        columns=series.columns,
        pixel_spacing_mm=series.pixel_spacing_mm,
        slice_thickness_mm=series.slice_thickness_mm,
        multiframe=series.multiframe,
    )


def _valid(uid: str) -> bool:
    return bool(uid) and UID(uid).is_valid


def invalid_uids(source: SourceReference) -> list[str]:
    """The names of the source attributes whose values are not valid DICOM UIDs (empty: all valid)."""
    bad = [
        name
        for name, uid in (
            ("StudyInstanceUID", source.study_uid),
            ("SeriesInstanceUID", source.series_uid),
            ("FrameOfReferenceUID", source.frame_of_reference_uid),
        )
        if not _valid(uid)
    ]
    if not source.instances or not all(_valid(c) for c, _ in source.instances):
        bad.append("SOPClassUID")
    if not all(_valid(i) for _, i in source.instances):
        bad.append("SOPInstanceUID")
    return bad


def reference_dataset(source: SourceReference, index: int = 0) -> Dataset:
    """A header-only dataset of slice ``index``: patient and study modules plus its UIDs.

    What highdicom's constructors copy the patient and study from, and what an SR lists
    as evidence.
    """
    ds = Dataset()
    ds.update(source.patient_study)
    ds.StudyInstanceUID = source.study_uid
    ds.SeriesInstanceUID = source.series_uid
    ds.Modality = source.modality
    ds.SOPClassUID, ds.SOPInstanceUID = source.instances[index]
    if source.frame_of_reference_uid:
        ds.FrameOfReferenceUID = source.frame_of_reference_uid
    return ds
