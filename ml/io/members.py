"""Archive members held in memory: safe one-pass reading of a study ZIP without a temp dir.

:func:`read_members` applies every rule of :func:`ml.io.zipsafe.safe_extract` (member
count, sizes, compression ratio, paths, symlinks, encryption, overlapping members,
nesting depth) with the same refusal codes, but inflates each member into memory
(ISA-L's inflate, about twice as fast as zlib's, on a small thread pool: it releases the
GIL) instead of writing it to a file. Members are addressed by generated names, never
their own (member names often embed patient identifiers); :class:`MemberStore` maps those
names to the bytes until it is released.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from isal import isal_zlib

from ml.errors import DicomError, ZipError
from ml.io.zipsafe import _LOCAL_HEADER, ExtractReport, ZipLimits, member_errors, open_level

__all__ = ["MemberStore", "read_members"]

_ZIP_MAGIC = b"PK\x03\x04"


class MemberStore:
    """The bytes of extracted members by their generated names (:class:`~pathlib.Path`)."""

    def __init__(self) -> None:
        self._data: dict[Path, bytes] = {}

    def put(self, name: Path, data: bytes) -> None:
        self._data[name] = data

    def get(self, name: Path) -> bytes:
        """The member's bytes; ``dicom_invalid`` once the store is released."""
        try:
            return self._data[name]
        except KeyError:
            raise DicomError("dicom_invalid", "an image's data is no longer available") from None

    def names(self) -> Iterable[Path]:
        return self._data.keys()

    def release(self) -> None:
        """Drop every member's bytes (the in-memory counterpart of removing the extracted files)."""
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


def _member_bytes(archive: memoryview, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """The member's uncompressed bytes, checked against its declared size and CRC-32."""
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        return _member_via_zipfile(zf, info)
    fields = _LOCAL_HEADER.unpack_from(archive, info.header_offset)  # bounds checked by _check_overlaps
    start = info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10]
    raw = archive[start : start + info.compress_size]
    with member_errors():  # isal_zlib.error and friends
        if info.compress_type == zipfile.ZIP_STORED:
            data = bytes(raw)
        else:
            inflater = isal_zlib.decompressobj(-15)
            data = inflater.decompress(raw, info.file_size + 1)
            if len(data) <= info.file_size and not inflater.eof:
                raise ZipError("zip_invalid", "a member could not be decompressed (corrupt or truncated)")
    # a member longer or shorter than declared fails its CRC, as with zipfile's reader (which
    # stops at the declared size): the same code as extraction to disk
    if len(data) != info.file_size or isal_zlib.crc32(data) != info.CRC:
        raise ZipError(
            "zip_invalid", "a member could not be decompressed (corrupt, truncated or forged size)"
        )
    return data


def _member_via_zipfile(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """Other compression methods (bzip2, LZMA): through :mod:`zipfile` (which checks size and CRC)."""
    with member_errors(), zf.open(info) as src:
        data: bytes = src.read(info.file_size)
    return data


@dataclass
class _Reading:
    """What every level of one archive shares while it is read."""

    store: MemberStore
    limits: ZipLimits
    report: ExtractReport
    threads: int


def _read_into(archive: bytes, run: _Reading, depth: int, prefix: str) -> None:
    store, limits, report, threads = run.store, run.limits, run.report, run.threads
    fp = io.BytesIO(archive)
    zf, members = open_level(fp, len(archive), limits, report, prefix)
    with zf:
        todo = [(info, Path(name)) for info, name in members]
        view = memoryview(archive)
        with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="s4ct-inflate") as pool:
            blobs = list(pool.map(lambda job: _member_bytes(view, zf, job[0]), todo))
    for (_info, name), data in zip(todo, blobs, strict=True):
        report.total_bytes += len(data)
        if data[:4] == _ZIP_MAGIC:
            if depth >= limits.max_nesting:
                raise ZipError("zip_bomb", f"archives nested deeper than {limits.max_nesting} level(s)")
            _read_into(data, run, depth + 1, f"{name.stem}_")
            continue
        store.put(name, data)
        report.files.append(name)
    if report.total_bytes > limits.max_total_uncompressed:
        raise ZipError("zip_too_large", "archive expands beyond the size limit")


def read_members(
    source: str | Path | bytes, limits: ZipLimits | None = None, threads: int = 2
) -> tuple[ExtractReport, MemberStore]:
    """Vet ``source`` (a ZIP path or its bytes) and inflate its members into memory.

    The same rules and refusal codes as :func:`~ml.io.zipsafe.safe_extract`
    (``zip_invalid``, ``zip_too_large``, ``zip_unsafe_path``, ``zip_bomb``); the report's
    ``files`` are the members' generated names, keys of the returned store.
    """
    limits = limits or ZipLimits()
    archive = source if isinstance(source, bytes) else Path(source).read_bytes()
    report = ExtractReport()
    store = MemberStore()
    _read_into(archive, _Reading(store, limits, report, threads), depth=0, prefix="m")
    return report, store
