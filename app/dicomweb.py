"""DICOMweb bodies: ``multipart/related; type="application/dicom"`` in and out (docs/interop.md).

- :class:`InstancePacker` turns a multipart/related body, fed chunk by chunk, into a study ZIP
  (one stored member per instance, generated names, fixed timestamps: the same instances in
  the same order give the same bytes). Every part must be a DICOM Part 10 file (preamble and
  ``DICM``); the member count and each member's size are capped as the ZIP rules cap them
  (docs/architecture.md §8), so a STOW-RS upload or a WADO-RS fetch becomes the same study
  record, vetted by the same code, as a ZIP upload.
- :func:`multipart_body` and :func:`stow` send instances by STOW-RS; :func:`stow_failures`
  reads what the answer did not store (a PACS may answer 200 and still refuse instances).
- :func:`wado_fetch` retrieves a study or series by WADO-RS into a ZIP file.

No patient data is logged here; URLs are the operator's configured endpoints.
"""

from __future__ import annotations

import io
import secrets
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import httpx
from pydicom.filereader import read_partial
from python_multipart.multipart import MultipartParser, parse_options_header

from ml.errors import DicomError, ZipError
from ml.io import ZipLimits

__all__ = [
    "DICOM_TYPE",
    "InstancePacker",
    "multipart_body",
    "parse_related",
    "stow",
    "stow_answer",
    "stow_failures",
    "wado_fetch",
]

DICOM_TYPE = "application/dicom"
_MAGIC_AT = 128
_HEAD_BYTES = 64 << 10  # kept of each part to read its SOP Class and Instance UIDs
_EPOCH = (1980, 1, 1, 0, 0, 0)


class _Sink:
    """A write-only, non-seekable byte sink: what :class:`zipfile.ZipFile` writes, taken in pieces."""

    def __init__(self, out: Callable[[bytes], None] | None = None) -> None:
        self.buf = bytearray()
        self.out = out
        self.written = 0

    def write(self, b: Any) -> int:
        data = bytes(b)
        self.written += len(data)
        if self.out is not None:
            self.out(data)
        else:
            self.buf += data
        return len(data)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None

    def take(self) -> bytes:
        data = bytes(self.buf)
        self.buf.clear()
        return data


def parse_related(content_type: str) -> bytes:
    """The boundary of a ``multipart/related; type="application/dicom"`` content type.

    Raises:
        ValueError: another media type, another part type, or no boundary.
    """
    mtype, params = parse_options_header(content_type)
    if mtype.lower() != b"multipart/related":
        raise ValueError("the body must be multipart/related")
    ptype = params.get(b"type", DICOM_TYPE.encode()).strip(b'"').lower()
    if ptype != DICOM_TYPE.encode():
        raise ValueError(f'parts must be of type "{DICOM_TYPE}"')
    boundary = params.get(b"boundary", b"").strip(b'"')
    if not boundary:
        raise ValueError("multipart/related without a boundary")
    return boundary


