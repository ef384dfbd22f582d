"""Pixel decoding of a discovered series into one volume of stored values (HU via its rescale).

JPEG pixel data (baseline 1.2.840.10008.1.2.4.50, lossless .57 and lossless SV1 .70)
is decoded by libjpeg-turbo through ``imagecodecs``: the same stored values as pydicom
(checked bit for bit by the tests), about 5× faster than pydicom's GDCM handler.
Anything it does not take (other transfer syntaxes, colour, odd bit depths, a frame
libjpeg-turbo refuses) goes through
pydicom (GDCM, pylibjpeg), which also produces the error codes. Slices are read and
decoded by a small thread pool (the codecs release the GIL), each written straight into
the volume.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset

from ml.errors import DicomError
from ml.geometry import CTVolume
from ml.io.headers import header_int
from ml.io.series import SeriesInfo, SliceRef

__all__ = ["JPEG_TRANSFER_SYNTAXES", "decode_threads", "load_volume", "read_pixels"]

_NATIVE_LE = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})

#: transfer syntaxes decoded by libjpeg-turbo: baseline 8-bit, lossless process 14 (any
#: predictor) and lossless SV1. Extended 12-bit lossy (.51) stays with pydicom: its inverse
#: DCT rounds differently from libjpeg-turbo's (values 1 apart), so it would not be bit-exact.
JPEG_TRANSFER_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
    }
)


def decode_threads(n_slices: int) -> int:
    """Threads for decoding ``n_slices`` slices: one per usable CPU (at most 8), one for few slices."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return 1 if n_slices < 8 else max(1, min(8, cpus))


def _transfer_syntax(ds: Dataset) -> str:
    return str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))


def _native_pixels(ds: Dataset) -> npt.NDArray[Any] | None:
    """Zero-copy view of uncompressed little-endian single-frame 16-bit pixels, else None.

    Only when every bit of the container is used (BitsStored == BitsAllocated), so
    no masking or sign extension is needed; other cases go through pydicom.
    """
    if _transfer_syntax(ds) not in _NATIVE_LE or "PixelData" not in ds:
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


def _jpeg_pixels(ds: Dataset) -> npt.NDArray[Any] | None:
    """Grey JPEG frames decoded by libjpeg-turbo, as pydicom gives them; None: let pydicom decode.

    Returns (rows, cols) for one frame, (frames, rows, cols) for several. The values are
    put in the container pydicom uses (BitsAllocated, PixelRepresentation): a signed
    sample is the two's complement of its ``BitsStored`` low bits, sign-extended.
    """
    if _transfer_syntax(ds) not in JPEG_TRANSFER_SYNTAXES or "PixelData" not in ds:
        return None
    bits, stored = header_int(ds, "BitsAllocated", 0), header_int(ds, "BitsStored", 0)
    rows, cols = header_int(ds, "Rows", 0), header_int(ds, "Columns", 0)
    frames = header_int(ds, "NumberOfFrames", 1)
    if bits not in (8, 16) or not 1 <= stored <= bits or header_int(ds, "SamplesPerPixel", 1) != 1:
        return None
    if rows < 1 or cols < 1 or not 1 <= frames <= 4096:
        return None
    signed = header_int(ds, "PixelRepresentation", 0) == 1
    container = np.dtype(f"{'i' if signed else 'u'}{bits // 8}")
    try:
        from pydicom.encaps import generate_frames

        encoded = list(generate_frames(ds.PixelData, number_of_frames=frames))
        if len(encoded) != frames:
            return None
        out = np.empty((frames, rows, cols), dtype=container)
        for i, data in enumerate(encoded):
            if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
                return None  # truncated: libjpeg-turbo would pad it with grey, pydicom refuses it
            arr: npt.NDArray[Any] = imagecodecs.jpeg8_decode(data)
            if arr.shape != (rows, cols) or arr.dtype.kind != "u" or arr.dtype.itemsize > bits // 8:
                return None  # colour, another size or a deeper sample than the container: pydicom
            np.copyto(out[i], arr, casting="unsafe")  # same bits: uint16 → int16 keeps the pattern
    except Exception:
        return None  # pydicom decodes it or reports the error with its code
    if signed and stored < bits:  # sign-extend the BitsStored-bit two's complement
        shift = bits - stored
        np.left_shift(out, shift, out=out)
        np.right_shift(out, shift, out=out)
    return out[0] if frames == 1 else out


