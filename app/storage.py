"""Object storage: S3 through boto3 (SeaweedFS embedded, MinIO or AWS S3).

Objects are written whole or not at all: a :class:`MultipartUpload` that fails or is left
without :meth:`MultipartUpload.complete` is aborted, so no half-written object is ever
visible (architecture rule 3). Error messages name the operation and the S3 error code only,
never object content.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import anyio.to_thread
import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from app.config import Settings
from app.logs import logger

__all__ = [
    "DEFAULT_PART_SIZE",
    "MAX_PRESIGN_SECONDS",
    "MIN_PART_SIZE",
    "MultipartUpload",
    "ObjectNotFoundError",
    "Storage",
    "StorageError",
    "translate_errors",
]

MiB = 1024 * 1024
DEFAULT_PART_SIZE = 8 * MiB
MIN_PART_SIZE = 5 * MiB  # S3's minimum for every part but the last
MAX_PARTS = 10_000
MAX_PRESIGN_SECONDS = 900
_READ_CHUNK = 1 * MiB
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})


class StorageError(Exception):
    """An S3 operation failed. ``code`` is the S3 error code (or the client error type)."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class ObjectNotFoundError(StorageError):
    """The object (or the bucket) does not exist."""


@contextlib.contextmanager
def _translate(operation: str) -> Iterator[None]:
    """Turn botocore errors into :class:`StorageError` with a short message."""
    try:
        yield
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code") or "unknown")
        if code in _NOT_FOUND:
            raise ObjectNotFoundError(f"S3 {operation}: object not found", code=code) from exc
        if code == "NoSuchBucket":
            raise ObjectNotFoundError(f"S3 {operation}: bucket not found", code=code) from exc
        raise StorageError(f"S3 {operation} failed ({code})", code=code) from exc
    except BotoCoreError as exc:
        name = type(exc).__name__
        raise StorageError(f"S3 {operation} failed ({name})", code=name) from exc


#: the same for callers outside this module (e.g. bucket settings)
translate_errors = _translate


def _etag(value: Any) -> str:
    return str(value or "").strip('"')


