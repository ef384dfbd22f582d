"""Server-side encryption requested on every object (``s3_sse``), against the embedded SeaweedFS.

The request is checked on the wire (the ``x-amz-server-side-encryption`` header of each
object-creating call, captured by a botocore hook) and on the server: SeaweedFS stores the
objects and reports their encryption in HEAD. Without the setting nothing is requested.
"""

from __future__ import annotations

from typing import Any

from conftest import storage_of  # type: ignore[import-not-found]

from app.storage_multipart import MIN_PART_SIZE


def _capture(storage: Any) -> list[tuple[str, str | None]]:
    sent: list[tuple[str, str | None]] = []

    def before_sign(request: Any, operation_name: str = "", **_: Any) -> None:
        sent.append((operation_name, request.headers.get("x-amz-server-side-encryption")))

    storage.client.meta.events.register("before-sign.s3", before_sign)
    return sent


def test_every_object_written_requests_sse(make_settings: Any) -> None:
    storage = storage_of(make_settings(s3_sse="AES256"))
    sent = _capture(storage)
    storage.put_bytes("sse/small.bin", b"x" * 100)
    with storage.multipart("sse/big.bin", "application/zip", part_size=MIN_PART_SIZE) as up:
        up.write(b"y" * (MIN_PART_SIZE + 10))
        up.complete()
    creating = [(op, h) for op, h in sent if op in ("PutObject", "CreateMultipartUpload")]
    assert {op for op, _ in creating} == {"PutObject", "CreateMultipartUpload"}, sent
    assert all(h in ("AES256", b"AES256") for _, h in creating), creating
    for key, size in (("sse/small.bin", 100), ("sse/big.bin", MIN_PART_SIZE + 10)):
        head = storage.client.head_object(Bucket=storage.bucket, Key=key)
        assert head["ContentLength"] == size
        assert head.get("ServerSideEncryption") == "AES256", head
        assert storage.get_bytes(key)[:1] in (b"x", b"y")  # read back transparently


def test_no_sse_unless_configured(make_settings: Any) -> None:
    storage = storage_of(make_settings())
    sent = _capture(storage)
    storage.put_bytes("plain/small.bin", b"x")
    assert sent and all(h is None for _, h in sent)