def read_pixels(path: Path | bytes) -> npt.NDArray[Any]:
    """The stored values of one DICOM file (a path or its bytes): (rows, cols), or (frames, rows, cols).

    Raises ``dicom_invalid`` / ``unsupported_transfer_syntax``.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(path) if isinstance(path, bytes) else path)
        if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            raise DicomError("dicom_invalid", "an image has no pixel data")
        fast = _native_pixels(ds)
        if fast is None:
            fast = _jpeg_pixels(ds)
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


class _Frames:
    """The decoded frames of the multi-frame file read last (one at a time, shared by the threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._path: Path | None = None
        self._frames: npt.NDArray[Any] | None = None

    def get(self, ref: SliceRef, frame: int) -> npt.NDArray[Any]:
        path = ref.path
        with self._lock:
            if self._path != path or self._frames is None:
                frames = read_pixels(ref.source())
                self._frames, self._path = (frames[None] if frames.ndim == 2 else frames), path
            frames = self._frames
        if frame >= frames.shape[0]:
            raise DicomError("dicom_invalid", "a multi-frame image has fewer frames than declared")
        one: npt.NDArray[Any] = frames[frame]
        return one


def load_volume(series: SeriesInfo, *, max_bytes: int = 6 << 30, threads: int | None = None) -> CTVolume:
    """Decode all slices of ``series`` into one (z, y, x) array of stored values.

    When every slice has the same RescaleSlope/Intercept the array keeps the
    stored integer type; otherwise it is float32 HU (slope 1, intercept 0).
    ``threads``: decoding threads (default :func:`decode_threads`).
    Raises ``dicom_invalid`` / ``unsupported_transfer_syntax`` on decode errors.
    """
    if not series.slices:
        raise DicomError("no_dicom", "the series has no images with plane geometry")
    geom = series.geometry()
    nz, ny, nx = geom.shape_zyx
    uniform = len({(s.slope, s.intercept) for s in series.slices}) == 1
    if nz * ny * nx * 4 > max_bytes:
        raise DicomError("dicom_invalid", "the series is too large to load")
    multi = _Frames()

    def pixels(z: int) -> npt.NDArray[Any]:
        s = series.slices[z]
        if s.native is not None and s.store is not None:  # uncompressed: a view of the member's bytes
            offset, dtype = s.native
            img = np.frombuffer(s.store.get(s.path), dtype=dtype, count=s.rows * s.columns, offset=offset)
            img = img.reshape(s.rows, s.columns)
        else:
            img = read_pixels(s.source()) if s.frame is None else multi.get(s, s.frame)
        if img.shape != (ny, nx):
            raise DicomError("dicom_invalid", f"slice {z} has shape {img.shape}, expected {(ny, nx)}")
        return img

    first = pixels(0)
    dtype = first.dtype if uniform and first.dtype.kind in "iu" else np.dtype(np.float32)
    out = np.empty((nz, ny, nx), dtype=dtype)

    def put(z: int, img: npt.NDArray[Any]) -> None:
        if uniform:
            out[z] = img
        else:
            s = series.slices[z]
            np.multiply(img, np.float32(s.slope), out=out[z], casting="unsafe")
            out[z] += np.float32(s.intercept)

    put(0, first)
    del first
    _run(lambda z: put(z, pixels(z)), range(1, nz), threads if threads is not None else decode_threads(nz))
    slope, icpt = (series.slices[0].slope, series.slices[0].intercept) if uniform else (1.0, 0.0)
    return CTVolume(stored=out, slope=slope, intercept=icpt, geometry=geom, series_uid=series.series_uid)


def _run(task: Callable[[int], None], items: range, threads: int) -> None:
    """``task`` for each item, on ``threads`` threads; the first error (in item order) is raised."""
    if threads <= 1 or len(items) < 2:
        for i in items:
            task(i)
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="s4ct-decode") as pool:
        futures: list[Future[None]] = [pool.submit(task, i) for i in items]
        try:
            for f in futures:
                f.result()
        finally:
            for f in futures:
                f.cancel()
