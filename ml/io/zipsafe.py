"""Safe ZIP reading: vetting and extraction of hostile archives.

Archives are treated as hostile (architecture rule 6): every limit is checked on the
central directory *before* anything is extracted, and again while streaming
(declared sizes can lie). Members are extracted under generated names, never
their own: archive member names often embed patient identifiers.
"""

from __future__ import annotations

import contextlib
import itertools
import stat
import struct
import zipfile
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from ml.errors import ZipError

__all__ = ["ExtractReport", "ZipLimits", "ZipSummary", "precheck_zip", "safe_extract"]

_JUNK_NAMES = frozenset({"dicomdir", ".ds_store", "thumbs.db", "desktop.ini"})
_CHUNK = 1 << 20
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_END_RECORD = struct.Struct("<4sHHHHIIH")  # end of central directory: entries total at [4]
_ZIP64_LOCATOR = struct.Struct("<4sIQI")  # Zip64 end-record locator: its offset at [2]
_ZIP64_END_RECORD = struct.Struct("<4sQHHIIQQQQ")  # Zip64 end record: entries total at [7]


@dataclass(frozen=True)
class ZipLimits:
    """Limits applied to an uploaded archive (sizes in bytes).

    The defaults accept a 2000-slice 1024² study with room to spare and refuse
    classic decompression bombs.
    """

    max_members: int = 20_000
    max_total_uncompressed: int = 8 << 30
    max_member_uncompressed: int = 1 << 30
    #: ratio uncompressed/compressed above which a member (of at least ``ratio_min_size`` bytes) is a bomb
    max_ratio: float = 200.0
    ratio_min_size: int = 1 << 20
    #: nested ZIP archives are opened this many levels deep; deeper nesting is refused
    max_nesting: int = 1


@dataclass
class ExtractReport:
    """What :func:`safe_extract` wrote and skipped (counts only: no member names)."""

    files: list[Path] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    total_bytes: int = 0
    members: int = 0


def _is_unsafe_name(name: str) -> bool:
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) >= 2 and norm[1] == ":"):
        return True
    parts = PurePosixPath(norm).parts
    return any(p == ".." for p in parts) or "\x00" in norm


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    mode = info.external_attr >> 16
    return info.create_system == 3 and stat.S_ISLNK(mode)


def _skip_reason(name: str) -> str | None:
    norm = name.replace("\\", "/")
    parts = [p for p in norm.split("/") if p]
    if not parts:
        return "directory"
    if any(p == "__MACOSX" for p in parts):
        return "macosx_metadata"
    base = parts[-1]
    if base.lower() in _JUNK_NAMES:
        return "dicomdir_or_system_file"
    if base.startswith("._"):
        return "macosx_metadata"
    return None


def _check_overlaps(fp: BinaryIO, infos: Sequence[zipfile.ZipInfo], archive_size: int) -> None:
    """Refuse archives whose members' data ranges overlap (non-recursive 'zip bombs')."""
    spans: list[tuple[int, int]] = []
    for info in infos:
        off = info.header_offset
        if off < 0 or off + _LOCAL_HEADER.size > archive_size:
            raise ZipError("zip_invalid", "a member's local header lies outside the archive")
        fp.seek(off)
        raw = fp.read(_LOCAL_HEADER.size)
        if len(raw) != _LOCAL_HEADER.size:
            raise ZipError("zip_invalid", "truncated local header")
        fields = _LOCAL_HEADER.unpack(raw)
        if fields[0] != b"PK\x03\x04":
            raise ZipError("zip_invalid", "bad local header signature")
        end = off + _LOCAL_HEADER.size + fields[9] + fields[10] + info.compress_size
        if end > archive_size:
            raise ZipError("zip_invalid", "a member's data runs past the end of the archive")
        spans.append((off, end))
    _refuse_overlapping(spans)


def _refuse_overlapping(spans: list[tuple[int, int]]) -> None:
    """``zip_bomb`` if any two [start, end) byte ranges of members overlap."""
    spans.sort()
    for (_a0, a1), (b0, _b1) in itertools.pairwise(spans):
        if b0 < a1:
            raise ZipError("zip_bomb", "archive members overlap (decompression bomb)")


def _check_overlaps_from_directory(infos: Sequence[zipfile.ZipInfo]) -> None:
    """Refuse overlapping members from the central directory alone (no member data read).

    Each member occupies at least its 30-byte local header plus its compressed size from
    its header offset (the local name and extra field only add to that), so a member that
    starts inside that lower bound of the previous one certainly overlaps it. Overlaps
    hidden by lying local headers are caught by :func:`_check_overlaps` at extraction.
    """
    _refuse_overlapping(
        [(i.header_offset, i.header_offset + _LOCAL_HEADER.size + i.compress_size) for i in infos]
    )


