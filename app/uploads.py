"""Streaming study uploads: request body → S3 multipart upload, sha256 and size on the way.

The body is never held whole in memory or written to local disk: chunks go
into the object store's multipart upload as they arrive (at most a couple of
parts buffered), the sha256 is updated per chunk, and only the last few MiB are
kept to read the ZIP's central directory afterwards (:func:`ml.io.precheck_zip`;
a central directory larger than that is fetched back with a ranged GET).

Two body encodings are accepted: the raw ZIP (``application/zip`` or
``application/octet-stream``) and ``multipart/form-data`` with one file part
(python-multipart's streaming parser; other fields are ignored, but their bytes count against
the cap at the edge, app/api/edge.py, and a part's headers are bounded).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import io
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

import anyio
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from app.errors import ServiceError
from app.storage import Storage
from ml.errors import InputError, ZipError
from ml.io import ZipLimits, ZipSummary, precheck_zip

__all__ = ["RAW_TYPES", "ReceivedUpload", "UploadGate", "mmap_large_buffers", "receive_zip"]

RAW_TYPES = ("application/zip", "application/x-zip-compressed", "application/octet-stream")
PART_HEADER_BYTES = 8192  # one header value of a multipart part, at most
TAIL_BYTES = 1 << 20  # bytes kept from the end of the body for the central directory (else a ranged GET)


_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3


def mmap_large_buffers(threshold: int = 1 << 20, trim: int = 32 << 20) -> bool:
    """Serve allocations of ``threshold`` bytes and more with mmap, so freeing returns them.

    glibc raises its mmap threshold each time a large mmap'd block is freed (up to 32 MiB),
    after which the 8 MiB part buffers of uploads come from the heap and stay in the
    process after a burst (measured: +114 MiB kept after 12 concurrent uploads; +16 MiB
    with this). A fixed threshold ends the sliding. Fixing it also freezes the heap's trim
    threshold at 128 KiB, so small allocations would keep shrinking and regrowing the heap;
    ``trim`` sets that one high (the large buffers are unmapped on free regardless).
    No-op (False) without glibc.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, trim)
        )
    except (OSError, AttributeError):
        return False


class UploadGate:
    """Bounds the uploads one API process streams at once, and each client's share of them.

    Each streaming upload holds up to ``(parts in flight + 1) × part size`` bytes (24 MiB
    with the defaults), so memory is bounded by ``limit`` times that however many clients
    send at once. One client holds at most ``per_client`` of the slots, so that a client
    (or a leaked key) cannot take them all. Waiting uploads are not read (TCP back-pressure
    holds the sender); one waiting longer than ``wait_s`` is refused with 503 ``server_busy``
    and ``Retry-After`` (Laravel/Horizon retries it). Created outside any event loop, bound
    to the first one that uses it.
    """

    def __init__(self, limit: int, wait_s: float, per_client: int | None = None) -> None:
        self.limit = limit
        self.wait_s = wait_s
        self.per_client = min(limit, per_client or limit)
        self._sem: anyio.Semaphore | None = None
        self._clients: dict[str, tuple[anyio.Semaphore, int]] = {}  # semaphore, uploads holding or waiting
        self._held = 0

    @property
    def in_use(self) -> int:
        """Slots held now (uploads being streamed, not those waiting)."""
        return self._held

    def _busy(self, why: str) -> ServiceError:
        err = ServiceError("server_busy", why)
        err.headers["Retry-After"] = str(max(1, round(self.wait_s / 4)))
        return err

    def _share(self, client: str | None) -> anyio.Semaphore | None:
        """``client``'s semaphore (one more user of it), None without a client."""
        if client is None:
            return None
        sem, users = self._clients.get(client) or (anyio.Semaphore(self.per_client), 0)
        self._clients[client] = (sem, users + 1)
        return sem

    def _unshare(self, client: str | None) -> None:
        if client is None:
            return
        sem, users = self._clients[client]
        if users <= 1:
            del self._clients[client]
        else:
            self._clients[client] = (sem, users - 1)

    @asynccontextmanager
    async def slot(self, client: str | None = None) -> AsyncIterator[None]:
        """Hold one upload slot (one of ``client``'s share) for the ``async with`` body."""
        if self._sem is None:
            self._sem = anyio.Semaphore(self.limit)
        sem, share = self._sem, self._share(client)
        got_share = got_slot = False
        try:
            with anyio.move_on_after(self.wait_s):
                if share is not None:
                    await share.acquire()
                    got_share = True
                await sem.acquire()
                got_slot = True
            if not got_slot:
                if share is not None and not got_share:
                    raise self._busy(f"this client already streams {self.per_client} uploads; retry later")
                raise self._busy(f"{self.limit} uploads are in progress; retry later")
            self._held += 1
            try:
                yield
            finally:
                self._held -= 1
        finally:
            if got_slot:
                sem.release()
            if share is not None and got_share:
                share.release()
            self._unshare(client)


@dataclass(frozen=True)
class ReceivedUpload:
    """A ZIP stored in S3 and checked: its key, sha256, size and central-directory summary."""

    key: str
    sha256: str
    size: int
    summary: ZipSummary


