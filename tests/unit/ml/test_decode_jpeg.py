"""JPEG decoding through libjpeg-turbo (``imagecodecs``): bit for bit what pydicom decodes.

Every transfer syntax the phantom writer produces, the JPEG processes it does not write
(baseline 8-bit, extended 12-bit, lossless with every predictor) encoded here, signed and
12-bit samples, multi-frame objects, the real sample when present, the thread pool and
the fallback to pydicom for what libjpeg-turbo refuses.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import generate_uid

from ml.errors import DicomError
from ml.io import decode
from ml.io.decode import JPEG_TRANSFER_SYNTAXES, load_volume, read_pixels
from ml.io.discovery import discover_series
from ml.phantom import TRANSFER_SYNTAX_UIDS, PhantomSpec, SeriesOptions, generate_phantom, write_series

SMALL = {"rows": 48, "cols": 40, "pixel_spacing_mm": 7.0, "slice_spacing_mm": 5.0}


@pytest.fixture(scope="module")
def phantom():  # type: ignore[no-untyped-def]
    return generate_phantom(PhantomSpec(seed=5, n_slices=9, **SMALL))


def _pydicom(path: Path) -> np.ndarray:
    return pydicom.dcmread(path).pixel_array


def _same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.array_equal(a, b)


@pytest.mark.parametrize(
    ("ts", "representation", "bits_stored"),
    [(ts, "uint16", 16) for ts in TRANSFER_SYNTAX_UIDS]
    + [("jpeg_lossless", "uint16", 12), ("jpeg_lossless", "int16", 16), ("jpeg_lossless", "int16", 12)],
)
def test_phantom_series_bit_exact(
    phantom, ts: str, representation: str, bits_stored: int, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    opts = SeriesOptions(
        transfer_syntax=ts,  # type: ignore[arg-type]
        pixel_representation=representation,  # type: ignore[arg-type]
        bits_stored=bits_stored,
        rescale_intercept=0.0 if representation == "int16" else -1024.0,
    )
    files = write_series(phantom, tmp_path, opts)
    for f in files:
        ds = pydicom.dcmread(f)
        if TRANSFER_SYNTAX_UIDS[ts] in JPEG_TRANSFER_SYNTAXES:
            assert decode._jpeg_pixels(ds) is not None  # libjpeg-turbo took it
        _same(read_pixels(f), _pydicom(f))
    study = discover_series(files)
    (series,) = study.series
    vol = load_volume(series, threads=3)
    expected = np.stack([_pydicom(s.path) for s in series.slices])
    _same(vol.stored, expected)


def test_multiframe_jpeg_lossless(phantom, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (f,) = write_series(phantom, tmp_path, SeriesOptions(multiframe=True, transfer_syntax="jpeg_lossless"))
    assert decode._jpeg_pixels(pydicom.dcmread(f)) is not None
    _same(read_pixels(f), _pydicom(f))
    (series,) = discover_series([f]).series
    vol = load_volume(series, threads=2)
    _same(vol.stored, np.stack([_pydicom(f)[s.frame] for s in series.slices]))


def _jpeg_file(
    path: Path, ts: str, frames: list[bytes], arr: np.ndarray, *, signed: bool = False, bits_stored: int
) -> Path:
    """A minimal CT object with ``frames`` (encoded JPEG) as its encapsulated pixel data."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.Rows, ds.Columns = arr.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8 if arr.dtype.itemsize == 1 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ts
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    return path


def _image(bits: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:40, 0:56]
    smooth = (np.sin(x / 5.0) + np.cos(y / 7.0) + 2.0) / 4.0 * ((1 << bits) - 1)
    noisy = smooth + rng.normal(0, (1 << bits) / 64, smooth.shape)
    return np.clip(np.rint(noisy), 0, (1 << bits) - 1).astype(np.uint8 if bits <= 8 else np.uint16)


