"""Per-client quotas: the request rate and the number of queued jobs (docs/api.md, Quotas)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from app.db import Conn

__all__ = ["KEEP", "ClientQuota", "get_quota", "lock_queued_jobs", "set_quota"]

#: :func:`set_quota`: leave this limit as it is
KEEP: Final = "keep"


@dataclass(frozen=True)
class ClientQuota:
    """A client's own limits; None: the service's default setting applies.

    Attributes:
        rate_limit_per_minute: authenticated requests per minute (a burst of that many is allowed).
        max_queued_jobs: jobs in state ``queued`` at once.
    """

    rate_limit_per_minute: int | None = None
    max_queued_jobs: int | None = None


def get_quota(conn: Conn, client: str) -> ClientQuota | None:
    """The client's quota, or None for an unknown client."""
    row = conn.execute(
        "SELECT rate_limit_per_minute, max_queued_jobs FROM clients WHERE name = %s", (client,)
    ).fetchone()
    return None if row is None else ClientQuota(row["rate_limit_per_minute"], row["max_queued_jobs"])


def set_quota(
    conn: Conn,
    client: str,
    *,
    rate_limit_per_minute: int | Literal["keep"] | None = KEEP,
    max_queued_jobs: int | Literal["keep"] | None = KEEP,
) -> ClientQuota | None:
    """Set the given limits (None resets one to the default); the new quota, or None if no such client."""
    sets: list[str] = []
    args: list[object] = []
    changes = (("rate_limit_per_minute", rate_limit_per_minute), ("max_queued_jobs", max_queued_jobs))
    for column, value in changes:
        if value != KEEP:
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"{column} must be a positive integer or None, got {value!r}")
            sets.append(f"{column} = %s")
            args.append(value)
    if sets:
        conn.execute(f"UPDATE clients SET {', '.join(sets)} WHERE name = %s", (*args, client))
    return get_quota(conn, client)


def lock_queued_jobs(conn: Conn, client: str) -> tuple[int, int | None]:
    """(queued jobs, the client's own maximum) with the client's row locked until the transaction ends.

    The lock serialises job creations of one client across API processes, so that a count
    taken here and the insert that follows cannot race another creation past the quota.
    """
    row = conn.execute("SELECT max_queued_jobs FROM clients WHERE name = %s FOR UPDATE", (client,)).fetchone()
    limit = None if row is None else row["max_queued_jobs"]
    count = conn.execute(
        "SELECT count(*) AS n FROM jobs WHERE client = %s AND state = 'queued'", (client,)
    ).fetchone()
    return (0 if count is None else int(count["n"])), limit
