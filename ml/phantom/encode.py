"""DICOM objects of a phantom: header attributes, HU → stored values, encoding per transfer syntax."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLosslessSV1

from ml.phantom.generate import Phantom
from ml.phantom.options import TRANSFER_SYNTAX_UIDS, SeriesOptions, frame_of_reference_uid_for

CT_IMAGE_STORAGE: Final[str] = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE: Final[str] = "1.2.840.10008.5.1.4.1.1.2.1"
MR_IMAGE_STORAGE: Final[str] = "1.2.840.10008.5.1.4.1.1.4"
PET_IMAGE_STORAGE: Final[str] = "1.2.840.10008.5.1.4.1.1.128"
SECONDARY_CAPTURE_STORAGE: Final[str] = "1.2.840.10008.5.1.4.1.1.7"

#: pydicom's encoder for the transfer syntaxes it can write (JPEG Lossless SV1 goes through GDCM).
_ENCODER_PLUGINS: Final[dict[str, str]] = {
    TRANSFER_SYNTAX_UIDS["jpeg_ls"]: "pyjpegls",
    TRANSFER_SYNTAX_UIDS["jpeg2000"]: "pylibjpeg",
    TRANSFER_SYNTAX_UIDS["rle"]: "pylibjpeg",
}

#: DICOM keyword of each ``FakeIdentifiers`` field.
_IDENTIFIER_KEYWORDS: Final[dict[str, str]] = {
    "patient_name": "PatientName",
    "patient_id": "PatientID",
    "birth_date": "PatientBirthDate",
    "accession_number": "AccessionNumber",
    "sex": "PatientSex",
    "institution_name": "InstitutionName",
    "referring_physician": "ReferringPhysicianName",
    "study_id": "StudyID",
}


def sop_class_for(modality: str, multiframe: bool) -> str:
    """SOP Class UID for ``modality`` (Enhanced CT Image Storage for a multi-frame CT object)."""
    if modality == "CT":
        return ENHANCED_CT_IMAGE_STORAGE if multiframe else CT_IMAGE_STORAGE
    if modality == "MR":
        return MR_IMAGE_STORAGE
    if modality == "PT":
        return PET_IMAGE_STORAGE
    return SECONDARY_CAPTURE_STORAGE


def to_ds(values: float | Sequence[float] | npt.NDArray[np.float64]) -> Any:
    """Format numbers for DS elements (≤ 16 chars each)."""
    if isinstance(values, int | float):
        return _fmt_ds(float(values))
    return [_fmt_ds(float(v)) for v in values]


def _fmt_ds(v: float) -> str:
    s = f"{v:.6f}".rstrip("0").rstrip(".")
    if s in ("-0", ""):
        s = "0"
    return s[:16]


def base_dataset(ph: Phantom, o: SeriesOptions, sop_class: str, study_uid: str, series_uid: str) -> Dataset:
    """The attributes every object of a series shares: patient, study, series, equipment, pixels."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        setattr(ds, keyword, "20240115")
    ds.StudyTime = "093000"
    for keyword in ("SeriesTime", "AcquisitionTime", "ContentTime"):
        setattr(ds, keyword, "093100")
    for name, keyword in _IDENTIFIER_KEYWORDS.items():
        setattr(ds, keyword, getattr(o.identifiers, name))
    ds.Modality = o.modality
    ds.Manufacturer = o.manufacturer
    ds.StudyDescription = "CT CHEST PHANTOM"
    ds.SeriesDescription = o.series_description
    ds.ManufacturerModelName = o.model_name
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "HFS"
    if o.modality == "CT":
        ds.SliceThickness = to_ds(ph.slice_thickness_mm)
        ds.KVP = to_ds(o.kvp)
        ds.ConvolutionKernel = o.convolution_kernel
        if ph.spec.gantry_tilt_deg:
            ds.GantryDetectorTilt = to_ds(ph.spec.gantry_tilt_deg)
    elif o.modality == "MR":
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.SliceThickness = to_ds(ph.slice_thickness_mm)
        ds.EchoTime = "10"
        ds.RepetitionTime = "500"
        ds.MagneticFieldStrength = "1.5"
    else:
        ds.SliceThickness = to_ds(ph.slice_thickness_mm)
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = o.series_number
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = o.frame_of_reference_uid or frame_of_reference_uid_for(ph.spec.seed, o.uid_salt)
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = o.bits_stored
    ds.HighBit = o.bits_stored - 1
    ds.PixelRepresentation = 1 if o.pixel_representation == "int16" else 0
    return ds


def stored_values(
    hu: npt.NDArray[np.int16], slope: float, intercept: float, o: SeriesOptions
) -> npt.NDArray[Any]:
    """HU → stored values (rounded), clipped to the representable range."""
    v = np.rint((hu.astype(np.float64) - intercept) / slope)
    if o.pixel_representation == "int16":
        half = 1 << (o.bits_stored - 1)
        return np.clip(v, -half, half - 1).astype(np.int16)
    return np.clip(v, 0, (1 << o.bits_stored) - 1).astype(np.uint16)


def save_dataset(ds: Dataset, path: Path, ts: str, arr: npt.NDArray[Any]) -> None:
    """Attach pixels ``arr`` (frames, rows, cols or rows, cols), encode with ``ts`` and save."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    little = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    ds.PixelData = little.tobytes()
    ds["PixelData"].VR = "OW"
    if ts == str(ImplicitVRLittleEndian):
        meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.save_as(path, enforce_file_format=True)
    elif ts == str(JPEGLosslessSV1):
        ds.save_as(path, enforce_file_format=True)
        _gdcm_transcode(path, path, ts)
    elif ts in _ENCODER_PLUGINS:
        ds.compress(ts, arr, encoding_plugin=_ENCODER_PLUGINS[ts], generate_instance_uid=False)
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.save_as(path, enforce_file_format=True)


def _gdcm_transcode(src: Path, dst: Path, ts: str) -> None:
    """Re-encode a DICOM file with GDCM (pydicom cannot encode JPEG Lossless)."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    if not reader.Read():
        raise RuntimeError("GDCM could not read the file to transcode")
    change = gdcm.ImageChangeTransferSyntax()
    if ts == str(JPEGLosslessSV1):
        change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    else:
        raise ValueError(f"GDCM transcoding to {ts} is not wired")
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError("GDCM could not change the transfer syntax")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError("GDCM could not write the transcoded file")
