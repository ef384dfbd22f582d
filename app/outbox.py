"""What the two outboxes share: webhooks (:mod:`app.webhooks`), DICOMweb pushes (:mod:`app.worker.pushing`).

Both take due rows of their PostgreSQL table under a lease, send each row and record the
attempt: done, tried again after an exponential backoff, or given up after the last attempt
(or at once on a final error), each outcome logged. :func:`poll` is the loop of their thread,
:class:`Retries` the decision after a failure and :class:`OutboxSender` the record of an
attempt; the subclass names its table's writes and its log lines.
"""

from __future__ import annotations

import random
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from app.db import Conn, Database
from app.logs import logger

__all__ = ["OutboxRow", "OutboxSender", "Retries", "backoff_s", "poll"]


def backoff_s(attempts: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Delay before retry number ``attempts`` (1 = first retry): base·2^(n−1), capped, ±20 % jitter."""
    r = rng or random
    return float(min(max_s, base_s * 2 ** max(0, attempts - 1)) * r.uniform(0.8, 1.2))


@dataclass(frozen=True, slots=True)
class Retries:
    """How many attempts a row gets and how long it waits between them."""

    max_attempts: int
    backoff_s: float
    backoff_max_s: float

    def delay(self, attempts: int, *, final: bool = False, rng: random.Random | None = None) -> float | None:
        """Seconds before the next try once attempt number ``attempts`` (1 = the first) failed;
        None to give up: that was the last attempt, or the error is ``final``."""
        if final or attempts >= self.max_attempts:
            return None
        return backoff_s(attempts, self.backoff_s, self.backoff_max_s, rng)


def poll(stop: threading.Event, one_round: Callable[[], int], idle: Callable[[], object], error: str) -> None:
    """Run rounds until ``stop`` is set; after a round that started nothing, or failed (logged
    with ``error``), wait with ``idle`` before the next."""
    while not stop.is_set():
        try:
            n = one_round()
        except Exception:
            logger.opt(depth=1).exception(error)  # logged as the caller's (its module's name)
            n = 0
        if n == 0:
            idle()


class OutboxRow(Protocol):
    """A due row of an outbox: how many attempts it has had before this one."""

    @property
    def attempts(self) -> int: ...


R = TypeVar("R", bound=OutboxRow)


class OutboxSender(ABC, Generic[R]):
    """Records each attempt of a row; the subclass writes its table and logs in its own words."""

    def __init__(self, db: Database, retries: Retries) -> None:
        self.db = db
        self.retries = retries

    def _record(self, row: R, status: int | None, error: str | None, final: bool = False) -> None:
        """Record an attempt of ``row`` (``error`` None: it succeeded): done, retried later, or given up."""
        with self.db.conn() as conn:
            if error is None:
                self._succeeded(conn, row, status)
                return
            delay = self.retries.delay(row.attempts + 1, final=final)
            self._retry(conn, row, status, error, delay)
        self._failed(row, error, "giving up" if delay is None else f"retry in {delay:.0f} s")

    @abstractmethod
    def _succeeded(self, conn: Conn, row: R, status: int | None) -> None:
        """Write the row done, count it and log it."""

    @abstractmethod
    def _retry(self, conn: Conn, row: R, status: int | None, error: str, delay_s: float | None) -> None:
        """Write the failed attempt: the next one after ``delay_s`` seconds, or none (None)."""

    @abstractmethod
    def _failed(self, row: R, error: str, outcome: str) -> None:
        """Log the failed attempt; ``outcome`` is "giving up" or "retry in N s"."""
