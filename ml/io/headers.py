"""DICOM header vocabulary and guarded access to hostile headers.

pydicom decodes header values lazily, so a corrupted element raises only when it
is read, with assorted exception types: every value is read through the guarded
accessors here. :func:`phi_tokens` collects the identifier values that log
scrubbing must remove.
"""

from __future__ import annotations

import io
import logging
import math
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import pydicom
import pydicom.config
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

if TYPE_CHECKING:
    from ml.io.flatheader import FlatHeader

log = logging.getLogger(__name__)

#: a parsed header: pydicom's dataset, or the fast reader's kept values (:mod:`ml.io.flatheader`)
Header: TypeAlias = "Dataset | FlatHeader"


class UnknownKeywordError(LookupError):
    """A keyword the fast header reader does not keep: a programming error, never hostile input."""


# pydicom's validation warnings quote the offending value, which can be a patient
# name or ID: never let them reach a log (architecture rule 7).
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


def to_float(v: Any, default: float | None = None) -> float | None:
    """``float(v)`` when it is a finite number, else ``default``."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        return default
    return x if math.isfinite(x) else default


def header_int(ds: Header, kw: str, default: Any) -> Any:
    """An integer header value, or ``default`` when absent, empty or unparseable (hostile input)."""
    v = header_value(ds, kw)
    try:
        return default if v in (None, "") else int(v)
    except Exception:
        return default


def to_floats(v: Any, n: int) -> tuple[float, ...] | None:
    """``n`` finite floats from a multi-valued element, or None."""
    try:
        vals = tuple(float(x) for x in v)
    except (TypeError, ValueError):
        return None
    if len(vals) != n or not all(math.isfinite(x) for x in vals):
        return None
    return vals


def _first_item(ds: Dataset, seq_kw: str) -> Dataset | None:
    seq = header_value(ds, seq_kw)
    if seq is None:
        return None
    try:
        return seq[0] if len(seq) else None
    except (TypeError, IndexError):
        return None


def functional_item(ds: Dataset, per_frame: Dataset | None, seq_kw: str) -> Dataset | None:
    """An item of a functional group macro: per-frame first, then shared."""
    if per_frame is not None:
        item = _first_item(per_frame, seq_kw)
        if item is not None:
            return item
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    return _first_item(shared, seq_kw) if shared is not None else None


def header_value(ds: Header, kw: str) -> Any:
    """``ds.get(kw)``, or None when the element cannot be decoded.

    pydicom decodes header values lazily, so a corrupted element (an unknown VR,
    bytes that do not parse as its VR) raises only when it is read, and with
    assorted exception types (NotImplementedError, ValueError, …).
    """
    try:
        return ds.get(kw)
    except UnknownKeywordError:
        raise
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


def phi_tokens(ds: Dataset, cache: dict[tuple[Any, ...], set[str]] | None = None) -> set[str]:
    """Identifier strings of ``ds`` (names, IDs, dates) that log scrubbing must remove.

    An element that does not decode (hostile or corrupted VR) contributes its raw
    bytes as text, so a mangled PatientName is still known to the scrubber. ``cache``
    (one per study) keeps the tokens of each raw value already seen (with its VR and the
    dataset's character set), so the same names in every file are decoded once.
    """
    out: set[str] = set()
    charset = repr(header_value(ds, "SpecificCharacterSet"))  # pydicom decodes it while reading
    for kw in PHI_KEYWORDS:
        raw = _raw_key(ds, kw) if cache is not None else None
        key = None if raw is None else (kw, raw, charset)
        if cache is not None and key is not None and key in cache:
            out |= cache[key]
            continue
        tokens = _tokens_of(ds, kw)
        if cache is not None and key is not None:
            cache[key] = tokens
        out |= tokens
    return out


def _raw_key(ds: Dataset, kw: str) -> tuple[str, bytes] | None:
    """(VR, bytes) of element ``kw`` while it is still undecoded, else None (no element, or decoded)."""
    try:
        raw = ds.get_item(kw)
    except Exception:
        return None
    value = getattr(raw, "value", None)
    if not isinstance(raw, tuple) or not isinstance(value, bytes):  # RawDataElement is a NamedTuple
        return None
    return str(getattr(raw, "VR", "")), value


def _tokens_of(ds: Dataset, kw: str) -> set[str]:
    out: set[str] = set()
    try:
        v = ds.get(kw)
    except Exception:
        v = _raw_text(ds, kw) or None
    if v is None:
        return out
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


def read_header(path: Path | bytes) -> Dataset | None:
    """Read a DICOM header without pixel data (from a file or its bytes), or None when it is not DICOM.

    Files without the 128-byte preamble are accepted only if they parse to a
    dataset with an SOP Class UID. pydicom's RecursionError (deeply nested
    sequences) and any parse failure count as 'not DICOM'.
    """
    return read_header_at(path)[0]


def read_header_at(path: Path | bytes) -> tuple[Dataset | None, int]:
    """:func:`read_header`, and the byte offset where parsing stopped (-1 when unknown).

    Parsing stops before the pixel data element, so for a file's bytes the offset is
    where that element starts (see :func:`native_pixel_span`).
    """
    try:
        if isinstance(path, bytes):
            head = path[:132]
            buf = io.BytesIO(path)
            src: Path | io.BytesIO = buf
        else:
            with path.open("rb") as fh:
                head = fh.read(132)
            src, buf = path, None
        has_magic = len(head) == 132 and head[128:132] == b"DICM"
        ds = pydicom.dcmread(src, stop_before_pixels=True, force=not has_magic, defer_size="64 KB")
        if not has_magic and "SOPClassUID" not in ds:
            return None, -1
        _ = ds.get("SOPClassUID")  # force parsing of the top level
        return ds, (buf.tell() if buf is not None else -1)
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
        return None, -1
    except Exception:  # pydicom raises assorted errors on hostile input
        log.debug("unparseable DICOM header skipped", exc_info=False)
        return None, -1


#: native little-endian transfer syntaxes: implicit VR, explicit VR
_IMPLICIT_LE, _EXPLICIT_LE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010), little-endian


def native_pixel_span(ds: Header, data: bytes, pos: int) -> tuple[int, str] | None:
    """Where a single uncompressed 16-bit frame lies in ``data``: (byte offset, NumPy dtype), or None.

    ``ds`` is the header parsed from ``data`` up to ``pos`` (:func:`read_header_at`). Only
    native little-endian images whose 16 bits are all used (no masking or sign extension),
    one frame, one sample, with a pixel data element of defined length that holds at least
    Rows × Columns values inside ``data``: the values pydicom's ``pixel_array`` gives,
    read without a second parse. Anything else (None) is decoded through pydicom.
    """
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    if ts not in (_IMPLICIT_LE, _EXPLICIT_LE) or pos < 0 or data[pos : pos + 4] != _PIXEL_DATA_TAG:
        return None
    if header_int(ds, "BitsAllocated", 0) != 16 or header_int(ds, "BitsStored", 0) != 16:
        return None
    if header_int(ds, "NumberOfFrames", 1) != 1 or header_int(ds, "SamplesPerPixel", 1) != 1:
        return None
    if ts == _EXPLICIT_LE:
        if data[pos + 4 : pos + 8] not in (b"OW\x00\x00", b"OB\x00\x00") or len(data) < pos + 12:
            return None
        length, start = struct.unpack_from("<I", data, pos + 8)[0], pos + 12
    else:
        if len(data) < pos + 8:
            return None
        length, start = struct.unpack_from("<I", data, pos + 4)[0], pos + 8
    need = header_int(ds, "Rows", 0) * header_int(ds, "Columns", 0) * 2
    if length == 0xFFFFFFFF or need <= 0 or length < need or start + length > len(data):
        return None  # encapsulated, empty or truncated: pydicom decodes it or reports the error
    return start, "<i2" if header_int(ds, "PixelRepresentation", 0) == 1 else "<u2"


def header_str(ds: Header, kw: str) -> str:
    v = header_value(ds, kw)
    if v is None:
        return ""
    if isinstance(v, pydicom.multival.MultiValue | list | tuple):
        return "\\".join(str(x) for x in v)
    return str(v).strip()
