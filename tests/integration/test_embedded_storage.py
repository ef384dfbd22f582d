"""Embedded PostgreSQL / Redis / SeaweedFS S3 and the S3 storage layer, against the real services."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import psycopg
import pytest
import redis

from app.embedded import EmbeddedError, EmbeddedPostgres, EmbeddedRedis, EmbeddedStack, free_ports
from app.storage import MIN_PART_SIZE, MultipartUpload, ObjectNotFoundError, Storage, StorageError

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
BUCKET = "s4ct-test"


def _alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_dead(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if _alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
            if ppid == pid:
                out.append(int(entry))
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    s = EmbeddedStack(tmp_path_factory.mktemp("embedded"), fsync=False, persist=False)
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def storage(stack: EmbeddedStack) -> Storage:
    st = Storage(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key, BUCKET)
    st.ensure_bucket()
    return st


def _pending_uploads(storage: Storage, prefix: str) -> list[object]:
    resp = storage.client.list_multipart_uploads(Bucket=storage.bucket, Prefix=prefix)
    return list(resp.get("Uploads") or [])


# ---------------------------------------------------------------- PostgreSQL


def test_postgres_answers_and_creates_databases(stack: EmbeddedStack) -> None:
    assert stack.database_url.startswith("postgresql://postgres@127.0.0.1:")
    with psycopg.connect(stack.database_url) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    url = stack.create_database("s4ct_it")
    assert url.endswith("/s4ct_it")
    assert stack.postgres.create_database("s4ct_it") == url  # idempotent
    with psycopg.connect(url) as conn:
        assert conn.execute("select current_database()").fetchone() == ("s4ct_it",)
    if os.geteuid() == 0:  # PostgreSQL refuses root: it runs as the unprivileged system user
        with open(f"/proc/{stack.postgres.pid}/status", encoding="utf-8") as fh:
            uid_line = next(line for line in fh if line.startswith("Uid:"))
        assert int(uid_line.split()[1]) != 0


def test_postgres_restart_keeps_data_and_survives_a_crash(tmp_path_factory: pytest.TempPathFactory) -> None:
    data_dir = tmp_path_factory.mktemp("pgrestart")
    with EmbeddedPostgres(data_dir, fsync=False) as pg, psycopg.connect(pg.url) as conn:
        conn.execute("create table t (x int)")
        conn.execute("insert into t values (42)")

    pg = EmbeddedPostgres(data_dir, fsync=False).start()  # clean restart, initdb not repeated
    try:
        with psycopg.connect(pg.url) as conn:
            assert conn.execute("select x from t").fetchall() == [(42,)]
        # crash: the postmaster dies by SIGKILL and leaves postmaster.pid behind
        pid = pg.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert _wait_dead([pid]) == []
    finally:
        pg.stop()  # reaps, kills the orphaned backends of the session, releases the lock
    assert (data_dir / "pgdata" / "postmaster.pid").exists()

    with EmbeddedPostgres(data_dir, fsync=False) as pg, psycopg.connect(pg.url) as conn:
        assert conn.execute("select x from t").fetchall() == [(42,)]

    # a stale postmaster.pid naming a live, unrelated process (pid reuse) is removed
    pidfile = data_dir / "pgdata" / "postmaster.pid"
    pidfile.write_text(f"{os.getpid()}\n{data_dir / 'pgdata'}\n0\n5432\n\n127.0.0.1\n0 0\nready\n")
    with EmbeddedPostgres(data_dir, fsync=False) as pg, psycopg.connect(pg.url) as conn:
        assert conn.execute("select count(*) from t").fetchone() == (1,)


# ---------------------------------------------------------------- Redis


def test_redis_ping_and_streams(stack: EmbeddedStack) -> None:
    assert stack.redis_url.startswith("redis://127.0.0.1:")
    r = redis.Redis.from_url(stack.redis_url)
    try:
        assert r.ping() is True
        entry_id = r.xadd("s4ct:test", {"job_id": "j1"})
        assert entry_id
        assert r.xlen("s4ct:test") == 1
    finally:
        r.close()


# ---------------------------------------------------------------- children and locks


def _run_owner(code: str, root: Path, prefix: list[str] | None = None) -> tuple[subprocess.Popen[str], dict]:
    """Run ``code`` in a fresh Python; returns it and the JSON line it printed first."""
    log = root / "owner.log"
    with log.open("ab") as err:
        owner = subprocess.Popen(
            [*(prefix or []), sys.executable, "-c", textwrap.dedent(code), str(root)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    assert owner.stdout is not None
    line = owner.stdout.readline()
    if not line:
        owner.kill()
        owner.wait()
        pytest.fail(f"the owner process failed:\n{log.read_text()[-3000:]}")
    return owner, json.loads(line)


def test_children_die_with_their_owner(tmp_path_factory: pytest.TempPathFactory) -> None:
    """SIGKILL of the owning Python: armed children follow it; unarmed leftovers are stopped later."""
    root = tmp_path_factory.mktemp("owner")
    owner, info = _run_owner(
        """
        import json, sys, threading, time
        from pathlib import Path
        from app.embedded import EmbeddedPostgres, EmbeddedRedis, EmbeddedStack

        root = Path(sys.argv[1])
        stack = EmbeddedStack(root, fsync=False, persist=False).start()
        # started from a worker thread: no parent-death signal, so these outlive us
        orphans = [EmbeddedRedis(root / "orphan-redis", persist=False), EmbeddedPostgres(root / "orphan-pg")]
        t = threading.Thread(target=lambda: [o.start() for o in orphans])
        t.start(); t.join()
        print(json.dumps({"stack": stack.pids, "orphans": [o.pid for o in orphans]}), flush=True)
        time.sleep(120)
        """,
        root,
    )
    try:
        stack_pids = [int(p) for p in info["stack"].values()]
        pg_backends = _children(info["stack"]["postgres"])
        orphan_redis, orphan_pg = (int(p) for p in info["orphans"])
        # the directories are locked while the owner lives
        with pytest.raises(EmbeddedError, match="in use"):
            EmbeddedRedis(root / "redis", persist=False).start()
    finally:
        owner.kill()
        owner.wait()
    assert _wait_dead(stack_pids + pg_backends) == []
    assert _alive(orphan_redis)
    assert _alive(orphan_pg)
    with EmbeddedRedis(root / "orphan-redis", persist=False) as again:  # stops the leftover first
        assert _wait_dead([orphan_redis], 1.0) == []
        assert again.pid != orphan_redis

    # The leftover postmaster, found even without CAP_SYS_PTRACE (root in Docker): there the
    # working directory of another user's process cannot be read.
    prefix = (
        ["setpriv", "--bounding-set=-sys_ptrace"] if os.geteuid() == 0 and shutil.which("setpriv") else []
    )
    second, info2 = _run_owner(
        """
        import json, sys
        from pathlib import Path
        import psycopg
        from app.embedded import EmbeddedPostgres

        with EmbeddedPostgres(Path(sys.argv[1]) / "orphan-pg") as pg, psycopg.connect(pg.url) as conn:
            print(json.dumps({"pid": pg.pid, "one": conn.execute("select 1").fetchone()[0]}), flush=True)
        """,
        root,
        prefix,
    )
    assert second.wait(30) == 0
    assert info2["one"] == 1
    assert info2["pid"] != orphan_pg
    assert _wait_dead([orphan_pg], 1.0) == []


def test_free_ports_leave_room_for_grpc() -> None:
    ports = free_ports(5, grpc_offset=10_000)
    assert len(set(ports)) == 5
    assert all(p >= 20_000 and p + 10_000 <= 32_767 for p in ports)


# ---------------------------------------------------------------- S3


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


# ---------------------------------------------------------------- last: stopping the stack


def test_stack_stop_leaves_no_process(stack: EmbeddedStack) -> None:
    pids = [p for p in stack.pids.values() if p is not None]
    assert len(pids) == 3
    backends = _children(stack.pids["postgres"] or 0)
    assert backends  # checkpointer, walwriter, ...
    stack.stop()
    assert _wait_dead(pids + backends, 1.0) == []
    assert all(p is None for p in stack.pids.values())
    stack.stop()  # idempotent