@pytest.mark.parametrize(
    ("ts", "bits", "kw"),
    [
        ("1.2.840.10008.1.2.4.50", 8, {"level": 90}),
        *[("1.2.840.10008.1.2.4.57", 16, {"lossless": True, "predictor": p}) for p in range(1, 8)],
        ("1.2.840.10008.1.2.4.57", 12, {"lossless": True, "predictor": 6}),
        ("1.2.840.10008.1.2.4.70", 16, {"lossless": True, "predictor": 1}),
    ],
)
def test_every_jpeg_process_bit_exact(ts: str, bits: int, kw: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    frames = [_image(bits, seed) for seed in range(3)]
    enc = [imagecodecs.jpeg8_encode(a, bitspersample=bits, **kw) for a in frames]
    one = _jpeg_file(tmp_path / "one.dcm", ts, enc[:1], frames[0], bits_stored=bits)
    many = _jpeg_file(tmp_path / "many.dcm", ts, enc, frames[0], bits_stored=bits)
    for f in (one, many):
        assert decode._jpeg_pixels(pydicom.dcmread(f)) is not None
        _same(read_pixels(f), _pydicom(f))
    if kw.get("lossless"):
        _same(read_pixels(one), frames[0].astype(read_pixels(one).dtype))


def test_signed_lossless_sign_extension(tmp_path: Path) -> None:
    hu = (_image(12).astype(np.int32) - 2048).astype(np.int16)  # −2048 … 2047 in 12 bits
    pattern = (hu.astype(np.int32) & 0xFFF).astype(np.uint16)  # the 12-bit two's complement JPEG codes
    enc = imagecodecs.jpeg8_encode(pattern, lossless=True, predictor=1, bitspersample=12)
    f = _jpeg_file(tmp_path / "s.dcm", "1.2.840.10008.1.2.4.70", [enc], hu, signed=True, bits_stored=12)
    got = read_pixels(f)
    assert got.dtype == np.int16 and np.array_equal(got, hu)
    _same(got, _pydicom(f))


def test_extended_lossy_stays_with_pydicom(tmp_path: Path) -> None:
    """12-bit lossy JPEG: libjpeg-turbo's inverse DCT rounds differently, so pydicom decodes it."""
    a = _image(12)
    enc = imagecodecs.jpeg8_encode(a, bitspersample=12, level=90)
    f = _jpeg_file(tmp_path / "x.dcm", "1.2.840.10008.1.2.4.51", [enc], a, bits_stored=12)
    assert decode._jpeg_pixels(pydicom.dcmread(f)) is None
    _same(read_pixels(f), _pydicom(f))


def test_refused_frame_falls_back_to_pydicom(tmp_path: Path) -> None:
    """What libjpeg-turbo is not given (truncated) or refuses (garbage) goes to pydicom."""
    good = imagecodecs.jpeg8_encode(_image(16), lossless=True, predictor=1, bitspersample=16)
    cut = _jpeg_file(
        tmp_path / "c.dcm", "1.2.840.10008.1.2.4.70", [good[: len(good) // 3]], _image(16), bits_stored=16
    )
    assert decode._jpeg_pixels(pydicom.dcmread(cut)) is None
    _same(read_pixels(cut), _pydicom(cut))
    junk = b"\xff\xd8" + bytes(range(256)) * 4 + b"\xff\xd9"
    bad = _jpeg_file(tmp_path / "b.dcm", "1.2.840.10008.1.2.4.70", [junk], _image(16), bits_stored=16)
    assert decode._jpeg_pixels(pydicom.dcmread(bad)) is None
    with pytest.raises(DicomError) as e:
        read_pixels(bad)
    assert e.value.code in ("dicom_invalid", "unsupported_transfer_syntax")


def test_threads_give_the_same_volume_and_the_first_error(phantom, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    files = write_series(phantom, tmp_path, SeriesOptions(transfer_syntax="jpeg_lossless"))
    (series,) = discover_series(files).series
    one, four = load_volume(series, threads=1), load_volume(series, threads=4)
    _same(one.stored, four.stored)
    series.slices[5].path.write_bytes(b"DICM" * 10)
    with pytest.raises(DicomError) as e:
        load_volume(series, threads=4)
    assert e.value.code == "dicom_invalid"


def test_real_sample_bit_exact(real_ct_zip: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(real_ct_zip) as z:
        z.extractall(tmp_path)
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    study = discover_series(files)
    series = max(study.series, key=lambda s: len(s.slices))
    ds = pydicom.dcmread(series.slices[0].path)
    assert str(ds.file_meta.TransferSyntaxUID) in JPEG_TRANSFER_SYNTAXES
    assert decode._jpeg_pixels(ds) is not None
    vol = load_volume(series)
    _same(vol.stored, np.stack([_pydicom(s.path) for s in series.slices]))
