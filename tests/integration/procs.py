"""Real worker processes for the fault tests: ``python -m app.worker`` started on a Settings object.

A :class:`WorkerProcess` runs in its own session (process group), so that the
test can tell which processes it started (the worker, its preprocessing pool,
multiprocessing's helpers) and clean every one of them up, whatever signal
killed the worker. What the worker is doing is read from PostgreSQL (its
``workers`` row and the jobs it holds), as an operator would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from app.config import Settings
from app.db import connect
from app.devstack.serve import worker_env

ROOT = Path(__file__).resolve().parents[2]


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid`` (Linux /proc)."""
    found: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class WorkerProcess:
    """One ``python -m app.worker`` child with every setting of ``settings`` in its environment."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        assert settings.database_url
        self.settings = settings
        self.db_url = settings.database_url
        self.log_path = log_path
        self._log: IO[str] | None = None
        self.proc: subprocess.Popen[str] | None = None
        self.worker_id: str | None = None
        #: processes of the group still alive a while after the worker itself was killed
        self.lingering: list[int] = []

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> WorkerProcess:
        self._log = self.log_path.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.worker"],
            cwd=ROOT,
            env=worker_env(self.settings),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, limit: int = 4000) -> str:
        if self._log is not None:
            self._log.flush()
        text = self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""
        return text[-limit:]

    def wait_ready(self, timeout: float = 240.0) -> str:
        """Wait for the worker's first heartbeat row (written once the model and the pool are up)."""
        deadline = time.monotonic() + timeout
        with connect(self.db_url) as conn:
            while True:
                row = conn.execute(
                    "SELECT worker_id FROM workers WHERE info->>'pid' = %s", (str(self.pid),)
                ).fetchone()
                if row is not None:
                    self.worker_id = str(row["worker_id"])
                    return self.worker_id
                if not self.alive() or time.monotonic() > deadline:
                    raise AssertionError(f"worker {self.pid} did not become ready:\n{self.log_tail()}")
                time.sleep(0.1)

    def held(self, conn: Any) -> list[dict[str, Any]]:
        """The jobs this worker holds in PostgreSQL (``running`` with its worker id)."""
        if self.worker_id is None:
            return []
        rows: list[dict[str, Any]] = conn.execute(
            "SELECT id, stage, attempt, explain FROM jobs WHERE state = 'running' AND worker_id = %s",
            (self.worker_id,),
        ).fetchall()
        return rows

    def kill(self, grace_s: float = 10.0) -> None:
        """``kill -9`` the worker process alone (as the OOM killer would), then clean up its group.

        Processes of the group still alive ``grace_s`` after the worker died are
        recorded in :attr:`lingering` and killed.
        """
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        deadline = time.monotonic() + grace_s
        while group_pids(self.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.lingering = group_pids(self.pid)
        self.close()

    def terminate(self, timeout: float) -> tuple[int | None, float]:
        """SIGTERM; (exit status or None if still running after ``timeout``, seconds waited)."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc: int | None = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
        return rc, time.monotonic() - t0

    def close(self) -> None:
        """Kill whatever is left of the process group and close the log."""
        if self.proc is not None:
            _kill_group(self.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
            deadline = time.monotonic() + 10
            while group_pids(self.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