def _vet_infos(infos: Sequence[zipfile.ZipInfo], limits: ZipLimits, report: ExtractReport) -> None:
    if report.members + len(infos) > limits.max_members:
        raise ZipError("zip_too_large", f"archive has more than {limits.max_members} members")
    total = report.total_bytes
    for i, info in enumerate(infos):
        if _is_symlink(info):
            raise ZipError("zip_unsafe_path", f"member #{i} is a symbolic link")
        if _is_unsafe_name(info.filename):
            raise ZipError("zip_unsafe_path", f"member #{i} has an absolute or '..' path")
        if info.flag_bits & 0x1:
            raise ZipError("zip_invalid", "archive is encrypted")
        if info.file_size > limits.max_member_uncompressed:
            raise ZipError(
                "zip_too_large", f"member #{i} expands beyond {limits.max_member_uncompressed} bytes"
            )
        if info.file_size >= limits.ratio_min_size and info.file_size > limits.max_ratio * max(
            info.compress_size, 1
        ):
            raise ZipError("zip_bomb", f"member #{i} has a compression ratio above {limits.max_ratio:g}")
        total += info.file_size
        if total > limits.max_total_uncompressed:
            raise ZipError("zip_too_large", f"archive expands beyond {limits.max_total_uncompressed} bytes")


def _declared_members(fp: BinaryIO) -> int | None:
    """Member count the end record declares (Zip64 aware), read before any parsing; None if unfound.

    ``zipfile`` builds a ZipInfo per central-directory entry before any rule can run:
    a 53 MB upload listing 1M entries cost ~375 MiB and ~15 s to parse and refuse.
    """
    size = fp.seek(0, 2)
    span = min(size, _END_RECORD.size + 0xFFFF)  # the record, then a comment of up to 64 KiB
    fp.seek(size - span)
    tail = fp.read(span)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _END_RECORD.size:
        return None
    entries: int = _END_RECORD.unpack_from(tail, at)[4]
    if entries != 0xFFFF:
        return entries
    # Zip64: the count is in the Zip64 end record (unknown when it cannot be found)
    if at < _ZIP64_LOCATOR.size:
        return None
    locator = _ZIP64_LOCATOR.unpack_from(tail, at - _ZIP64_LOCATOR.size)
    if locator[0] != b"PK\x06\x07" or not 0 <= locator[2] <= size - _ZIP64_END_RECORD.size:
        return None
    fp.seek(locator[2])
    raw = fp.read(_ZIP64_END_RECORD.size)
    if len(raw) != _ZIP64_END_RECORD.size or raw[:4] != b"PK\x06\x06":
        return None
    total: int = _ZIP64_END_RECORD.unpack(raw)[7]
    return total


def _check_declared_members(fp: BinaryIO, limits: ZipLimits, already: int) -> None:
    declared = _declared_members(fp)
    if declared is not None and already + declared > limits.max_members:
        raise ZipError("zip_too_large", f"archive has more than {limits.max_members} members")


def _open_zip(source: Path | BinaryIO) -> zipfile.ZipFile:
    """Open a ZIP from a path or a seekable file; any unreadable archive is ``zip_invalid``."""
    try:
        return zipfile.ZipFile(source)
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        OSError,
        EOFError,
        ValueError,
        NotImplementedError,
    ) as e:
        raise ZipError("zip_invalid", "not a readable ZIP archive") from e


@dataclass(frozen=True)
class ZipSummary:
    """What the central directory of an archive declares (counts and bytes only, no names)."""

    members: int
    files: int
    uncompressed_bytes: int


def precheck_zip(fp: BinaryIO, limits: ZipLimits | None = None) -> ZipSummary:
    """Quick sanity check of an archive from its central directory alone.

    Reads only the end-of-central-directory record (its member count is checked
    first) and the central directory (``fp`` must be seekable; the member data is
    not touched), and applies the member-count, size, ratio, path, symlink and
    encryption rules of :func:`safe_extract`, and refuses members that certainly overlap.
    Nested archives and overlaps hidden by lying local headers need the member data and
    are checked when the study is extracted.

    Raises :class:`~ml.errors.ZipError`; an archive without any file member is
    ``zip_invalid``.
    """
    summary = summarize_zip(fp, limits)
    if not summary.files:
        raise ZipError("zip_invalid", "the archive contains no file")
    return summary


