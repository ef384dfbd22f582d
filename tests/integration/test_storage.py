"""The S3 storage layer (app/storage.py) against the embedded SeaweedFS S3 of the session stack."""

from __future__ import annotations

import hashlib
import os
import random
import time
from pathlib import Path

import anyio
import httpx
import pytest

from app.devstack import EmbeddedStack
from app.storage import ObjectNotFoundError, Storage, StorageError
from app.storage_multipart import MIN_PART_SIZE, MultipartUpload

MiB = 1024 * 1024
BUCKET = "s4ct-test"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def storage(stack: EmbeddedStack) -> Storage:
    st = Storage(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key, BUCKET)
    st.ensure_bucket()
    return st


def _pending_uploads(storage: Storage, prefix: str) -> list[object]:
    resp = storage.client.list_multipart_uploads(Bucket=storage.bucket, Prefix=prefix)
    return list(resp.get("Uploads") or [])


def test_bucket_is_idempotent_and_auth_is_on(stack: EmbeddedStack, storage: Storage) -> None:
    storage.ensure_bucket()
    storage.ensure_bucket()
    storage.ping()
    wrong = Storage(stack.s3_endpoint, stack.s3_access_key, "not-the-secret", BUCKET, max_attempts=1)
    with pytest.raises(StorageError) as err:
        wrong.ping()
    assert "not-the-secret" not in str(err.value)
    storage.put_bytes("auth/x", b"secret", "text/plain")
    anonymous = httpx.get(f"{stack.s3_endpoint}/{BUCKET}/auth/x")
    assert anonymous.status_code == 403


def test_put_get_head_delete(storage: Storage, tmp_path: Path) -> None:
    assert storage.head("obj/missing") is None
    assert not storage.exists("obj/missing")
    with pytest.raises(ObjectNotFoundError):
        storage.get_bytes("obj/missing")
    storage.put_bytes("obj/a.json", b'{"a": 1}', "application/json")
    head = storage.head("obj/a.json")
    assert head is not None
    assert head["size"] == 8
    assert head["content_type"] == "application/json"
    assert head["etag"]
    assert storage.get_bytes("obj/a.json") == b'{"a": 1}'
    assert storage.get_range("obj/a.json", 1, 4) == b'"a":'
    assert storage.get_range("obj/a.json", 6, 100) == b"1}"
    dest = tmp_path / "a.json"
    assert storage.get_to_file("obj/a.json", dest) == 8
    assert dest.read_bytes() == b'{"a": 1}'
    storage.delete("obj/a.json")
    storage.delete("obj/a.json")  # absent: no error
    assert not storage.exists("obj/a.json")
    with pytest.raises(ObjectNotFoundError):
        storage.get_to_file("obj/a.json", tmp_path / "gone")
    assert not (tmp_path / "gone").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp file left


def test_delete_prefix(storage: Storage) -> None:
    for i in range(7):
        storage.put_bytes(f"pfx/a/{i}", b"x")
    storage.put_bytes("pfx/b/keep", b"y")
    assert list(storage.list_keys("pfx/")) == [*sorted(f"pfx/a/{i}" for i in range(7)), "pfx/b/keep"]
    assert storage.delete_prefix("pfx/a/") == 7
    assert storage.delete_prefix("pfx/a/") == 0
    assert storage.exists("pfx/b/keep")
    with pytest.raises(ValueError):
        storage.delete_prefix("")


@pytest.mark.parametrize("in_flight", [1, 2, 3])
def test_multipart_odd_chunks_round_trip(storage: Storage, tmp_path: Path, in_flight: int) -> None:
    rng = random.Random(7)
    data = rng.randbytes(20 * MiB + 12_345)
    key = f"mp/big-{in_flight}.bin"
    with storage.multipart(key, "application/zip", max_in_flight=in_flight) as up:
        pos = 0
        while pos < len(data):
            n = rng.randint(1, 3 * MiB) | 1  # odd sizes straddling part boundaries
            up.write(memoryview(data)[pos : pos + n])
            pos += n
        assert up.parts_uploaded >= 1  # parts went out while writing
        up.complete()
    assert up.state == "completed"
    assert up.size == len(data)
    assert up.parts_uploaded == 3  # 8 + 8 + 4 MiB
    head = storage.head(key)
    assert head is not None
    assert head["size"] == len(data)
    assert head["content_type"] == "application/zip"
    dest = tmp_path / "big.bin"
    assert storage.get_to_file(key, dest) == len(data)
    assert _sha256(dest.read_bytes()) == _sha256(data)
    assert _pending_uploads(storage, key) == []


