"""Schema migrations: ``migrations/NNNN_*.sql`` applied in order, forward-only.

:func:`migrate` takes a PostgreSQL advisory lock so that concurrent starters
(several API replicas, a worker) apply each file once. Each file runs in its own
transaction together with its row in ``schema_migrations`` (name + sha256), so a
failing file leaves nothing half-applied. :func:`check` is what the API and the
worker call at start: they refuse to run on a database that lacks a migration
or whose applied file differs from the one shipped.

Both first check the database's encoding (:func:`check_encoding`): on a database that is not
UTF8 (``SQL_ASCII`` most often, what ``initdb`` without a locale makes) PostgreSQL neither
validates nor converts text, and psycopg hands text back as bytes; the runner would not
recognise its own ledger. Such a database is refused with :class:`DatabaseEncodingError`
(code ``database_encoding_unsupported``) before anything is read or written.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from app.db import Conn

__all__ = [
    "MIGRATIONS_DIR",
    "DatabaseEncodingError",
    "Migration",
    "NotMigratedError",
    "check",
    "check_encoding",
    "migrate",
    "pending",
]

MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "migrations"
_LOCK_KEY = 0x53344354  # "S4CT"


class NotMigratedError(RuntimeError):
    """The database schema is behind (or differs from) the shipped migrations."""


class DatabaseEncodingError(RuntimeError):
    """The database is not UTF8: the service refuses it (its message starts with :attr:`code`)."""

    code = "database_encoding_unsupported"


def check_encoding(conn: Conn) -> None:
    """Raise :class:`DatabaseEncodingError` unless the database's server encoding is UTF8."""
    encoding = conn.info.parameter_status("server_encoding") or "unknown"
    if encoding.upper().replace("-", "") != "UTF8":
        raise DatabaseEncodingError(
            f"{DatabaseEncodingError.code}: database {conn.info.dbname!r} uses encoding {encoding}; "
            "Service4CT needs UTF8. Create it with `CREATE DATABASE ... ENCODING 'UTF8' "
            "TEMPLATE template0` (or `initdb -E UTF8`) and run `service4ct migrate` on it"
        )


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    files = sorted(p for p in directory.glob("[0-9][0-9][0-9][0-9]_*.sql"))
    return [Migration(p.name, p.read_text()) for p in files]


def _ensure_table(conn: Conn) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " name text PRIMARY KEY, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
    )


def _applied(conn: Conn) -> dict[str, str]:
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL AS ok").fetchone()
    if not exists or not exists["ok"]:
        return {}
    rows = conn.execute("SELECT name, checksum FROM schema_migrations").fetchall()
    return {r["name"]: r["checksum"] for r in rows}


def pending(conn: Conn, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Migrations not yet applied; raises :class:`NotMigratedError` if an applied one was changed."""
    done = _applied(conn)
    out = []
    for m in available(directory):
        if m.name in done:
            if done[m.name] != m.checksum:
                raise NotMigratedError(f"migration {m.name} was changed after it was applied")
        else:
            out.append(m)
    return out


def migrate(conn: Conn, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations under an advisory lock; returns the names applied.

    ``conn`` must be in autocommit mode (each migration gets its own transaction).
    """
    check_encoding(conn)
    conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
    try:
        _ensure_table(conn)
        applied: list[str] = []
        for m in pending(conn, directory):
            with conn.transaction():
                conn.execute(m.sql.encode())
                conn.execute(
                    "INSERT INTO schema_migrations (name, checksum) VALUES (%s, %s)", (m.name, m.checksum)
                )
            applied.append(m.name)
        return applied
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))


def check(conn: Conn, directory: Path = MIGRATIONS_DIR) -> None:
    """Raise :class:`NotMigratedError` unless every shipped migration is applied unchanged
    (:class:`DatabaseEncodingError` on a database that is not UTF8)."""
    check_encoding(conn)
    todo = pending(conn, directory)
    if todo:
        raise NotMigratedError(
            "database is not migrated (pending: "
            + ", ".join(m.name for m in todo)
            + "); run `service4ct migrate`"
        )
