"""Secrets of the embedded stack: generated once, kept in files of mode 0600 under the stack directory.

Each service keeps its own (``pg/password``, ``redis/redis.conf``, ``s3/credentials.json``,
``s3/security.toml``, the gRPC certificates ``s3/ca.crt``, ``s3/grpc.crt``, ``s3/grpc.key``)
in its 0700 directory, so a service started on its own is as
locked down as the whole stack.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path

__all__ = ["load_or_create_json", "new_secret", "write_private"]


def new_secret() -> str:
    """A random secret (256 bits), URL-safe (it goes into connection URLs as is)."""
    return secrets.token_urlsafe(32)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600, atomically (never readable by others, even briefly)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_or_create_json(path: Path, make: Callable[[], dict[str, str]]) -> dict[str, str]:
    """The secrets in ``path`` (a JSON object); keys ``make()`` has and the file lacks are added.

    The file is (re)written with mode 0600; an existing file readable by others is narrowed.
    """
    data: dict[str, str] = {}
    if path.exists():
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        data = {str(k): str(v) for k, v in json.loads(path.read_text()).items()}
    fresh = make()
    missing = {k: v for k, v in fresh.items() if k not in data}
    if missing or not path.exists():
        data.update(missing)
        write_private(path, json.dumps(data))
    return data