def test_multipart_abort_leaves_nothing(storage: Storage) -> None:
    key = "mp/aborted.bin"
    with pytest.raises(RuntimeError, match="client went away"), storage.multipart(key) as up:
        up.write(os.urandom(9 * MiB))  # one part goes out
        up.write(b"tail")
        raise RuntimeError("client went away")
    assert up.state == "aborted"
    assert not storage.exists(key)
    assert _pending_uploads(storage, key) == []
    with pytest.raises(StorageError):
        up.write(b"more")

    # leaving the block without complete() aborts too
    with storage.multipart(key) as up2:
        up2.write(os.urandom(MIN_PART_SIZE + 1))
    assert up2.state == "aborted"
    assert not storage.exists(key)
    assert _pending_uploads(storage, key) == []


def test_small_upload_uses_one_put(storage: Storage) -> None:
    key = "mp/small.txt"
    up = storage.multipart(key, "text/plain")
    for chunk in (b"hello ", b"small ", b"world"):
        up.write(chunk)
    up.complete()
    assert up.parts_uploaded == 0
    assert up._upload_id is None
    assert storage.get_bytes(key) == b"hello small world"
    empty = storage.multipart("mp/empty")
    empty.complete()
    head = storage.head("mp/empty")
    assert head is not None
    assert head["size"] == 0


def test_async_multipart(storage: Storage) -> None:
    data = os.urandom(10 * MiB + 3)

    async def main() -> None:
        async with storage.multipart("mp/async.bin") as up:
            for i in range(0, len(data), 64 * 1024 + 1):
                await up.awrite(data[i : i + 64 * 1024 + 1])
            await up.acomplete()
        with pytest.raises(ValueError):
            async with storage.multipart("mp/async-aborted.bin") as up2:
                await up2.awrite(data)
                raise ValueError("bad zip")
        assert up2.state == "aborted"

    anyio.run(main)
    assert _sha256(storage.get_bytes("mp/async.bin")) == _sha256(data)
    assert not storage.exists("mp/async-aborted.bin")
    assert _pending_uploads(storage, "mp/async") == []


def test_put_file_small_and_large(storage: Storage, tmp_path: Path) -> None:
    small = tmp_path / "small.bin"
    small.write_bytes(b"abc" * 100)
    storage.put_file("files/small.bin", small)
    assert storage.get_bytes("files/small.bin") == small.read_bytes()
    large = tmp_path / "large.bin"
    large.write_bytes(os.urandom(storage.part_size + 5))
    storage.put_file("files/large.bin", large, "application/octet-stream")
    assert _sha256(storage.get_bytes("files/large.bin")) == _sha256(large.read_bytes())


def test_presigned_urls(storage: Storage) -> None:
    storage.put_bytes("presign/x.png", b"\x89PNG fake", "image/png")
    url = storage.presign_get("presign/x.png", 60)
    resp = httpx.get(url)
    assert resp.status_code == 200
    assert resp.content == b"\x89PNG fake"
    assert storage.presign_get("presign/x.png", 900)
    with pytest.raises(ValueError):
        storage.presign_get("presign/x.png", 901)
    with pytest.raises(ValueError):
        storage.presign_get("presign/x.png", 0)
    short = storage.presign_get("presign/x.png", 1)
    time.sleep(2.1)
    assert httpx.get(short).status_code == 403


def test_abort_incomplete_uploads(storage: Storage) -> None:
    up = storage.client.create_multipart_upload(Bucket=BUCKET, Key="janitor/x")
    assert len(_pending_uploads(storage, "janitor/")) == 1
    assert storage.abort_incomplete_uploads("janitor/", older_than_s=3600) == 0
    assert storage.abort_incomplete_uploads("janitor/", older_than_s=0) == 1
    assert _pending_uploads(storage, "janitor/") == []
    assert up["UploadId"]


def test_multipart_rejects_tiny_parts(storage: Storage) -> None:
    with pytest.raises(ValueError):
        MultipartUpload(storage, "x", "application/octet-stream", MIN_PART_SIZE - 1)
