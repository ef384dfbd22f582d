"""Uncompressed slices read straight from the member's bytes: the values pydicom gives, or its path."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ml.io.headers import native_pixel_span, read_header_at


def _dicom(ts: str, signed: bool, stored: int = 16, frames: int | None = None) -> tuple[bytes, np.ndarray]:
    rng = np.random.default_rng(int(signed) + stored)
    arr = rng.integers(-2000 if signed else 0, 3000, size=(6, 5)).astype("<i2" if signed else "<u2")
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ts
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, stored, stored - 1
    ds.PixelRepresentation = int(signed)
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.PixelData = arr.tobytes()
    buf = io.BytesIO()
    pydicom.dcmwrite(
        buf, ds, implicit_vr=ts == ImplicitVRLittleEndian, little_endian=True, enforce_file_format=True
    )
    return buf.getvalue(), arr


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("signed", [False, True])
def test_span_gives_pydicoms_values(ts: str, signed: bool) -> None:
    data, arr = _dicom(ts, signed)
    ds, stop = read_header_at(data)
    assert ds is not None
    span = native_pixel_span(ds, data, stop)
    assert span is not None
    offset, dtype = span
    got = np.frombuffer(data, dtype=dtype, count=arr.size, offset=offset).reshape(arr.shape)
    expected = pydicom.dcmread(io.BytesIO(data)).pixel_array
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, arr)


def test_span_refuses_what_needs_pydicom() -> None:
    data, _ = _dicom(ExplicitVRLittleEndian, True, stored=12)  # sign extension needed
    ds, stop = read_header_at(data)
    assert ds is not None and native_pixel_span(ds, data, stop) is None
    data, _ = _dicom(ExplicitVRLittleEndian, False)
    ds, stop = read_header_at(data)
    assert ds is not None
    assert native_pixel_span(ds, data[:-2], stop) is None  # truncated pixel data
    assert native_pixel_span(ds, data, stop + 1) is None  # not at the pixel data element
    assert native_pixel_span(ds, data, -1) is None
