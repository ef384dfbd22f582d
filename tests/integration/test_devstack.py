"""The dev stack (app/devstack/): embedded PostgreSQL, Redis and S3, their children, locks and ports."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
import redis
from conftest import running_stack  # type: ignore[import-not-found]

from app.devstack import EmbeddedError, EmbeddedPostgres, EmbeddedRedis, EmbeddedStack, free_ports
from app.devstack.processes import port_group_free
from app.devstack.s3 import WEED_GRPC_OFFSET
from app.devstack.tls import write_grpc_certificates

ROOT = Path(__file__).resolve().parents[2]


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


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    """The module's own stack (not the session's): the last test stops it."""
    with running_stack(tmp_path_factory.mktemp("embedded")) as s:
        yield s


# ---------------------------------------------------------------- PostgreSQL


def test_postgres_answers_and_creates_databases(stack: EmbeddedStack) -> None:
    assert stack.database_url.startswith(f"postgresql://postgres:{stack.postgres.password}@127.0.0.1:")
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
            conn.execute("insert into t values (43)")
            conn.commit()  # answered: it must survive the crash below (synchronous commit)
        # crash: the postmaster dies by SIGKILL and leaves postmaster.pid behind
        pid = pg.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert _wait_dead([pid]) == []
    finally:
        pg.stop()  # reaps, kills the orphaned backends of the session, releases the lock
    assert (data_dir / "pgdata" / "postmaster.pid").exists()

    with EmbeddedPostgres(data_dir, fsync=False) as pg, psycopg.connect(pg.url) as conn:
        assert conn.execute("select x from t order by x").fetchall() == [(42,), (43,)]

    # a stale postmaster.pid naming a live, unrelated process (pid reuse) is removed
    pidfile = data_dir / "pgdata" / "postmaster.pid"
    pidfile.write_text(f"{os.getpid()}\n{data_dir / 'pgdata'}\n0\n5432\n\n127.0.0.1\n0 0\nready\n")
    with EmbeddedPostgres(data_dir, fsync=False) as pg, psycopg.connect(pg.url) as conn:
        assert conn.execute("select count(*) from t").fetchone() == (2,)


# ---------------------------------------------------------------- Redis


def test_redis_ping_and_streams(stack: EmbeddedStack) -> None:
    assert stack.redis_url.startswith(f"redis://:{stack.redis.password}@127.0.0.1:")
    r = redis.Redis.from_url(stack.redis_url)
    try:
        assert r.ping() is True
        entry_id = r.xadd("s4ct:test", {"job_id": "j1"})
        assert entry_id
        assert r.xlen("s4ct:test") == 1
    finally:
        r.close()


# ---------------------------------------------------------------- credentials


def test_postgres_refuses_connections_without_the_password(stack: EmbeddedStack) -> None:
    pg = stack.postgres
    assert len(pg.password) >= 40
    for url in (
        f"postgresql://postgres@127.0.0.1:{pg.port}/postgres",  # no password (was `trust`)
        f"postgresql://postgres:wrong@127.0.0.1:{pg.port}/postgres",
        f"postgresql://postgres@/postgres?host={pg.data_dir}&port={pg.port}",  # the unix socket
    ):
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(url, connect_timeout=5).close()
    hba = (pg.pgdata / "pg_hba.conf").read_text()
    assert "trust" not in hba and "scram-sha-256" in hba
    with psycopg.connect(stack.database_url) as conn:
        stored = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'").fetchone()
    assert stored is not None and stored[0].startswith("SCRAM-SHA-256$")


def test_redis_refuses_clients_without_the_password(stack: EmbeddedStack) -> None:
    r = redis.Redis(host="127.0.0.1", port=stack.redis.port)
    try:
        with pytest.raises(redis.AuthenticationError):
            r.ping()
        with pytest.raises(redis.AuthenticationError):
            r.xadd("s4ct:jobs", {"job_id": "injected"})
    finally:
        r.close()
    assert str(stack.redis.password) not in Path(f"/proc/{stack.redis.pid}/cmdline").read_text()


def _s3(stack: EmbeddedStack) -> Any:
    """A boto3 S3 client of the stack's gateway, with its keys."""
    return boto3.client(
        "s3",
        endpoint_url=stack.s3_endpoint,
        aws_access_key_id=stack.s3_access_key,
        aws_secret_access_key=stack.s3_secret_key,
        region_name="us-east-1",
    )


