"""PostgreSQL access: one psycopg 3 connection pool per process.

All SQL lives in :mod:`app.repository`; this module only opens connections.
Rows come back as dicts.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

__all__ = ["Conn", "Database", "connect"]

Conn = psycopg.Connection[DictRow]


def connect(url: str, **kwargs: Any) -> Conn:
    """One autocommit connection (for migrations and the CLI)."""
    return psycopg.connect(url, row_factory=dict_row, autocommit=True, **kwargs)


class Database:
    """A connection pool; :meth:`tx` yields a connection inside one transaction."""

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 16, name: str = "service4ct") -> None:
        self.url = url
        self.pool: ConnectionPool[Conn] = ConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            kwargs={"row_factory": dict_row, "autocommit": True, "application_name": name},
            open=False,
            name=name,
            timeout=10.0,
        )

    def open(self, wait: bool = True) -> None:
        self.pool.open(wait=wait, timeout=30.0)

    def close(self) -> None:
        self.pool.close()

    @contextmanager
    def tx(self) -> Iterator[Conn]:
        """A pooled connection with a transaction open; committed on exit, rolled back on error."""
        with self.pool.connection() as conn, conn.transaction():
            yield conn

    @contextmanager
    def conn(self) -> Iterator[Conn]:
        """A pooled autocommit connection (each statement its own transaction)."""
        with self.pool.connection() as conn:
            yield conn