class _Tail:
    """The last ``cap`` bytes of a stream (whole chunks, trimmed lazily)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.chunks: deque[bytes] = deque()
        self.held = 0

    def add(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.held += len(chunk)
        while self.chunks and self.held - len(self.chunks[0]) >= self.cap:
            self.held -= len(self.chunks.popleft())

    def bytes(self) -> bytes:
        data = b"".join(self.chunks)
        return data[-self.cap :] if len(data) > self.cap else data


class _StoredZip(io.RawIOBase):
    """Seekable read-only view of the stored object: the tail from memory, the rest by ranged GET."""

    def __init__(self, storage: Storage, key: str, size: int, tail: bytes) -> None:
        self.storage, self.key, self.size = storage, key, size
        self.tail, self.tail_start = tail, size - len(tail)
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def read(self, n: int | None = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self.pos + n)
        if end <= self.pos:
            return b""
        if self.pos >= self.tail_start:
            data = self.tail[self.pos - self.tail_start : end - self.tail_start]
        else:
            data = self.storage.get_range(self.key, self.pos, end - 1)
        self.pos += len(data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


async def _raw_chunks(request: Request) -> AsyncIterator[bytes]:
    async for chunk in request.stream():
        if chunk:
            yield chunk


async def _multipart_chunks(request: Request, content_type: str) -> AsyncIterator[bytes]:
    """The bytes of the first file part of a multipart/form-data body, streamed."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ServiceError("validation_error", "multipart/form-data without a boundary")
    state: dict[str, Any] = {"is_file": False, "done": False, "found": False, "header": b"", "headers": {}}
    out: list[bytes] = []

    def on_part_begin() -> None:
        state["headers"] = {}
        state["is_file"] = False

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["header"] = data[start:end].lower()

    def on_header_value(data: bytes, start: int, end: int) -> None:
        value = state["headers"].get(state["header"], b"") + data[start:end]
        if len(value) > PART_HEADER_BYTES or len(state["headers"]) > 32:  # part headers are never held big
            raise ValueError("multipart part headers too large")
        state["headers"][state["header"]] = value

    def on_headers_finished() -> None:
        disp = state["headers"].get(b"content-disposition", b"")
        _, dparams = parse_options_header(disp)
        state["is_file"] = b"filename" in dparams and not state["found"] and not state["done"]
        if state["is_file"]:
            state["found"] = True

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["is_file"]:
            out.append(bytes(data[start:end]))

    def on_part_end() -> None:
        if state["is_file"]:
            state["done"] = True
            state["is_file"] = False

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    async for chunk in request.stream():
        try:
            parser.write(chunk)
        except Exception as e:  # python-multipart raises its own errors for malformed bodies
            raise ServiceError("validation_error", "malformed multipart/form-data body") from e
        for piece in out:
            yield piece
        out.clear()
    if not state["found"]:
        raise ServiceError("validation_error", "multipart/form-data body has no file part")


def _body_chunks(request: Request) -> AsyncIterator[bytes]:
    ctype = request.headers.get("content-type", "").strip()
    mtype = ctype.split(";", 1)[0].strip().lower()
    if mtype == "multipart/form-data":
        return _multipart_chunks(request, ctype)
    if mtype in RAW_TYPES or mtype == "":
        return _raw_chunks(request)
    raise ServiceError("unsupported_media_type", f"unsupported content type {mtype!r}")


async def receive_zip(
    request: Request,
    storage: Storage,
    key: str,
    *,
    max_bytes: int,
    part_bytes: int,
    parts_in_flight: int = 2,
    limits: ZipLimits | None = None,
    gate: UploadGate | None = None,
    client: str | None = None,
    chunks: Callable[[Request], AsyncIterator[bytes]] | None = None,
) -> ReceivedUpload:
    """Stream the request's ZIP to ``key`` and check it; the object is removed on any refusal.

    ``chunks`` makes the ZIP's bytes from the request another way (the STOW-RS route packs
    DICOM parts into one, :mod:`app.dicomweb`); by default the body is the ZIP.

    Raises :class:`ServiceError` (``payload_too_large``, ``unsupported_media_type``,
    ``validation_error``, ``upload_failed``, ``server_busy`` when ``gate`` has no free slot in
    time) or :class:`ml.errors.ZipError`.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + (1 << 20):
        # multipart framing adds a little: refuse only what is clearly too big before reading
        raise ServiceError("payload_too_large", f"the upload exceeds {max_bytes} bytes")
    async with gate.slot(client) if gate is not None else nullcontext():
        body = (chunks or _body_chunks)(request)
        return await _stream_and_check(body, storage, key, max_bytes, part_bytes, parts_in_flight, limits)


async def _stream_and_check(
    chunks: AsyncIterator[bytes],
    storage: Storage,
    key: str,
    max_bytes: int,
    part_bytes: int,
    parts_in_flight: int,
    limits: ZipLimits | None,
) -> ReceivedUpload:
    sha = hashlib.sha256()
    size = 0
    tail = _Tail(TAIL_BYTES)
    upload = storage.multipart(key, "application/zip", part_size=part_bytes, max_in_flight=parts_in_flight)
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise ServiceError("payload_too_large", f"the upload exceeds {max_bytes} bytes")
            sha.update(chunk)
            tail.add(chunk)
            await upload.awrite(chunk)
        if size == 0:
            raise ZipError("zip_invalid", "the upload is empty")
        await run_in_threadpool(upload.complete)
    except ClientDisconnect:
        await run_in_threadpool(upload.abort)
        raise
    except (ServiceError, InputError):
        await run_in_threadpool(upload.abort)
        raise
    except Exception as e:
        await run_in_threadpool(upload.abort)
        raise ServiceError("upload_failed", "the object store refused the upload; retry") from e
    view = _StoredZip(storage, key, size, tail.bytes())
    try:
        summary = await run_in_threadpool(precheck_zip, cast(BinaryIO, view), limits)
    except ZipError:
        await run_in_threadpool(storage.delete, key)
        raise
    return ReceivedUpload(key=key, sha256=sha.hexdigest(), size=size, summary=summary)
