"""Edited and hand-built DICOM files inside study ZIPs, for hostile-input tests.

Shared by the ml-level QC tests and the service-level hostile-input tests: a
study ZIP is rewritten member by member (:func:`rezip`), one file's dataset is
edited and re-encoded (:func:`edit_dicom`), or raw bytes pydicom would refuse to
write are spliced in (:func:`nested_sequences`, :func:`insert_before_pixels`).
"""

from __future__ import annotations

import io
import struct
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pydicom
from pydicom.filebase import DicomBytesIO

__all__ = ["edit_dicom", "insert_before_pixels", "merge_zips", "nested_sequences", "rezip", "study_members"]


def study_members(zip_path: Path) -> list[tuple[str, bytes]]:
    """The (name, bytes) of every file member of a ZIP, sorted by name."""
    with zipfile.ZipFile(zip_path) as zf:
        return [(n, zf.read(n)) for n in sorted(zf.namelist()) if not n.endswith("/")]


def rezip(src_zip: Path, dst_zip: Path, mutate: Callable[[int, bytes], bytes | None]) -> Path:
    """Copy ``src_zip`` to ``dst_zip``, passing each file (by sorted name index) through ``mutate``.

    ``mutate`` returns the new bytes, or None to leave the member out.
    """
    with zipfile.ZipFile(dst_zip, "w", zipfile.ZIP_DEFLATED) as zout:
        for i, (name, data) in enumerate(study_members(src_zip)):
            out = mutate(i, data)
            if out is not None:
                zout.writestr(name, out)
    return dst_zip


def merge_zips(zips: Sequence[Path], dst: Path) -> Path:
    """One ZIP holding the files of every ZIP in ``zips``, each under ``part{k}/``."""
    with zipfile.ZipFile(dst, "w") as zout:
        for k, zp in enumerate(zips):
            for name, data in study_members(zp):
                zout.writestr(f"part{k}/{name}", data)
    return dst


def edit_dicom(data: bytes, change: Callable[[pydicom.Dataset], None]) -> bytes:
    """Re-encode one DICOM file after ``change`` edited its dataset in place."""
    ds = pydicom.dcmread(DicomBytesIO(data))
    change(ds)
    buf = DicomBytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def nested_sequences(
    depth: int, *, implicit_vr: bool = False, tag: tuple[int, int] = (0x0008, 0x1140)
) -> bytes:
    """A sequence element nested ``depth`` levels deep (undefined lengths), little endian.

    pydicom parses nested sequences recursively, so a few hundred levels raise
    RecursionError on read; writing such a dataset with pydicom fails the same
    way, hence the raw bytes. The default tag is ReferencedImageSequence.
    """
    group, elem = tag
    if implicit_vr:
        seq = struct.pack("<HHI", group, elem, 0xFFFFFFFF)
    else:
        seq = struct.pack("<HH2sHI", group, elem, b"SQ", 0, 0xFFFFFFFF)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    item_end = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    seq_end = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return (seq + item) * depth + (item_end + seq_end) * depth


def insert_before_pixels(data: bytes, element: bytes) -> bytes:
    """``data`` (a DICOM file) with the raw ``element`` bytes spliced in just before PixelData."""
    fp = io.BytesIO(data)
    pydicom.dcmread(fp, stop_before_pixels=True)
    at = fp.tell()  # pydicom rewinds to the start of the PixelData element
    if data[at : at + 4] != b"\xe0\x7f\x10\x00":
        raise ValueError("no PixelData element found to insert before")
    return data[:at] + element + data[at:]
