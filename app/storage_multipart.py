"""A streaming multipart upload of one S3 object of unknown size (:meth:`app.storage.Storage.multipart`).

The object is written whole or not at all: an upload that fails or is left without
:meth:`MultipartUpload.complete` is aborted, so no half-written object is ever visible
(architecture rule 3).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

import anyio.to_thread
from botocore.exceptions import BotoCoreError, ClientError

from app.logs import logger
from app.storage_errors import StorageError, translate_errors, unquoted_etag

if TYPE_CHECKING:
    from app.storage import Storage

__all__ = ["MAX_PARTS", "MIN_PART_SIZE", "MultipartUpload"]

MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum for every part but the last
MAX_PARTS = 10_000


class MultipartUpload:
    """Streaming writer of one object of unknown size.

    ``write`` buffers up to ``part_size`` and uploads each full part on a background thread
    while the caller fills the next one; at most ``max_in_flight`` parts are uploading at
    once (the writer blocks for the oldest beyond that), so at most ``max_in_flight + 1``
    parts are held in memory. Two in flight keep the link busy while one part's request
    is being set up or acknowledged.
    ``complete`` publishes the object: a single PutObject when everything fit in one part,
    else CompleteMultipartUpload. Any failure aborts the upload and raises
    :class:`StorageError`; leaving the ``with`` block without ``complete()`` (by an exception
    or not) aborts too, so a partial object is never visible. Not for concurrent writers.

    From async code use ``awrite``/``acomplete``/``aabort`` (or ``async with``): buffering
    happens on the event loop, every network call on a worker thread.
    """

    def __init__(
        self, storage: Storage, key: str, content_type: str, part_size: int, max_in_flight: int = 2
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.max_in_flight = max_in_flight
        self.storage = storage
        self.key = key
        self.content_type = content_type
        self.part_size = part_size
        self.size = 0
        self.etag: str | None = None
        self.state: Literal["open", "completed", "aborted"] = "open"
        self._buf = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._next_part = 1
        self._pending: deque[Future[dict[str, Any]]] = deque()
        self._executor: ThreadPoolExecutor | None = None

    @property
    def parts_uploaded(self) -> int:
        """Parts sent to S3 so far, finished or in flight (0 while the data fits in the buffer)."""
        return self._next_part - 1

    # ------------------------------------------------------------------ sync API

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        """Append ``chunk``; uploads full parts (blocks while the previous part is in flight)."""
        for part in self._feed(chunk):
            self._submit(part)

    def complete(self) -> None:
        """Publish the object; aborts and raises :class:`StorageError` on failure."""
        self._check_open()
        client, bucket = self.storage.client, self.storage.bucket
        try:
            if self._upload_id is None:
                with translate_errors("put_object"):
                    resp = client.put_object(
                        Bucket=bucket, Key=self.key, Body=bytes(self._buf), ContentType=self.content_type
                    )
            else:
                if self._buf:
                    self._submit(bytes(self._buf))
                    self._buf = bytearray()
                self._wait_pending(0)
                with translate_errors("complete_multipart_upload"):
                    resp = client.complete_multipart_upload(
                        Bucket=bucket,
                        Key=self.key,
                        UploadId=self._upload_id,
                        MultipartUpload={"Parts": self._parts},  # collected oldest first: in order
                    )
        except BaseException:
            self.abort()
            raise
        self.etag = unquoted_etag(resp.get("ETag"))
        self.state = "completed"
        self._buf = bytearray()
        self._shutdown()

    def abort(self) -> None:
        """Discard everything written (idempotent; a no-op after ``complete``). Never raises."""
        if self.state != "open":
            return
        self.state = "aborted"
        self._buf = bytearray()
        while self._pending:
            with contextlib.suppress(BaseException):
                self._pending.popleft().result()
        self._shutdown()
        if self._upload_id is not None:
            try:
                self.storage.client.abort_multipart_upload(
                    Bucket=self.storage.bucket, Key=self.key, UploadId=self._upload_id
                )
            except (BotoCoreError, ClientError) as exc:
                logger.warning(
                    "S3 abort_multipart_upload failed ({}); a janitor must clean it", type(exc).__name__
                )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()

    # ------------------------------------------------------------------ async API

    async def awrite(self, chunk: bytes | bytearray | memoryview) -> None:
        """Async ``write``: buffers on the loop, uploads parts on a worker thread."""
        for part in self._feed(chunk):
            await anyio.to_thread.run_sync(self._submit, part)

    async def acomplete(self) -> None:
        """Async ``complete``."""
        await anyio.to_thread.run_sync(self.complete)

    async def aabort(self) -> None:
        """Async ``abort``."""
        await anyio.to_thread.run_sync(self.abort)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.state == "open":
            await anyio.to_thread.run_sync(self.abort)

    # ------------------------------------------------------------------ machinery

    def _check_open(self) -> None:
        if self.state != "open":
            raise StorageError(f"multipart upload is {self.state}", code="InvalidState")

    def _feed(self, chunk: bytes | bytearray | memoryview) -> Iterator[bytearray]:
        """Buffer ``chunk``; yields each part as soon as it is full (lazily, to bound memory)."""
        self._check_open()
        view = memoryview(chunk).cast("B")
        self.size += len(view)
        while len(view):
            room = self.part_size - len(self._buf)
            self._buf += view[:room]
            view = view[room:]
            if len(self._buf) >= self.part_size:
                part, self._buf = self._buf, bytearray()  # hand the buffer over: no copy
                yield part

    def _submit(self, part: bytes | bytearray) -> None:
        """Wait until fewer than ``max_in_flight`` parts upload, then start ``part`` in the background."""
        try:
            self._wait_pending(self.max_in_flight - 1)
            if self._upload_id is None:
                with translate_errors("create_multipart_upload"):
                    resp = self.storage.client.create_multipart_upload(
                        Bucket=self.storage.bucket, Key=self.key, ContentType=self.content_type
                    )
                self._upload_id = str(resp["UploadId"])
            if self._next_part > MAX_PARTS:
                raise StorageError("S3 upload_part failed (too many parts)", code="TooManyParts")
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self.max_in_flight, thread_name_prefix="s3-part"
                )
            self._pending.append(self._executor.submit(self._upload_part, self._next_part, part))
            self._next_part += 1
        except BaseException:
            self.abort()
            raise

    def _upload_part(self, number: int, data: bytes | bytearray) -> dict[str, Any]:
        with translate_errors("upload_part"):
            resp = self.storage.client.upload_part(
                Bucket=self.storage.bucket,
                Key=self.key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=data,
            )
        return {"PartNumber": number, "ETag": resp["ETag"]}

    def _wait_pending(self, keep: int) -> None:
        """Collect finished parts, oldest first, until at most ``keep`` are still in flight."""
        while len(self._pending) > keep:
            self._parts.append(self._pending.popleft().result())

    def _shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