class InstancePacker:
    """Packs the DICOM parts of a multipart/related body into a ZIP, streamed.

    Feed body chunks with :meth:`feed` and take the ZIP bytes produced so far with
    :meth:`take` (or give ``out`` to receive them as written); :meth:`finish` writes the
    central directory. Refusals: ``dicom_invalid`` (a part that is not a DICOM file, or a
    part of another type), ``zip_too_large`` (too many instances or one too big).
    """

    def __init__(
        self, boundary: bytes, limits: ZipLimits | None = None, out: Callable[[bytes], None] | None = None
    ) -> None:
        self.limits = limits or ZipLimits()
        self.sink = _Sink(out)
        self.zip = zipfile.ZipFile(self.sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self.count = 0
        #: (SOPClassUID, SOPInstanceUID) of each part, as read (for the STOW-RS answer)
        self.instances: list[tuple[str, str]] = []
        self._entry: IO[bytes] | None = None
        self._head = b""
        self._size = 0
        self._header = b""
        self._headers: dict[bytes, bytes] = {}
        self._error: Exception | None = None
        self.parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._begin,
                "on_header_field": self._field,
                "on_header_value": self._value,
                "on_headers_finished": self._open,
                "on_part_data": self._data,
                "on_part_end": self._end,
            },
        )

    # -- parser callbacks (python-multipart swallows nothing: errors are kept and raised by feed)
    def _begin(self) -> None:
        self._headers = {}

    def _field(self, data: bytes, start: int, end: int) -> None:
        self._header = bytes(data[start:end]).lower()

    def _value(self, data: bytes, start: int, end: int) -> None:
        self._headers[self._header] = self._headers.get(self._header, b"") + bytes(data[start:end])

    def _open(self) -> None:
        ctype = self._headers.get(b"content-type", DICOM_TYPE.encode()).split(b";")[0].strip().lower()
        if ctype != DICOM_TYPE.encode():
            raise DicomError("dicom_invalid", f"part {self.count + 1} is not {DICOM_TYPE}")
        self.count += 1
        if self.count > self.limits.max_members:
            raise ZipError("zip_too_large", f"more than {self.limits.max_members} instances")
        info = zipfile.ZipInfo(f"instances/{self.count:06d}.dcm", date_time=_EPOCH)
        info.compress_type = zipfile.ZIP_STORED
        self._entry = self.zip.open(info, "w", force_zip64=True)
        self._head = b""
        self._size = 0

    def _data(self, data: bytes, start: int, end: int) -> None:
        chunk = bytes(data[start:end])
        self._size += len(chunk)
        if self._size > self.limits.max_member_uncompressed:
            raise ZipError(
                "zip_too_large", f"instance {self.count} exceeds {self.limits.max_member_uncompressed} bytes"
            )
        if len(self._head) < _HEAD_BYTES:
            self._head += chunk[: _HEAD_BYTES - len(self._head)]
        assert self._entry is not None
        self._entry.write(chunk)

    def _end(self) -> None:
        if self._entry is None:
            return
        self._entry.close()
        self._entry = None
        if self._head[_MAGIC_AT : _MAGIC_AT + 4] != b"DICM":
            raise DicomError("dicom_invalid", f"part {self.count} is not a DICOM Part 10 file")
        self.instances.append(_sop_uids(self._head, self.count))

    def feed(self, chunk: bytes) -> None:
        """Parse one chunk of the body (raises the refusal of a bad part)."""
        try:
            self.parser.write(chunk)
        except (DicomError, ZipError):
            raise
        except Exception as e:  # python-multipart's own errors: a malformed body
            raise DicomError("dicom_invalid", "malformed multipart/related body") from e

    def take(self) -> bytes:
        """The ZIP bytes written since the last call."""
        return self.sink.take()

    def finish(self) -> int:
        """Close the ZIP (the central directory); the number of instances. No instance is ``no_dicom``."""
        if self.count == 0:
            raise DicomError("no_dicom", "the body holds no DICOM instance")
        if self._entry is not None:
            raise DicomError("dicom_invalid", "the multipart/related body ends inside a part")
        self.zip.close()
        return self.count


def _sop_uids(head: bytes, n: int) -> tuple[str, str]:
    """SOP Class and Instance UID from the first bytes of a Part 10 file (header read up to them)."""
    try:
        ds = read_partial(io.BytesIO(head), stop_when=lambda tag, vr, length: tag > 0x00080018)
        return str(ds.SOPClassUID), str(ds.SOPInstanceUID)
    except Exception as e:  # truncated or hostile headers
        raise DicomError("dicom_invalid", f"part {n} has no readable SOP Class/Instance UID") from e


