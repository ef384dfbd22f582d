"""``Idempotency-Key`` handling shared by every POST route (docs/architecture.md §3.4).

The key is reserved inside the same transaction that creates the resource, so
a retried request either waits for the first one to commit and then replays
its stored answer, or — if the first failed — runs afresh. Same key with
another route or body → 409 ``idempotency_conflict``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Header

from app.db import Conn, Database
from app.errors import ServiceError
from app.repository import (
    IdempotencyConflictError,
    IdempotencyInProgressError,
    idempotency_begin,
    idempotency_store,
)

__all__ = ["MAX_KEY_LEN", "IdemKey", "body_hash", "run_idempotent"]

MAX_KEY_LEN = 255

#: the ``Idempotency-Key`` header parameter of a POST route
IdemKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", description="retries with the same key and body replay the answer"),
]


def body_hash(payload: Any) -> str:
    """Hash of a JSON body, independent of key order and whitespace."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def run_idempotent(
    db: Database,
    client: str,
    key: str | None,
    route: str,
    request_hash: str,
    action: Callable[[Conn], tuple[int, dict[str, Any]]],
) -> tuple[int, dict[str, Any], bool]:
    """Run ``action`` in a transaction under ``key``: (status, body, replayed)."""
    if key is not None and not (0 < len(key) <= MAX_KEY_LEN and key.isprintable()):
        raise ServiceError(
            "validation_error", f"Idempotency-Key must be 1–{MAX_KEY_LEN} printable characters"
        )
    with db.tx() as conn:
        if key is not None:
            try:
                prev = idempotency_begin(conn, client, key, route, request_hash)
            except IdempotencyConflictError:
                raise ServiceError(
                    "idempotency_conflict", "this Idempotency-Key was used with another request"
                ) from None
            except IdempotencyInProgressError:
                raise ServiceError("idempotency_in_progress") from None
            if prev is not None:
                return prev[0], prev[1], True
        status, body = action(conn)
        if key is not None:
            idempotency_store(conn, client, key, status, body)
        return status, body, False
