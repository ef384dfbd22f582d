"""Pixel decoding of a discovered series into one volume of stored values (HU via its rescale)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset

from ml.errors import DicomError
from ml.geometry import CTVolume
from ml.io.headers import header_int
from ml.io.series import SeriesInfo

__all__ = ["load_volume"]

_NATIVE_LE = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})


def _native_pixels(ds: Dataset) -> npt.NDArray[Any] | None:
    """Zero-copy view of uncompressed little-endian single-frame 16-bit pixels, else None.

    Only when every bit of the container is used (BitsStored == BitsAllocated), so
    no masking or sign extension is needed; other cases go through pydicom.
    """
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    if ts not in _NATIVE_LE or "PixelData" not in ds:
        return None
    bits = header_int(ds, "BitsAllocated", 0)
    if bits != 16 or header_int(ds, "BitsStored", 0) != 16 or header_int(ds, "NumberOfFrames", 1) != 1:
        return None
    if header_int(ds, "SamplesPerPixel", 1) != 1:
        return None
    rows, cols = header_int(ds, "Rows", 0), header_int(ds, "Columns", 0)
    raw = ds.PixelData
    if not isinstance(raw, bytes) or len(raw) < rows * cols * 2:
        return None  # let pydicom produce its error for short pixel data
    dtype = "<i2" if header_int(ds, "PixelRepresentation", 0) == 1 else "<u2"
    return np.frombuffer(raw, dtype=dtype, count=rows * cols).reshape(rows, cols)


def _decode(path: Path) -> npt.NDArray[Any]:
    try:
        ds = pydicom.dcmread(path)
        if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            raise DicomError("dicom_invalid", "an image has no pixel data")
        fast = _native_pixels(ds)
        if fast is not None:
            return fast
        arr: npt.NDArray[Any] = ds.pixel_array
        return arr
    except DicomError:
        raise
    except NotImplementedError as e:
        raise DicomError(
            "unsupported_transfer_syntax", "pixel data uses a transfer syntax that cannot be decoded"
        ) from e
    except RecursionError as e:
        raise DicomError("dicom_invalid", "an image has too deeply nested sequences") from e
    except RuntimeError as e:
        msg = str(e).lower()
        if "transfer syntax" in msg or "plugin" in msg or "decod" in msg:
            raise DicomError("unsupported_transfer_syntax", "pixel data could not be decoded") from e
        raise DicomError("dicom_invalid", "pixel data could not be read") from e
    except Exception as e:
        raise DicomError("dicom_invalid", "an image is truncated or its pixel data is unreadable") from e


def load_volume(series: SeriesInfo, *, max_bytes: int = 6 << 30) -> CTVolume:
    """Decode all slices of ``series`` into one (z, y, x) array of stored values.

    When every slice has the same RescaleSlope/Intercept the array keeps the
    stored integer type; otherwise it is float32 HU (slope 1, intercept 0).
    Raises ``dicom_invalid`` / ``unsupported_transfer_syntax`` on decode errors.
    """
    if not series.slices:
        raise DicomError("no_dicom", "the series has no images with plane geometry")
    geom = series.geometry()
    nz, ny, nx = geom.shape_zyx
    rescales = {(s.slope, s.intercept) for s in series.slices}
    uniform = len(rescales) == 1
    if nz * ny * nx * 4 > max_bytes:
        raise DicomError("dicom_invalid", "the series is too large to load")
    out: npt.NDArray[Any] | None = None
    cache: dict[Path, npt.NDArray[Any]] = {}
    for z, s in enumerate(series.slices):
        if s.frame is None:
            img = _decode(s.path)
        else:
            if s.path not in cache:
                cache.clear()
                cache[s.path] = _decode(s.path)
            frames = cache[s.path]
            if frames.ndim == 2:
                frames = frames[None]
            if s.frame >= frames.shape[0]:
                raise DicomError("dicom_invalid", "a multi-frame image has fewer frames than declared")
            img = frames[s.frame]
        if img.shape != (ny, nx):
            raise DicomError("dicom_invalid", f"slice {z} has shape {img.shape}, expected {(ny, nx)}")
        if out is None:
            dtype = img.dtype if uniform and img.dtype.kind in "iu" else np.float32
            out = np.empty((nz, ny, nx), dtype=dtype)
        if uniform:
            out[z] = img
        else:
            np.multiply(img, np.float32(s.slope), out=out[z], casting="unsafe")
            out[z] += np.float32(s.intercept)
    assert out is not None
    slope, icpt = (series.slices[0].slope, series.slices[0].intercept) if uniform else (1.0, 0.0)
    return CTVolume(stored=out, slope=slope, intercept=icpt, geometry=geom, series_uid=series.series_uid)
