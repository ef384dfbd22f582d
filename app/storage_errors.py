"""S3 errors as the service reports them, shared by :mod:`app.storage` and :mod:`app.storage_multipart`.

Error messages name the operation and the S3 error code only, never object content.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

__all__ = ["ObjectNotFoundError", "StorageError", "translate_errors", "unquoted_etag"]

_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})


class StorageError(Exception):
    """An S3 operation failed. ``code`` is the S3 error code (or the client error type)."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class ObjectNotFoundError(StorageError):
    """The object (or the bucket) does not exist."""


@contextlib.contextmanager
def translate_errors(operation: str) -> Iterator[None]:
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


def unquoted_etag(value: Any) -> str:
    """An S3 response's ETag without its quotes ("" when absent)."""
    return str(value or "").strip('"')
