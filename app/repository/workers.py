"""Worker heartbeat rows (``/readyz`` and the ETA count the live workers)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from psycopg.types.json import Jsonb

from app.db import Conn

__all__ = ["last_worker_heartbeat_age", "worker_gone", "worker_seen"]


def worker_seen(conn: Conn, worker_id: str, info: Mapping[str, Any]) -> None:
    conn.execute(
        "INSERT INTO workers (worker_id, info) VALUES (%s, %s) "
        "ON CONFLICT (worker_id) DO UPDATE SET seen_at = now(), info = EXCLUDED.info",
        (worker_id, Jsonb(dict(info))),
    )


def worker_gone(conn: Conn, worker_id: str) -> None:
    conn.execute("DELETE FROM workers WHERE worker_id = %s", (worker_id,))


def last_worker_heartbeat_age(conn: Conn) -> float | None:
    """Seconds since the freshest worker heartbeat, or None without any worker."""
    row = conn.execute("SELECT extract(epoch FROM now() - max(seen_at)) AS age FROM workers").fetchone()
    return None if row is None or row["age"] is None else float(row["age"])
