"""PostgreSQL access: one psycopg 3 connection pool per process.

All SQL lives in :mod:`app.repository`; this module only opens connections.
Rows come back as dicts.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

__all__ = ["Conn", "Database", "connect"]

Conn = psycopg.Connection[DictRow]


def connect(url: str, **kwargs: Any) -> Conn:
    """One autocommit connection (for migrations and the CLI)."""
    return psycopg.connect(url, row_factory=dict_row, autocommit=True, **kwargs)


class Database:
    """A connection pool; :meth:`tx` yields a connection inside one transaction.

    Outages: a pooled connection idle for more than ``check_idle_s`` is checked before it is
    handed out (a restarted server leaves only broken ones behind); while PostgreSQL is
    unreachable, callers wait at most ``outage_timeout`` s for a connection (not
    ``timeout``), so that the API answers 503 quickly; the pool keeps reconnecting in the
    background (backoff, restarted every ``reconnect_timeout`` s), and the first connection
    that succeeds ends the outage.
    """

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 16,
        name: str = "service4ct",
        timeout: float = 10.0,
        outage_timeout: float = 2.0,
        reconnect_timeout: float = 10.0,
        check_idle_s: float = 1.0,
    ) -> None:
        self.url = url
        self.check_idle_s = check_idle_s
        self._last_ok: weakref.WeakKeyDictionary[Conn, float] = weakref.WeakKeyDictionary()
        self.timeout = timeout
        self.outage_timeout = min(outage_timeout, timeout)
        self.unreachable = False  # the last connection attempt or use failed for want of a server
        self.pool: ConnectionPool[Conn] = ConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            kwargs={
                "row_factory": dict_row,
                "autocommit": True,
                "application_name": name,
                "connect_timeout": 5,
            },
            open=False,
            name=name,
            timeout=timeout,
            reconnect_timeout=reconnect_timeout,
        )

    def open(self, wait: bool = True) -> None:
        self.pool.open(wait=wait, timeout=30.0)

    def close(self) -> None:
        self.pool.close()

    @contextmanager
    def tx(self) -> Iterator[Conn]:
        """A pooled connection with a transaction open; committed on exit, rolled back on error."""
        with self.conn() as conn, conn.transaction():
            yield conn

    @contextmanager
    def conn(self) -> Iterator[Conn]:
        """A pooled autocommit connection (each statement its own transaction)."""
        conn = self._getconn()
        try:
            yield conn
        except psycopg.OperationalError:
            if conn.broken:
                self.unreachable = True
            raise
        finally:
            if not conn.broken:
                self._last_ok[conn] = time.monotonic()
            self.pool.putconn(conn)

    def _getconn(self) -> Conn:
        """A pooled connection that answers; ``PoolTimeout`` when none can be had in time.

        A connection that fails the check (the server restarted or went away) goes back to the
        pool, which replaces it, and the wait is cut to ``outage_timeout``.
        """
        deadline = time.monotonic() + (self.outage_timeout if self.unreachable else self.timeout)
        while True:
            try:
                conn = self.pool.getconn(timeout=max(0.001, deadline - time.monotonic()))
            except PoolTimeout:
                self.unreachable = True
                raise
            # a connection in use a moment ago is not worth the round trip of a check
            if time.monotonic() - self._last_ok.get(conn, -math.inf) >= self.check_idle_s:
                try:
                    ConnectionPool.check_connection(conn)
                except psycopg.Error:
                    self.pool.putconn(conn)
                    deadline = min(deadline, time.monotonic() + self.outage_timeout)
                    continue
            self.unreachable = False
            return conn