def summarize_zip(fp: BinaryIO, limits: ZipLimits | None = None) -> ZipSummary:
    """:func:`precheck_zip` without its refusal of an archive that has no file member."""
    limits = limits or ZipLimits()
    _check_declared_members(fp, limits, 0)
    zf = _open_zip(fp)
    with zf:
        infos = zf.infolist()
    _vet_infos(infos, limits, ExtractReport())
    _check_overlaps_from_directory(infos)
    files = [i for i in infos if not i.is_dir()]
    return ZipSummary(
        members=len(infos), files=len(files), uncompressed_bytes=sum(i.file_size for i in files)
    )


@contextlib.contextmanager
def member_errors() -> Iterator[None]:
    """Any failure to inflate a member (zlib errors, bad CRC, truncated data, ...) as ``zip_invalid``."""
    try:
        yield
    except ZipError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as e:
        # zlib errors, bad CRC, truncated data, unsupported compression method, encryption
        raise ZipError("zip_invalid", "a member could not be decompressed (corrupt or truncated)") from e
    except Exception as e:  # zlib.error is not an OSError subclass
        raise ZipError("zip_invalid", "a member could not be decompressed") from e


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path) -> int:
    written = 0
    with member_errors(), zf.open(info) as src, dest.open("wb") as out:
        while True:
            chunk = src.read(_CHUNK)
            if not chunk:
                break
            written += len(chunk)
            if written > info.file_size:
                raise ZipError("zip_bomb", "member expands beyond its declared size")
            out.write(chunk)
    return written


def open_level(
    fp: BinaryIO, size: int, limits: ZipLimits, report: ExtractReport, prefix: str
) -> tuple[zipfile.ZipFile, list[tuple[zipfile.ZipInfo, str]]]:
    """Vet one archive level (every rule that needs no member data) and name the members to read.

    Returns the open archive and its file members under generated names (``prefix`` +
    index); directories are left out, junk is counted in ``report.skipped``.
    """
    _check_declared_members(fp, limits, report.members)
    zf = _open_zip(fp)
    try:
        try:
            infos = zf.infolist()
        except Exception as e:
            raise ZipError("zip_invalid", "unreadable central directory") from e
        _vet_infos(infos, limits, report)
        _check_overlaps(fp, infos, size)
    except BaseException:
        zf.close()
        raise
    report.members += len(infos)
    todo: list[tuple[zipfile.ZipInfo, str]] = []
    for i, info in enumerate(infos):
        if info.is_dir():
            continue
        reason = _skip_reason(info.filename)
        if reason:
            report.skipped[reason] += 1
            continue
        todo.append((info, f"{prefix}{i:06d}.bin"))
    return zf, todo


def _extract_into(
    zip_path: Path,
    dest: Path,
    limits: ZipLimits,
    report: ExtractReport,
    depth: int,
    prefix: str,
    threads: int,
) -> None:
    with zip_path.open("rb") as fp:
        zf, members = open_level(fp, zip_path.stat().st_size, limits, report, prefix)
        with zf:
            todo = [(info, dest / name) for info, name in members]
            # inflating releases the GIL: members are copied in parallel. Declared sizes were
            # vetted above and each copy stops past its declared size, so the total stays bounded.
            with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
                sizes = list(pool.map(lambda job: _copy_member(zf, job[0], job[1]), todo))
            for (_info, target), n in zip(todo, sizes, strict=True):
                report.total_bytes += n
                with target.open("rb") as fh:
                    magic = fh.read(4)
                if magic == b"PK\x03\x04":
                    if depth >= limits.max_nesting:
                        raise ZipError(
                            "zip_bomb", f"archives nested deeper than {limits.max_nesting} level(s)"
                        )
                    _extract_into(target, dest, limits, report, depth + 1, f"{target.stem}_", threads)
                    target.unlink()
                    continue
                report.files.append(target)
            if report.total_bytes > limits.max_total_uncompressed:
                raise ZipError("zip_too_large", "archive expands beyond the size limit")


def safe_extract(
    zip_path: str | Path, dest: str | Path, limits: ZipLimits | None = None, threads: int = 2
) -> ExtractReport:
    """Vet and extract ``zip_path`` into ``dest`` under generated names.

    Raises :class:`~ml.errors.ZipError` (``zip_invalid``, ``zip_too_large``,
    ``zip_unsafe_path``, ``zip_bomb``) before anything of a refused archive level
    is written. ``__MACOSX``, DICOMDIR and system files are skipped and counted.
    Nested ZIPs are opened up to ``limits.max_nesting`` levels. Members are
    inflated by ``threads`` threads.
    """
    limits = limits or ZipLimits()
    dest_p = Path(dest)
    dest_p.mkdir(parents=True, exist_ok=True)
    report = ExtractReport()
    _extract_into(Path(zip_path), dest_p, limits, report, depth=0, prefix="m", threads=threads)
    return report