class Storage:
    """One bucket on one S3 endpoint.

    ``endpoint`` None means AWS S3. ``public_endpoint`` (optional) is the address browsers
    use; presigned URLs are signed for it (SigV4 signs the host). ``sse`` (e.g. ``"AES256"``)
    is requested as server-side encryption on every object written. The client is thread-safe;
    methods block, so async code calls them through ``anyio.to_thread.run_sync`` (uploads
    have :meth:`MultipartUpload.awrite`).
    """

    def __init__(
        self,
        endpoint: str | None,
        access_key: str | None,
        secret_key: str | None,
        bucket: str,
        region: str = "us-east-1",
        *,
        public_endpoint: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_attempts: int = 5,
        max_pool_connections: int = 32,
        sse: str | None = None,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes")
        self.bucket = bucket
        self.region = region
        self.endpoint = endpoint
        self.access_key = access_key
        self.secret_key = secret_key
        self.part_size = part_size
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max_pool_connections,
        )
        session = boto3.session.Session(
            aws_access_key_id=access_key, aws_secret_access_key=secret_key, region_name=region
        )
        self.client: Any = session.client("s3", endpoint_url=endpoint, config=config)
        self._presigner: Any = (
            session.client("s3", endpoint_url=public_endpoint, config=config)
            if public_endpoint and public_endpoint != endpoint
            else self.client
        )
        self.sse = sse
        if sse:  # every object written (PutObject, multipart) asks for server-side encryption
            for op in _WRITES:
                self.client.meta.events.register(f"before-parameter-build.s3.{op}", self._request_sse)

    def _request_sse(self, params: dict[str, Any], **_: Any) -> None:
        params.setdefault("ServerSideEncryption", self.sse)

    # ------------------------------------------------------------------ bucket

    def ensure_bucket(self) -> None:
        """Create the bucket unless it exists (safe to call concurrently)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code") or "")
            if code not in {"404", "NoSuchBucket", "NotFound"}:
                raise StorageError(f"S3 head_bucket failed ({code or 'unknown'})", code=code) from exc
        except BotoCoreError as exc:
            raise StorageError(f"S3 head_bucket failed ({type(exc).__name__})") from exc
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            with _translate("create_bucket"):
                self.client.create_bucket(**kwargs)
            logger.info("created S3 bucket {}", self.bucket)
        except StorageError as exc:
            if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise

    def ping(self) -> None:
        """Cheap reachability and auth check (HeadBucket); raises :class:`StorageError`."""
        with _translate("head_bucket"):
            self.client.head_bucket(Bucket=self.bucket)

    # ------------------------------------------------------------------ write

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Store ``data`` under ``key`` with one PutObject."""
        with _translate("put_object"):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> None:
        """Upload a file: one PutObject up to the part size, a multipart upload above."""
        path = Path(path)
        size = path.stat().st_size
        with path.open("rb") as fh:
            if size <= self.part_size:
                with _translate("put_object"):
                    self.client.put_object(Bucket=self.bucket, Key=key, Body=fh, ContentType=content_type)
                return
            with self.multipart(key, content_type) as upload:
                while chunk := fh.read(self.part_size):
                    upload.write(chunk)
                upload.complete()

    def multipart(
        self,
        key: str,
        content_type: str = "application/octet-stream",
        *,
        part_size: int | None = None,
        max_in_flight: int = 2,
    ) -> MultipartUpload:
        """A streaming writer for an upload of unknown size (see :class:`MultipartUpload`)."""
        return MultipartUpload(self, key, content_type, part_size or self.part_size, max_in_flight)

    # ------------------------------------------------------------------ read

    def head(self, key: str) -> dict[str, Any] | None:
        """``{"size", "content_type", "etag", "last_modified", "metadata"}`` or None if absent."""
        try:
            with _translate("head_object"):
                meta = self.client.head_object(Bucket=self.bucket, Key=key)
        except ObjectNotFoundError as exc:
            if exc.code == "NoSuchBucket":
                raise
            return None
        return {
            "size": int(meta.get("ContentLength", 0)),
            "content_type": meta.get("ContentType"),
            "etag": _etag(meta.get("ETag")),
            "last_modified": meta.get("LastModified"),
            "metadata": dict(meta.get("Metadata") or {}),
        }

    def exists(self, key: str) -> bool:
        """True when ``key`` exists."""
        return self.head(key) is not None

    def object_exists(self, bucket: str, key: str) -> bool:
        """True when ``key`` exists in ``bucket`` (any bucket this client can read, e.g. of weights)."""
        try:
            with _translate("head_object"):
                self.client.head_object(Bucket=bucket, Key=key)
        except ObjectNotFoundError:
            return False
        return True

    def get_bytes(self, key: str) -> bytes:
        """The whole object in memory (for small objects); :class:`ObjectNotFoundError` if absent."""
        with _translate("get_object"):
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end`` (inclusive, like an HTTP Range) of the object."""
        if start < 0 or end < start:
            raise ValueError("need 0 <= start <= end")
        with _translate("get_object"):
            body = self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end}")["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix`` in lexicographic order (paginated lazily)."""
        with _translate("list_objects_v2"):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                for obj in page.get("Contents", []) or []:
                    yield str(obj["Key"])

    def get_to_file(self, key: str, path: Path) -> int:
        """Stream the object into ``path`` (written beside it, renamed when complete); returns its size."""
        path = Path(path)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        size = 0
        try:
            with os.fdopen(fd, "wb") as out, _translate("get_object"):
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
                try:
                    for chunk in body.iter_chunks(_READ_CHUNK):
                        out.write(chunk)
                        size += len(chunk)
                finally:
                    body.close()
            os.replace(tmp_name, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise
        return size

    def presign_get(self, key: str, expires_s: int = 300) -> str:
        """A presigned GET URL valid for ``expires_s`` seconds (at most 900)."""
        if not 1 <= expires_s <= MAX_PRESIGN_SECONDS:
            raise ValueError(f"expires_s must be between 1 and {MAX_PRESIGN_SECONDS} seconds")
        with _translate("presign"):
            url = self._presigner.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=int(expires_s)
            )
        return str(url)

    # ------------------------------------------------------------------ delete

    def delete(self, key: str) -> None:
        """Delete ``key`` (no error if absent)."""
        with _translate("delete_object"):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with ``prefix`` (non-empty); returns the count."""
        if not prefix:
            raise ValueError("refusing to delete with an empty prefix (the whole bucket)")
        deleted = 0
        with _translate("delete_objects"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix, PaginationConfig={"PageSize": 1000}
            )
            for page in pages:
                keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
                if not keys:
                    continue
                resp = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
                errors = resp.get("Errors") or []
                if errors:
                    code = str(errors[0].get("Code") or "unknown")
                    raise StorageError(f"S3 delete_objects failed for {len(errors)} keys ({code})", code=code)
                deleted += len(keys)
        return deleted

    def abort_incomplete_uploads(self, prefix: str = "", older_than_s: float = 86_400.0) -> int:
        """Abort multipart uploads under ``prefix`` started more than ``older_than_s`` ago.

        Janitor for uploads orphaned by a killed process; returns how many were aborted.
        """
        cutoff = time.time() - older_than_s
        aborted = 0
        with _translate("list_multipart_uploads"):
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                for up in page.get("Uploads", []) or []:
                    initiated = up.get("Initiated")
                    if initiated is not None and initiated.timestamp() > cutoff:
                        continue
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"]
                    )
                    aborted += 1
        return aborted


#: the operations that create an object (``Storage.sse`` is requested on each)
_WRITES = ("PutObject", "CreateMultipartUpload", "CopyObject")


def storage_from_settings(settings: Settings) -> Storage:
    """The service's bucket as configured (``S4CT_S3_*``); raises ValueError without credentials."""
    if settings.s3_access_key is None or settings.s3_secret_key is None:
        raise ValueError("missing settings: S4CT_S3_ACCESS_KEY, S4CT_S3_SECRET_KEY")
    return Storage(
        settings.s3_endpoint,
        settings.s3_access_key.get_secret_value(),
        settings.s3_secret_key.get_secret_value(),
        settings.s3_bucket,
        region=settings.s3_region,
        public_endpoint=settings.s3_public_endpoint,
        connect_timeout=min(5.0, settings.s3_read_timeout_s),
        read_timeout=settings.s3_read_timeout_s,
        max_attempts=settings.s3_max_retries,  # botocore's retries "max_attempts" counts retries
        sse=settings.s3_sse or None,
    )


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
                with _translate("put_object"):
                    resp = client.put_object(
                        Bucket=bucket, Key=self.key, Body=bytes(self._buf), ContentType=self.content_type
                    )
            else:
                if self._buf:
                    self._submit(bytes(self._buf))
                    self._buf = bytearray()
                self._wait_pending(0)
                with _translate("complete_multipart_upload"):
                    resp = client.complete_multipart_upload(
                        Bucket=bucket,
                        Key=self.key,
                        UploadId=self._upload_id,
                        MultipartUpload={"Parts": self._parts},  # collected oldest first: in order
                    )
        except BaseException:
            self.abort()
            raise
        self.etag = _etag(resp.get("ETag"))
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
                with _translate("create_multipart_upload"):
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
        with _translate("upload_part"):
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
