"""The supervisor of the embedded services: one child process each, started, watched and stopped.

:class:`Service` runs one program (PostgreSQL, Redis, SeaweedFS: see the modules beside this
one) in its own directory, writes its log file there, and guards the directory with a lock
file (``.lock``) so that two owners never share it. A subclass says what to run and how to
tell that it answers; the supervisor launches it, waits until it is ready (retrying once the
log shows a port taken meanwhile), restarts it on the same port, and stops it with its polite
signal, escalating after a timeout.

Children never outlive their owner:

* every child runs in its own session (a terminal's Ctrl+C reaches the owner only, which
  then stops the children in order);
* on Linux, a child started from the main thread gets ``PR_SET_PDEATHSIG``, so it is
  signalled when the owner dies, even by SIGKILL (PostgreSQL gets SIGINT, a fast shutdown;
  PostgreSQL runs as our direct child, not daemonized by ``pg_ctl``, for exactly this);
* leftovers from an owner that died anyway (a process whose working directory lies in the
  service directory) are stopped before a new start, and a stale ``postmaster.pid`` whose
  pid now belongs to an unrelated process is removed.

Nothing here reads the environment at import time or installs global handlers.
"""

from __future__ import annotations

import abc
import contextlib
import os
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

from app.devstack.processes import (
    LOCALHOST,
    DirLock,
    EmbeddedError,
    die_with_parent,
    free_ports,
    kill_leftovers,
    log_tail,
    processes_in,
)
from app.logs import logger

__all__ = ["Service", "StartStop"]


class StartStop(abc.ABC):
    """Something started and stopped as a whole, usable as a context manager."""

    @abc.abstractmethod
    def start(self) -> Self:
        """Start and wait until ready."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop (idempotent)."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class Service(StartStop):
    """One child process with a lock, a log file, readiness polling and an escalating stop.

    ``start_timeout`` and ``stop_timeout`` (seconds) are class defaults that an instance may
    override before it starts.
    """

    name: ClassVar[str] = "service"
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    process_names: ClassVar[frozenset[str]] = frozenset()
    start_timeout: float = 30.0
    stop_timeout: float = 10.0

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port_requested = port
        self.port = port or 0
        self.log_path = self.data_dir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = DirLock(self.data_dir)
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
        return processes_in(self.data_dir, self.process_names)

    def _after_leftovers(self) -> None:
        """Clean stale files once no leftover process uses the directory."""

    def _is_ready(self) -> bool:
        raise NotImplementedError

    def _connect(self) -> socket.socket:
        """A TCP connection to the service's port (for readiness checks)."""
        return socket.create_connection((LOCALHOST, self.port), timeout=1.0)

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
        self.launch()
        self.wait_ready()
        return self

    def stop(self) -> None:
        """Stop the service: polite signal, then escalation after ``stop_timeout``. Idempotent."""
        self.send_stop()
        self.finish_stop()

    # -- the steps of start() and stop(), public so that a stack can run them for several services
    def launch(self) -> None:
        """Take the lock, stop leftovers, pick ports and spawn the child; no waiting."""
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
                kill_leftovers(leftovers, self.stop_signal, self.stop_timeout)
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
                preexec_fn=die_with_parent(int(self.stop_signal)),  # noqa: PLW1509 -- see die_with_parent
                **self._popen_extra(),
            )

    def wait_ready(self) -> None:
        """Wait until the launched child answers (respawning it where its log allows a retry)."""
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
                tail = log_tail(self.log_path)
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
                    f"log {self.log_path}:\n{log_tail(self.log_path)}"
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

    def send_stop(self) -> None:
        """Send the polite stop signal (no waiting)."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        self._stop_t0 = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(self.stop_signal)

    def _escalate(self, proc: subprocess.Popen[bytes]) -> None:
        logger.warning("embedded {}: no exit after {:.0f} s, killing it", self.name, self.stop_timeout)
        proc.kill()

    def finish_stop(self) -> None:
        """Wait for the child to exit, escalating after ``stop_timeout``; release the directory."""
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