def stow_answer(instances: list[tuple[str, str]]) -> dict[str, Any]:
    """The DICOM JSON answer of a STOW-RS request that stored ``instances`` (Referenced SOP Sequence)."""
    items = [
        {"00081150": {"vr": "UI", "Value": [cls]}, "00081155": {"vr": "UI", "Value": [inst]}}
        for cls, inst in instances
    ]
    return {"00081199": {"vr": "SQ", "Value": items}}


def multipart_body(files: Iterable[bytes]) -> tuple[Iterator[bytes], str]:
    """A multipart/related body of DICOM files and its content type."""
    boundary = "s4ct-" + secrets.token_hex(16)

    def parts() -> Iterator[bytes]:
        for data in files:
            yield f"--{boundary}\r\nContent-Type: {DICOM_TYPE}\r\n\r\n".encode()
            yield data
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    return parts(), f'multipart/related; type="{DICOM_TYPE}"; boundary={boundary}'


def stow_failures(answer: Any, sent: int) -> list[str]:
    """What a STOW-RS answer says was not stored of ``sent`` instances (empty: all stored).

    The Failed SOP Sequence (0008,1198) lists refused instances, but a PACS may also answer
    200 with neither list filled (Orthanc 1.10 does for instances whose UIDs it refuses): every
    instance sent must be in the Referenced SOP Sequence (0008,1199).
    """
    if not isinstance(answer, dict):
        return [f"the answer is not DICOM JSON ({sent} instance(s) unconfirmed)"]
    out = []
    for item in answer.get("00081198", {}).get("Value") or []:
        uid = (item.get("00081155", {}).get("Value") or ["?"])[0] if isinstance(item, dict) else "?"
        reason = (item.get("00081197", {}).get("Value") or [""])[0] if isinstance(item, dict) else ""
        out.append(f"{uid} (reason {reason})" if reason != "" else str(uid))
    stored = len(answer.get("00081199", {}).get("Value") or [])
    if stored + len(out) < sent:
        out.append(f"{sent - stored - len(out)} instance(s) neither stored nor listed as failed")
    return out


def stow(
    client: httpx.Client, base_url: str, files: list[bytes], study_uid: str | None = None
) -> httpx.Response:
    """POST ``files`` by STOW-RS to ``{base_url}/studies[/{study_uid}]``."""
    body, ctype = multipart_body(files)
    url = base_url.rstrip("/") + "/studies" + (f"/{study_uid}" if study_uid else "")
    return client.post(
        url, content=b"".join(body), headers={"Content-Type": ctype, "Accept": "application/dicom+json"}
    )


def wado_fetch(
    client: httpx.Client,
    base_url: str,
    study_uid: str,
    series_uid: str | None,
    zip_path: Path,
    *,
    limits: ZipLimits | None = None,
    max_bytes: int,
) -> int:
    """Retrieve a study (or one series) by WADO-RS into ``zip_path``; the number of instances.

    Raises:
        httpx.HTTPError: the PACS is unreachable or answers an error status.
        ml.errors.InputError: the answer is not DICOM, holds nothing, or exceeds the limits.
    """
    url = f"{base_url.rstrip('/')}/studies/{study_uid}" + (f"/series/{series_uid}" if series_uid else "")
    accept = f'multipart/related; type="{DICOM_TYPE}"; transfer-syntax=*'
    with zip_path.open("wb") as fh, client.stream("GET", url, headers={"Accept": accept}) as r:
        r.raise_for_status()
        try:
            boundary = parse_related(r.headers.get("content-type", ""))
        except ValueError as e:
            raise DicomError("no_dicom", f"the PACS answered no DICOM instances ({e})") from None
        size = 0

        def write(data: bytes) -> None:
            nonlocal size
            size += len(data)
            if size > max_bytes:
                raise ZipError("zip_too_large", f"the study exceeds {max_bytes} bytes")
            fh.write(data)

        packer = InstancePacker(boundary, limits, out=write)
        for chunk in r.iter_bytes():
            packer.feed(chunk)
        return packer.finish()
