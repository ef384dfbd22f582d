"""Operating-system helpers of the supervisor: TCP ports, the parent-death signal, leftovers, locks.

Linux-specific parts (``prctl``, ``/proc``) degrade to no-ops elsewhere. Nothing here reads
the environment at import time.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import os
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from app.pids import alive

__all__ = [
    "LOCALHOST",
    "DirLock",
    "EmbeddedError",
    "alive",
    "command_name",
    "die_with_parent",
    "free_ports",
    "kill_leftovers",
    "log_tail",
    "port_group_free",
    "port_is_free",
    "processes_in",
    "unix_socket_fits",
]

LOCALHOST = "127.0.0.1"
PORT_MIN = 20_000
PORT_MAX = 32_767  # below Linux's default ephemeral range (32768-60999)
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


def port_group_free(port: int, offset: int, taken: Collection[int]) -> bool:
    """``port`` (and ``port + offset`` when ``offset``) lie in 20000-32767, are not in ``taken``
    and are free right now."""
    group = {port, port + offset} if offset else {port}
    return (
        PORT_MIN <= port <= PORT_MAX - offset
        and not any(p in taken for p in group)
        and all(port_is_free(p) for p in group)
    )


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
    high = PORT_MAX - offset
    if high <= PORT_MIN:
        raise ValueError("grpc_offset too large")
    chosen: list[int] = []
    with _reserved_lock:
        for _ in range(5_000):
            port = random.randint(PORT_MIN, high)
            if not port_group_free(port, offset, _reserved_ports.union(chosen)):
                continue
            chosen.append(port)
            _reserved_ports.update({port, port + offset})
            if len(chosen) == count:
                return chosen
    raise EmbeddedError("no free TCP ports found in 20000-32767")


def unix_socket_fits(path: Path) -> bool:
    """True when ``path`` is short enough for a unix socket address (with a margin)."""
    return len(str(path)) <= _MAX_UNIX_SOCKET_PATH


# --------------------------------------------------------------------------- children


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


def die_with_parent(sig: int) -> Callable[[], None] | None:
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


def log_tail(path: Path, limit: int = 3000) -> str:
    """The last ``limit`` bytes of the log file ``path`` (as text)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return text if size <= limit else "…" + text


# --------------------------------------------------------------------------- leftovers (/proc)


def command_name(pid: int) -> str:
    """The command name of ``pid`` ("" if gone); /proc/<pid>/comm is readable by anyone."""
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def processes_in(directory: Path, names: frozenset[str]) -> list[int]:
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
        if command_name(int(entry.name)) not in names:
            continue
        try:  # another user's process needs CAP_SYS_PTRACE here (root in Docker lacks it)
            cwd = os.readlink(f"/proc/{entry.name}/cwd")
        except OSError:
            continue
        if cwd == target or cwd.startswith(target + os.sep):
            found.append(int(entry.name))
    return found


def kill_leftovers(pids: list[int], first: signal.Signals, timeout: float) -> None:
    """Send ``first`` to ``pids``, SIGKILL what is still alive after ``timeout``; wait for them."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, first)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)


class DirLock:
    """An exclusive ``flock`` on ``<dir>/.lock``; released automatically if the owner dies."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`EmbeddedError` when another process holds it."""
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
        """Release the lock (a no-op when not held)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
