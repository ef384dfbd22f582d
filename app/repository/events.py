"""Event webhooks: which events a client receives, where, and with which secrets.

Every event row is written to the outbox (:mod:`app.repository.outbox`) in the transaction
that makes the change it reports (architecture rule 3): ``job.started`` with the claim,
``job.succeeded``/``failed``/``cancelled`` with the job's end, ``explanation.succeeded``
with the explanation row, ``study.deleted`` with the study's deletion.

Routing (:func:`emit`): an event the client has not selected is not queued; a job's own
``callback_url`` wins over the client's default webhook URL; ``study.deleted`` goes to the
default URL. A client that selected nothing gets :data:`DEFAULT_EVENTS`.

Secret rotation: :func:`rotate_secret` makes a new secret and keeps the previous one until
:func:`finish_rotation` or its deadline; meanwhile every delivery is signed with both
(:func:`webhook_secrets`, :func:`app.webhooks.sign`).
"""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

from app.db import Conn
from app.repository.outbox import outbox_add

__all__ = [
    "DEFAULT_EVENTS",
    "EVENTS",
    "Event",
    "WebhookConfig",
    "emit",
    "finish_rotation",
    "get_webhook_config",
    "rotate_secret",
    "set_webhook_config",
    "study_deleted",
    "webhook_secrets",
]

Event = Literal[
    "job.started",
    "job.succeeded",
    "job.failed",
    "job.cancelled",
    "explanation.succeeded",
    "study.deleted",
]
EVENTS: Final[tuple[str, ...]] = get_args(Event)
#: what a client that selected nothing receives (the events sent before selection existed)
DEFAULT_EVENTS: Final[tuple[str, ...]] = ("job.succeeded", "job.failed", "job.cancelled")


@dataclass(frozen=True)
class WebhookConfig:
    """A client's webhook settings.

    Attributes:
        url: the default webhook URL (None: only jobs' own ``callback_url`` are called).
        events: the events delivered, in :data:`EVENTS` order.
        selected: False when the client never chose (``events`` is :data:`DEFAULT_EVENTS`).
        previous_until: while a secret rotation is open, when the previous secret stops signing.
    """

    url: str | None
    events: tuple[str, ...]
    selected: bool
    previous_until: dt.datetime | None


def _ordered(events: Sequence[str]) -> tuple[str, ...]:
    unknown = sorted(set(events) - set(EVENTS))
    if unknown:
        raise ValueError(f"unknown events {unknown}; known: {', '.join(EVENTS)}")
    return tuple(e for e in EVENTS if e in set(events))


_CONFIG_SQL = (
    "SELECT webhook_url, webhook_events, CASE WHEN webhook_secret_previous_until > now() "
    "THEN webhook_secret_previous_until END AS previous_until FROM clients WHERE name = %s"
)


def get_webhook_config(conn: Conn, client: str) -> WebhookConfig | None:
    """The client's webhook settings, or None for an unknown client."""
    row = conn.execute(_CONFIG_SQL, (client,)).fetchone()
    if row is None:
        return None
    chosen = row["webhook_events"]
    return WebhookConfig(
        url=row["webhook_url"],
        events=DEFAULT_EVENTS if chosen is None else _ordered(chosen),
        selected=chosen is not None,
        previous_until=row["previous_until"],
    )


def set_webhook_config(
    conn: Conn, client: str, url: str | None, events: Sequence[str] | None
) -> WebhookConfig | None:
    """Replace the default URL and the selection (None: the default selection); None if no such client.

    The URL must have been checked against the callback policy by the caller.
    """
    chosen = None if events is None else list(_ordered(events))
    conn.execute(
        "UPDATE clients SET webhook_url = %s, webhook_events = %s WHERE name = %s", (url, chosen, client)
    )
    return get_webhook_config(conn, client)


def webhook_secrets(conn: Conn, client: str) -> list[str]:
    """The secrets a delivery is signed with: the current one, then the previous one while it is valid."""
    row = conn.execute(
        "SELECT webhook_secret, CASE WHEN webhook_secret_previous_until > now() "
        "THEN webhook_secret_previous END AS previous FROM clients WHERE name = %s",
        (client,),
    ).fetchone()
    if row is None:
        return []
    return [row["webhook_secret"], *([row["previous"]] if row["previous"] else [])]


def rotate_secret(conn: Conn, client: str, overlap: dt.timedelta) -> tuple[str, dt.datetime] | None:
    """A new webhook secret; the current one stays valid for ``overlap``. (new secret, its end), or None.

    Rotating again during an overlap drops the oldest secret: two are valid at most.
    """
    new = secrets.token_hex(32)
    row = conn.execute(
        "UPDATE clients SET webhook_secret_previous = webhook_secret, webhook_secret = %s, "
        "webhook_secret_previous_until = now() + %s WHERE name = %s "
        "RETURNING webhook_secret_previous_until",
        (new, overlap, client),
    ).fetchone()
    return None if row is None else (new, row["webhook_secret_previous_until"])


def finish_rotation(conn: Conn, client: str) -> bool:
    """Forget the previous secret: deliveries are signed with the current one only; False: no client."""
    cur = conn.execute(
        "UPDATE clients SET webhook_secret_previous = NULL, webhook_secret_previous_until = NULL "
        "WHERE name = %s",
        (client,),
    )
    return cur.rowcount == 1


def emit(
    conn: Conn,
    client: str,
    event: str,
    payload: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
    *,
    callback_url: str | None = None,
    job_id: uuid.UUID | None = None,
    study_id: uuid.UUID | None = None,
) -> bool:
    """Queue ``event`` for ``client`` if selected, to ``callback_url`` or else the default URL.

    Call it inside the transaction of the change the event reports. True if a row was queued.
    ``payload`` may be a function: it is called only when the event is queued.
    """
    config = get_webhook_config(conn, client)
    if config is None or event not in config.events:
        return False
    url = callback_url or config.url
    if not url:
        return False
    body = payload() if callable(payload) else payload
    outbox_add(conn, job_id, client, url, event, {**body, "event": event}, study_id=study_id)
    return True


def study_deleted(conn: Conn, study: Mapping[str, Any]) -> bool:
    """Queue ``study.deleted`` for a study row just deleted (in the deleting transaction)."""
    payload = {
        "study_id": str(study["id"]),
        "sha256": study["sha256"],
        "client_ref": study.get("client_ref"),
        "metadata": study.get("metadata") or {},
        "deleted_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    return emit(conn, str(study["client"]), "study.deleted", payload, study_id=uuid.UUID(str(study["id"])))
