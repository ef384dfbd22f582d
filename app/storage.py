"""Object storage: S3 through boto3 (SeaweedFS embedded, MinIO or AWS S3).

Objects are written whole or not at all: a multipart upload (:mod:`app.storage_multipart`)
that fails or is left without ``complete()`` is aborted, so no half-written object is ever
visible (architecture rule 3). Error messages name the operation and the S3 error code only,
never object content (:mod:`app.storage_errors`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from app.config import Settings
from app.logs import logger
from app.storage_errors import ObjectNotFoundError, StorageError, translate_errors, unquoted_etag
from app.storage_multipart import MIN_PART_SIZE, MultipartUpload

__all__ = [
    "DEFAULT_PART_SIZE",
    "MAX_PRESIGN_SECONDS",
    "ObjectNotFoundError",
    "Storage",
    "StorageError",
    "translate_errors",
]

MiB = 1024 * 1024
DEFAULT_PART_SIZE = 8 * MiB
MAX_PRESIGN_SECONDS = 900
_READ_CHUNK = 1 * MiB


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
            with translate_errors("create_bucket"):
                self.client.create_bucket(**kwargs)
            logger.info("created S3 bucket {}", self.bucket)
        except StorageError as exc:
            if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise

    def ping(self) -> None:
        """Cheap reachability and auth check (HeadBucket); raises :class:`StorageError`."""
        with translate_errors("head_bucket"):
            self.client.head_bucket(Bucket=self.bucket)

    # ------------------------------------------------------------------ write

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Store ``data`` under ``key`` with one PutObject."""
        with translate_errors("put_object"):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> None:
        """Upload a file: one PutObject up to the part size, a multipart upload above."""
        path = Path(path)
        size = path.stat().st_size
        with path.open("rb") as fh:
            if size <= self.part_size:
                with translate_errors("put_object"):
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
            with translate_errors("head_object"):
                meta = self.client.head_object(Bucket=self.bucket, Key=key)
        except ObjectNotFoundError as exc:
            if exc.code == "NoSuchBucket":
                raise
            return None
        return {
            "size": int(meta.get("ContentLength", 0)),
            "content_type": meta.get("ContentType"),
            "etag": unquoted_etag(meta.get("ETag")),
            "last_modified": meta.get("LastModified"),
            "metadata": dict(meta.get("Metadata") or {}),
        }

    def exists(self, key: str) -> bool:
        """True when ``key`` exists."""
        return self.head(key) is not None

    def object_exists(self, bucket: str, key: str) -> bool:
        """True when ``key`` exists in ``bucket`` (any bucket this client can read, e.g. of weights)."""
        try:
            with translate_errors("head_object"):
                self.client.head_object(Bucket=bucket, Key=key)
        except ObjectNotFoundError:
            return False
        return True

    def get_bytes(self, key: str) -> bytes:
        """The whole object in memory (for small objects); :class:`ObjectNotFoundError` if absent."""
        with translate_errors("get_object"):
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end`` (inclusive, like an HTTP Range) of the object."""
        if start < 0 or end < start:
            raise ValueError("need 0 <= start <= end")
        with translate_errors("get_object"):
            body = self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end}")["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix`` in lexicographic order (paginated lazily)."""
        with translate_errors("list_objects_v2"):
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
            with os.fdopen(fd, "wb") as out, translate_errors("get_object"):
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
        with translate_errors("presign"):
            url = self._presigner.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=int(expires_s)
            )
        return str(url)

    # ------------------------------------------------------------------ delete

    def delete(self, key: str) -> None:
        """Delete ``key`` (no error if absent)."""
        with translate_errors("delete_object"):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with ``prefix`` (non-empty); returns the count."""
        if not prefix:
            raise ValueError("refusing to delete with an empty prefix (the whole bucket)")
        deleted = 0
        with translate_errors("delete_objects"):
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
        with translate_errors("list_multipart_uploads"):
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
