"""Safe ZIP reading, DICOM series discovery, HU conversion and geometry.

Archives are treated as hostile (DESIGN rule 6): every limit is checked on the
central directory *before* anything is extracted, and again while streaming
(declared sizes can lie). Members are extracted under generated names, never
their own: archive member names often embed patient identifiers.

Series are discovered from headers only (``stop_before_pixels``); pixels are
decoded later by :func:`load_volume`, which returns a :class:`~ml.geometry.CTVolume`
in stored units with its rescale and geometry.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import shutil
import stat
import struct
import tempfile
import zipfile
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
import pydicom
import pydicom.config
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ml.errors import DicomError, ZipError
from ml.geometry import CTVolume, VolumeGeometry

log = logging.getLogger(__name__)

# pydicom's validation warnings quote the offending value, which can be a patient
# name or ID: never let them reach a log (DESIGN rule 7).
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.2"
CT_SOP_CLASSES = frozenset({CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE, LEGACY_ENHANCED_CT_IMAGE_STORAGE})

#: tags whose values are direct identifiers; collected so that log scrubbing can redact them
PHI_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "OtherPatientIDs",
    "OtherPatientNames",
    "AccessionNumber",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "ReferringPhysicianName",
    "InstitutionName",
)

_JUNK_NAMES = frozenset({"dicomdir", ".ds_store", "thumbs.db", "desktop.ini"})
_CHUNK = 1 << 20
_MAX_PIXELS_PER_SLICE = 4096 * 4096
#: ImageOrientationPatient cosines: |norm - 1| and |row · column| allowed (real headers round to ~1e-6)
_COSINE_TOLERANCE = 0.01
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
    limits = limits or ZipLimits()
    _check_declared_members(fp, limits, 0)
    zf = _open_zip(fp)
    with zf:
        infos = zf.infolist()
    _vet_infos(infos, limits, ExtractReport())
    _check_overlaps_from_directory(infos)
    files = [i for i in infos if not i.is_dir()]
    if not files:
        raise ZipError("zip_invalid", "the archive contains no file")
    return ZipSummary(
        members=len(infos), files=len(files), uncompressed_bytes=sum(i.file_size for i in files)
    )


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path) -> int:
    written = 0
    try:
        with zf.open(info) as src, dest.open("wb") as out:
            while True:
                chunk = src.read(_CHUNK)
                if not chunk:
                    break
                written += len(chunk)
                if written > info.file_size:
                    raise ZipError("zip_bomb", "member expands beyond its declared size")
                out.write(chunk)
    except ZipError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as e:
        # zlib errors, bad CRC, truncated data, unsupported compression method, encryption
        raise ZipError("zip_invalid", "a member could not be decompressed (corrupt or truncated)") from e
    except Exception as e:  # zlib.error is not an OSError subclass
        raise ZipError("zip_invalid", "a member could not be decompressed") from e
    return written


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
        _check_declared_members(fp, limits, report.members)
    zf = _open_zip(zip_path)
    with zf:
        try:
            infos = zf.infolist()
        except Exception as e:
            raise ZipError("zip_invalid", "unreadable central directory") from e
        _vet_infos(infos, limits, report)
        with zip_path.open("rb") as fp:
            _check_overlaps(fp, infos, zip_path.stat().st_size)
        report.members += len(infos)
        todo: list[tuple[zipfile.ZipInfo, Path]] = []
        for i, info in enumerate(infos):
            if info.is_dir():
                continue
            reason = _skip_reason(info.filename)
            if reason:
                report.skipped[reason] += 1
                continue
            todo.append((info, dest / f"{prefix}{i:06d}.bin"))
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
                    raise ZipError("zip_bomb", f"archives nested deeper than {limits.max_nesting} level(s)")
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


# --------------------------------------------------------------------------- DICOM headers


@dataclass(frozen=True)
class SliceRef:
    """One 2-D image of a series: a file, and a frame number for multi-frame objects.

    Positions in LPS mm; ``rescale`` maps stored values to HU.
    """

    path: Path
    frame: int | None
    position_mm: tuple[float, float, float]
    instance_number: int | None
    slope: float
    intercept: float
    rows: int
    columns: int
    pixel_spacing_mm: tuple[float, float]  # (row spacing, column spacing), as DICOM PixelSpacing
    orientation: tuple[float, ...]  # ImageOrientationPatient: row cosine (3) + column cosine (3)
    slice_thickness_mm: float | None


@dataclass
class SeriesInfo:
    """A series discovered from headers, with its slices sorted along the slice normal."""

    series_uid: str
    study_uid: str
    modality: str
    sop_class_uid: str
    image_type: tuple[str, ...]
    description: str
    kernel: str
    manufacturer: str
    body_part: str
    transfer_syntaxes: tuple[str, ...]
    multiframe: bool
    slices: list[SliceRef]
    #: slices dropped because another slice had the same position (counted, kept out of the volume)
    duplicates: int = 0
    #: header problems found while grouping: mixed sizes, missing geometry ...
    issues: list[str] = field(default_factory=list)
    gantry_tilt_tag_deg: float = 0.0

    @property
    def n_slices(self) -> int:
        return len(self.slices)

    @property
    def rows(self) -> int:
        return self.slices[0].rows if self.slices else 0

    @property
    def columns(self) -> int:
        return self.slices[0].columns if self.slices else 0

    @property
    def pixel_spacing_mm(self) -> tuple[float, float]:
        return self.slices[0].pixel_spacing_mm if self.slices else (0.0, 0.0)

    @property
    def slice_thickness_mm(self) -> float | None:
        vals = [s.slice_thickness_mm for s in self.slices if s.slice_thickness_mm is not None]
        return float(np.median(vals)) if vals else None

    def normal(self) -> npt.NDArray[np.float64]:
        """Unit slice normal (row cosine × column cosine) in LPS."""
        o = np.asarray(self.slices[0].orientation, dtype=np.float64)
        n = np.cross(o[:3], o[3:])
        norm = np.linalg.norm(n)
        return n / norm if norm > 0 else n

    def slice_offsets_mm(self) -> npt.NDArray[np.float64]:
        """Position of each (sorted) slice along the normal, in mm."""
        if not self.slices:
            return np.zeros(0)
        p = np.asarray([s.position_mm for s in self.slices], dtype=np.float64)
        return np.asarray(p @ self.normal(), dtype=np.float64)

    def slice_steps_mm(self) -> npt.NDArray[np.float64]:
        return np.diff(self.slice_offsets_mm())

    def slice_spacing_mm(self) -> float | None:
        """Median distance between consecutive slices along the normal (mm)."""
        steps = self.slice_steps_mm()
        return float(np.median(steps)) if steps.size else None

    def tilt_deg(self) -> float:
        """Angle between the slice stacking direction and the slice normal (gantry tilt), degrees."""
        if len(self.slices) < 2:
            return 0.0
        d = np.asarray(self.slices[-1].position_mm) - np.asarray(self.slices[0].position_mm)
        nd = np.linalg.norm(d)
        if nd == 0:
            return 0.0
        c = abs(float(d @ self.normal())) / nd
        return math.degrees(math.acos(min(1.0, float(c))))

    def coverage_mm(self) -> float:
        off = self.slice_offsets_mm()
        return float(off[-1] - off[0]) if off.size else 0.0

    def orientation_label(self) -> str:
        """'axial', 'coronal' or 'sagittal' by the dominant component of the slice normal."""
        if not self.slices:
            return "unknown"
        n = np.abs(self.normal())
        return ("sagittal", "coronal", "axial")[int(np.argmax(n))]

    def geometry(self) -> VolumeGeometry:
        """Volume grid of the sorted slices (origin = first slice, z along the normal)."""
        s0 = self.slices[0]
        o = np.asarray(s0.orientation, dtype=np.float64)
        r, c = o[:3], o[3:]
        n = self.normal()
        dz = self.slice_spacing_mm() or (s0.slice_thickness_mm or 1.0)
        direction = (r[0], c[0], n[0], r[1], c[1], n[1], r[2], c[2], n[2])
        return VolumeGeometry(
            size=(s0.columns, s0.rows, len(self.slices)),
            spacing_mm=(s0.pixel_spacing_mm[1], s0.pixel_spacing_mm[0], abs(dz) if dz else 1.0),
            origin_mm=s0.position_mm,
            direction=tuple(float(v) for v in direction),
        )

    def summary(self) -> dict[str, Any]:
        """JSON-able description without any patient identifier."""
        spacing = self.slice_spacing_mm()
        return {
            "series_uid": self.series_uid,
            "modality": self.modality,
            "description": self.description,
            "image_type": list(self.image_type),
            "kernel": self.kernel,
            "manufacturer": self.manufacturer,
            "body_part": self.body_part,
            "slices": self.n_slices,
            "rows": self.rows,
            "columns": self.columns,
            "pixel_spacing_mm": [round(v, 4) for v in self.pixel_spacing_mm],
            "slice_thickness_mm": self.slice_thickness_mm,
            "slice_spacing_mm": None if spacing is None else round(spacing, 4),
            "coverage_mm": round(self.coverage_mm(), 2),
            "orientation": self.orientation_label(),
            "multiframe": self.multiframe,
            "transfer_syntaxes": list(self.transfer_syntaxes),
            "duplicates_removed": self.duplicates,
        }


@dataclass
class Study:
    """All series found in one archive, plus what was skipped (counts only)."""

    series: list[SeriesInfo]
    skipped: Counter[str] = field(default_factory=Counter)
    files: int = 0
    #: identifier values seen in headers, for log scrubbing; never serialised
    phi_tokens: frozenset[str] = frozenset()

    def get(self, series_uid: str) -> SeriesInfo | None:
        return next((s for s in self.series if s.series_uid == series_uid), None)


def _f(v: Any, default: float | None = None) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return default
    return x if math.isfinite(x) else default


def _int(ds: Dataset, kw: str, default: Any) -> Any:
    """An integer header value, or ``default`` when absent, empty or unparseable (hostile input)."""
    v = _get(ds, kw)
    try:
        return default if v in (None, "") else int(v)
    except Exception:
        return default


def _floats(v: Any, n: int) -> tuple[float, ...] | None:
    try:
        vals = tuple(float(x) for x in v)
    except (TypeError, ValueError):
        return None
    if len(vals) != n or not all(math.isfinite(x) for x in vals):
        return None
    return vals


def _first_item(ds: Dataset, seq_kw: str) -> Dataset | None:
    seq = _get(ds, seq_kw)
    if seq is None:
        return None
    try:
        return seq[0] if len(seq) else None
    except (TypeError, IndexError):
        return None


def _functional(ds: Dataset, per_frame: Dataset | None, seq_kw: str) -> Dataset | None:
    """An item of a functional group macro: per-frame first, then shared."""
    if per_frame is not None:
        item = _first_item(per_frame, seq_kw)
        if item is not None:
            return item
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    return _first_item(shared, seq_kw) if shared is not None else None


def _get(ds: Dataset, kw: str) -> Any:
    """``ds.get(kw)``, or None when the element cannot be decoded.

    pydicom decodes header values lazily, so a corrupted element (an unknown VR,
    bytes that do not parse as its VR) raises only when it is read, and with
    assorted exception types (NotImplementedError, ValueError, …).
    """
    try:
        return ds.get(kw)
    except Exception:
        return None


def _raw_text(ds: Dataset, kw: str) -> list[str]:
    """The undecoded bytes of element ``kw`` as latin-1 text values (backslash-separated)."""
    try:
        raw = ds.get_item(kw)
    except Exception:
        return []
    value = getattr(raw, "value", None)
    if not isinstance(value, bytes | bytearray):
        return []
    return bytes(value).decode("latin-1").split("\\")


def _phi_tokens(ds: Dataset) -> set[str]:
    """Identifier strings of ``ds`` (names, IDs, dates) that log scrubbing must remove.

    An element that does not decode (hostile or corrupted VR) contributes its raw
    bytes as text, so a mangled PatientName is still known to the scrubber.
    """
    out: set[str] = set()
    for kw in PHI_KEYWORDS:
        try:
            v = ds.get(kw)
        except Exception:
            v = _raw_text(ds, kw) or None
        if v is None:
            continue
        values = v if isinstance(v, list | tuple | pydicom.multival.MultiValue) else [v]
        for item in values:
            try:
                s = str(item).strip()
            except Exception:  # a PersonName decodes its components lazily too
                continue
            if len(s) >= 3:
                out.add(s)
                out.update(p for p in s.replace("^", " ").split() if len(p) >= 3)
    return out


def _check_pixel_header(ds: Dataset, idx: int) -> tuple[int, int]:
    rows = _int(ds, "Rows", 0)
    cols = _int(ds, "Columns", 0)
    if rows <= 0 or cols <= 0 or rows * cols > _MAX_PIXELS_PER_SLICE:
        raise DicomError("dicom_invalid", f"image #{idx} has absurd Rows/Columns ({rows}×{cols})")
    spp = _int(ds, "SamplesPerPixel", 1)
    bits = _int(ds, "BitsAllocated", 16)
    if spp != 1 or bits not in (8, 16, 32):
        raise DicomError("dicom_invalid", f"image #{idx} is not a single-channel 8/16/32-bit image")
    return rows, cols


def _slices_of(ds: Dataset, path: Path, idx: int) -> list[SliceRef]:
    """SliceRefs of one file: one for classic images, one per frame for multi-frame objects."""
    rows, cols = _check_pixel_header(ds, idx)
    nframes = _int(ds, "NumberOfFrames", 1)
    inst_n = _int(ds, "InstanceNumber", None)

    def ref(
        frame: int | None, pos_v: Any, ori_v: Any, ps_v: Any, slope: Any, icpt: Any, th: Any
    ) -> SliceRef | None:
        pos, ori, ps = _floats(pos_v, 3), _floats(ori_v, 6), _floats(ps_v, 2)
        if pos is None or ori is None or ps is None:
            return None
        _check_plane(ori, ps, idx)
        return SliceRef(
            path,
            frame,
            (pos[0], pos[1], pos[2]),
            inst_n,
            _rescale(_f(slope), idx),
            _icpt(_f(icpt), idx),
            rows,
            cols,
            (ps[0], ps[1]),
            ori,
            _f(th),
        )

    if "PerFrameFunctionalGroupsSequence" not in ds and nframes == 1:
        r = ref(
            None,
            ds.get("ImagePositionPatient"),
            ds.get("ImageOrientationPatient"),
            ds.get("PixelSpacing"),
            ds.get("RescaleSlope", 1.0),
            ds.get("RescaleIntercept", 0.0),
            ds.get("SliceThickness"),
        )
        return [] if r is None else [r]  # no plane geometry: not part of a volume (e.g. a secondary capture)
    per = ds.get("PerFrameFunctionalGroupsSequence") or []
    out: list[SliceRef] = []
    for k in range(nframes):
        pf = per[k] if k < len(per) else None
        pos_item = _functional(ds, pf, "PlanePositionSequence") or Dataset()
        ori_item = _functional(ds, pf, "PlaneOrientationSequence") or Dataset()
        meas = _functional(ds, pf, "PixelMeasuresSequence") or Dataset()
        pvt = _functional(ds, pf, "PixelValueTransformationSequence") or ds
        r = ref(
            k,
            pos_item.get("ImagePositionPatient"),
            ori_item.get("ImageOrientationPatient"),
            meas.get("PixelSpacing"),
            pvt.get("RescaleSlope", 1.0),
            pvt.get("RescaleIntercept", 0.0),
            meas.get("SliceThickness"),
        )
        if r is None:
            raise DicomError("dicom_invalid", f"multi-frame image #{idx} frame {k} lacks plane geometry")
        out.append(r)
    return out


def _check_plane(ori: tuple[float, ...], ps: tuple[float, ...], idx: int) -> None:
    """Refuse impossible plane geometry (DICOM requires unit, orthogonal cosines and positive spacing)."""
    if min(ps) <= 0:
        raise DicomError("dicom_invalid", f"image #{idx} has a non-positive PixelSpacing")
    r, c = np.asarray(ori[:3]), np.asarray(ori[3:])
    norms_ok = abs(float(np.linalg.norm(r)) - 1.0) <= _COSINE_TOLERANCE and (
        abs(float(np.linalg.norm(c)) - 1.0) <= _COSINE_TOLERANCE
    )
    if not norms_ok or abs(float(r @ c)) > _COSINE_TOLERANCE:
        raise DicomError("dicom_invalid", f"image #{idx} has non-orthonormal ImageOrientationPatient")


def _rescale(slope: float | None, idx: int) -> float:
    if slope is None or slope == 0 or abs(slope) > 1e4:
        raise DicomError("dicom_invalid", f"image #{idx} has an invalid RescaleSlope")
    return slope


def _icpt(icpt: float | None, idx: int) -> float:
    if icpt is None or abs(icpt) > 1e6:
        raise DicomError("dicom_invalid", f"image #{idx} has an invalid RescaleIntercept")
    return icpt


def read_header(path: Path) -> Dataset | None:
    """Read a DICOM header without pixel data, or None when the file is not DICOM.

    Files without the 128-byte preamble are accepted only if they parse to a
    dataset with an SOP Class UID. pydicom's RecursionError (deeply nested
    sequences) and any parse failure count as 'not DICOM'.
    """
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
        has_magic = len(head) == 132 and head[128:132] == b"DICM"
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=not has_magic, defer_size="64 KB")
        if not has_magic and "SOPClassUID" not in ds:
            return None
        _ = ds.get("SOPClassUID")  # force parsing of the top level
        return ds
    except (
        InvalidDicomError,
        RecursionError,
        OSError,
        EOFError,
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
        IndexError,
        struct.error,
        NotImplementedError,
        OverflowError,
    ):
        return None
    except Exception:  # pydicom raises assorted errors on hostile input
        log.debug("unparseable DICOM header skipped", exc_info=False)
        return None


def _str(ds: Dataset, kw: str) -> str:
    v = _get(ds, kw)
    if v is None:
        return ""
    if isinstance(v, pydicom.multival.MultiValue | list | tuple):
        return "\\".join(str(x) for x in v)
    return str(v).strip()


def discover_series(files: Sequence[Path]) -> Study:
    """Group DICOM files into series and sort each series along its slice normal.

    Non-DICOM files are skipped and counted. Raises ``no_dicom`` when nothing
    readable is found.
    """
    groups: dict[str, list[tuple[Dataset, Path, int]]] = defaultdict(list)
    skipped: Counter[str] = Counter()
    phi: set[str] = set()
    for idx, p in enumerate(files):
        ds = read_header(p)
        if ds is None:
            skipped["not_dicom"] += 1
            continue
        if "Rows" not in ds and "NumberOfFrames" not in ds:
            skipped["no_image"] += 1
            continue
        phi |= _phi_tokens(ds)
        uid = _str(ds, "SeriesInstanceUID") or "unknown-series"
        groups[uid].append((ds, p, idx))
    if not groups:
        raise DicomError("no_dicom", "the archive contains no DICOM image")
    series: list[SeriesInfo] = []
    for uid, items in groups.items():
        series.append(_build_series(uid, items, skipped))
    if skipped["invalid_header"] and not any(s.slices for s in series):
        # every image was refused for its header values: say so, not 'too few slices'
        raise DicomError(
            "dicom_invalid", f"no image has valid header values ({skipped['invalid_header']} invalid)"
        )
    series.sort(key=lambda s: (-s.n_slices, s.series_uid))
    return Study(series=series, skipped=skipped, files=len(files), phi_tokens=frozenset(phi))


def _build_series(uid: str, items: list[tuple[Dataset, Path, int]], skipped: Counter[str]) -> SeriesInfo:
    ds0 = items[0][0]
    slices: list[SliceRef] = []
    issues: list[str] = []
    tsyntaxes: set[str] = set()
    multiframe = False
    tilt_tag = 0.0
    for ds, p, idx in items:
        try:
            refs = _slices_of(ds, p, idx)
        except DicomError as e:
            issues.append(e.code)
            skipped["invalid_header"] += 1
            continue
        except Exception:  # hostile headers: one bad file never breaks discovery
            issues.append("dicom_invalid")
            skipped["invalid_header"] += 1
            continue
        if not refs:
            skipped["no_geometry"] += 1
            continue
        multiframe = multiframe or refs[0].frame is not None
        slices.extend(refs)
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if ts is not None:
            tsyntaxes.add(str(ts))
        tilt_tag = max(tilt_tag, abs(_f(_get(ds, "GantryDetectorTilt"), 0.0) or 0.0))
    # consistency of in-plane geometry
    keys = Counter(
        (
            s.rows,
            s.columns,
            tuple(round(v, 4) for v in s.pixel_spacing_mm),
            tuple(round(v, 3) for v in s.orientation),
        )
        for s in slices
    )
    if len(keys) > 1:
        issues.append("mixed_image_sizes")
        main_key = keys.most_common(1)[0][0]
        slices = [
            s
            for s in slices
            if (
                s.rows,
                s.columns,
                tuple(round(v, 4) for v in s.pixel_spacing_mm),
                tuple(round(v, 3) for v in s.orientation),
            )
            == main_key
        ]
    info = SeriesInfo(
        series_uid=uid,
        study_uid=_str(ds0, "StudyInstanceUID"),
        modality=_str(ds0, "Modality").upper(),
        sop_class_uid=_str(ds0, "SOPClassUID"),
        image_type=tuple(x.strip().upper() for x in _str(ds0, "ImageType").split("\\") if x.strip()),
        description=_str(ds0, "SeriesDescription")[:64],
        kernel=_str(ds0, "ConvolutionKernel"),
        manufacturer=_str(ds0, "Manufacturer"),
        body_part=_str(ds0, "BodyPartExamined").upper(),
        transfer_syntaxes=tuple(sorted(tsyntaxes)),
        multiframe=multiframe,
        slices=slices,
        issues=issues,
        gantry_tilt_tag_deg=tilt_tag,
    )
    if slices:
        n = info.normal()
        slices.sort(key=lambda s: (float(np.dot(s.position_mm, n)), s.instance_number or 0))
        # drop slices that share a position with the previous one (keep the first)
        kept: list[SliceRef] = [slices[0]]
        for s in slices[1:]:
            if abs(float(np.dot(np.subtract(s.position_mm, kept[-1].position_mm), n))) < 1e-3:
                info.duplicates += 1
                continue
            kept.append(s)
        info.slices = kept
    return info


@contextlib.contextmanager
def open_study(
    zip_path: str | Path, limits: ZipLimits | None = None, workdir: str | Path | None = None
) -> Iterator[Study]:
    """Extract ``zip_path`` into a private temporary directory and discover its series.

    The directory (and everything extracted) is removed when the context exits;
    decode volumes with :func:`load_volume` inside the context.
    """
    tmp = Path(tempfile.mkdtemp(prefix="s4ct-study-", dir=workdir))
    try:
        report = safe_extract(zip_path, tmp, limits)
        study = discover_series(report.files)
        study.skipped.update(report.skipped)
        yield study
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- pixels


_NATIVE_LE = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})


def _native_pixels(ds: Dataset) -> npt.NDArray[Any] | None:
    """Zero-copy view of uncompressed little-endian single-frame 16-bit pixels, else None.

    Only when every bit of the container is used (BitsStored == BitsAllocated), so
    no masking or sign extension is needed; other cases go through pydicom.
    """
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    if ts not in _NATIVE_LE or "PixelData" not in ds:
        return None
    bits = _int(ds, "BitsAllocated", 0)
    if bits != 16 or _int(ds, "BitsStored", 0) != 16 or _int(ds, "NumberOfFrames", 1) != 1:
        return None
    if _int(ds, "SamplesPerPixel", 1) != 1:
        return None
    rows, cols = _int(ds, "Rows", 0), _int(ds, "Columns", 0)
    raw = ds.PixelData
    if not isinstance(raw, bytes) or len(raw) < rows * cols * 2:
        return None  # let pydicom produce its error for short pixel data
    dtype = "<i2" if _int(ds, "PixelRepresentation", 0) == 1 else "<u2"
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