def test_seaweedfs_internals_refuse_requests_without_a_token(stack: EmbeddedStack) -> None:
    """Only the S3 gateway (with the S3 keys) serves data; filer and volume HTTP answer 401."""
    import httpx

    s3 = _s3(stack)
    s3.create_bucket(Bucket="locked")
    s3.put_object(Bucket="locked", Key="studies/x/source.zip", Body=b"PK" + b"\0" * 100)
    assert len(s3.get_object(Bucket="locked", Key="studies/x/source.zip")["Body"].read()) == 102
    assert stack.s3 is not None
    ports = stack.s3.ports
    filer = f"http://127.0.0.1:{ports['filer']}"
    assert httpx.get(f"{filer}/buckets/locked/studies/x/source.zip").status_code == 401  # read
    assert httpx.get(f"{filer}/buckets/locked/", headers={"Accept": "application/json"}).status_code == 401
    written = httpx.post(f"{filer}/buckets/locked/evil.txt", files={"file": ("evil.txt", b"evil")})
    assert written.status_code == 401  # write
    assert httpx.delete(f"{filer}/buckets/locked/studies/x/source.zip").status_code == 401
    assigned = httpx.get(f"http://127.0.0.1:{ports['master']}/dir/assign").json()
    assert "auth" not in assigned  # the master hands out no write token
    volume = f"http://{assigned['url']}/{assigned['fid']}"
    assert httpx.post(volume, files={"file": ("x", b"evil")}).status_code == 401
    # nothing was written around the gateway
    listed = s3.list_objects_v2(Bucket="locked")["Contents"]
    assert [o["Key"] for o in listed] == ["studies/x/source.zip"]


_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")  # + empty SETTINGS


def _h2_answer(sock: socket.socket) -> bytes:
    """The first bytes a gRPC server answers to the HTTP/2 preface (b"" when it hangs up)."""
    sock.sendall(_H2_PREFACE)
    try:
        return sock.recv(64)
    except (ConnectionResetError, TimeoutError):
        return b""


def _handshake_refused(ctx: ssl.SSLContext, port: int) -> bool:
    """The TLS handshake with ``ctx`` fails (TLS 1.3 reports a refused client cert at the first read)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
            return _h2_answer(tls) == b""
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True


def test_seaweedfs_grpc_needs_the_stacks_client_certificate(stack: EmbeddedStack, tmp_path: Path) -> None:
    """Every gRPC port (TCP and weed's unix sockets) is mutual TLS with the stack's throwaway CA."""
    assert stack.s3 is not None
    d = stack.s3.data_dir

    def context(cert: tuple[Path, Path] | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(d / "ca.crt"))
        ctx.check_hostname = False
        ctx.set_alpn_protocols(["h2"])
        if cert is not None:
            ctx.load_cert_chain(*cert)
        return ctx

    other = write_grpc_certificates(tmp_path, common_name="service4ct-weed")  # same name, another CA
    for role, port in stack.s3.ports.items():
        grpc = port + WEED_GRPC_OFFSET
        with socket.create_connection(("127.0.0.1", grpc), timeout=5) as raw:  # plaintext gRPC
            assert _h2_answer(raw) == b"", role
        assert _handshake_refused(context(None), grpc), role  # TLS without a client certificate
        assert _handshake_refused(context((other["cert"], other["key"])), grpc), role  # another CA's
        trusted = context((d / "grpc.crt", d / "grpc.key"))  # the stack's own certificate
        with socket.create_connection(("127.0.0.1", grpc), timeout=5) as raw, trusted.wrap_socket(raw) as tls:
            assert _h2_answer(tls)[3] == 0x4, role  # a SETTINGS frame: the gRPC server talks to it
        unix = Path(f"/tmp/seaweedfs-{role}-grpc-{grpc}.sock")
        if unix.exists():  # weed's local gRPC socket is the same TLS server
            with socket.socket(socket.AF_UNIX) as local:
                local.settimeout(5)
                local.connect(str(unix))
                assert _h2_answer(local) == b"", role
    s3 = _s3(stack)  # the S3 API is untouched
    s3.create_bucket(Bucket="mtls")
    s3.put_object(Bucket="mtls", Key="a", Body=b"through the gateway")
    assert s3.get_object(Bucket="mtls", Key="a")["Body"].read() == b"through the gateway"


def test_secrets_are_private_files_in_private_directories(stack: EmbeddedStack) -> None:
    root = stack.root
    for d in ("pg", "redis", "s3"):
        assert (root / d).stat().st_mode & 0o777 == 0o700, d
    private = ("pg/password", "redis/redis.conf", "s3/credentials.json", "s3/jwt.json", "s3/security.toml")
    for f in (*private, "s3/ca.crt", "s3/grpc.crt", "s3/grpc.key"):
        assert (root / f).stat().st_mode & 0o777 == 0o600, f
    assert stack.redis.password in (root / "redis/redis.conf").read_text()
    assert stack.postgres.password == (root / "pg/password").read_text().strip()


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
        from app.devstack import EmbeddedPostgres, EmbeddedRedis, EmbeddedStack

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
        from app.devstack import EmbeddedPostgres

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
    # a remembered port (SeaweedFS keeps its own) is reused only where it and its gRPC port fit
    assert not port_group_free(ports[0], 10_000, taken=ports)
    assert not port_group_free(32_000, 10_000, taken=())


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
