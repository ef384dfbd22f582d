"""The embedded stack: PostgreSQL, Redis and S3 started, kept and stopped together under one directory.

Used by ``service4ct serve`` (no external services configured) and by the integration
test fixtures.
"""

from __future__ import annotations

import secrets
import string
import time
from pathlib import Path
from typing import Self

from app.devstack.credentials import load_or_create_json
from app.devstack.postgres import EmbeddedPostgres
from app.devstack.processes import EmbeddedError
from app.devstack.redis import EmbeddedRedis
from app.devstack.s3 import EmbeddedS3
from app.devstack.supervisor import Service, StartStop
from app.logs import logger

__all__ = ["EmbeddedStack"]


def _load_or_create_credentials(path: Path) -> tuple[str, str]:
    """S3 keys from ``path`` (JSON, 0600), generated on first use."""
    alphabet = string.ascii_uppercase + string.digits

    def make() -> dict[str, str]:
        return {
            "access_key": "S4CT" + "".join(secrets.choice(alphabet) for _ in range(16)),
            "secret_key": secrets.token_urlsafe(30),
        }

    data = load_or_create_json(path, make)
    return data["access_key"], data["secret_key"]


class EmbeddedStack(StartStop):
    """PostgreSQL, Redis and S3 under ``root/pg``, ``root/redis``, ``root/s3``.

    The three start in parallel (children are still forked by the calling thread) and stop in
    reverse order; ``stop()`` stops all even if one fails. Every service needs credentials
    (PostgreSQL a password, scram-sha-256; Redis a password; SeaweedFS S3 keys, and JWT
    signing keys for its master, volume and filer HTTP): generated once, kept 0600 in each
    service's 0700 directory (``root/s3/credentials.json`` for the S3 keys).
    """

    def __init__(self, root: Path, *, fsync: bool = True, persist: bool = True) -> None:
        self.root = Path(root).absolute()
        self.postgres = EmbeddedPostgres(self.root / "pg", fsync=fsync)
        self.redis = EmbeddedRedis(self.root / "redis", persist=persist)
        self.s3: EmbeddedS3 | None = None
        self.start_seconds: float | None = None
        self.stop_seconds: float | None = None

    def _services(self) -> list[Service]:
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
                svc.launch()
            for svc in (self.postgres, self.redis, self.s3):
                svc.wait_ready()
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
                svc.send_stop()
            except Exception as exc:
                errors.append(f"{svc.name}: {exc}")
        for svc in reversed(services):  # all are stopping: wait for the quick ones first
            try:
                svc.finish_stop()
            except Exception as exc:
                logger.error("embedded {}: stop failed: {}", svc.name, exc)
                errors.append(f"{svc.name}: {exc}")
        self.stop_seconds = time.monotonic() - t0
        if errors:
            raise EmbeddedError("stopping the embedded stack failed: " + "; ".join(errors))

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
        """``redis://:PASSWORD@127.0.0.1:PORT/0``."""
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
