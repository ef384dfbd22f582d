"""Clients (calling products) and their API keys (stored hashed)."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid

from app.db import Conn
from app.repository.records import Row

__all__ = [
    "API_KEY_PREFIX",
    "client_for_key",
    "client_for_key_hash",
    "create_api_key",
    "ensure_client",
    "hash_api_key",
    "list_api_keys",
    "revoke_api_key",
    "revoke_api_key_hash",
    "webhook_secret",
]

API_KEY_PREFIX = "s4ct_"


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def ensure_client(conn: Conn, name: str) -> tuple[str, bool]:
    """(webhook secret, created) of client ``name``, creating it if needed."""
    secret = secrets.token_hex(32)
    row = conn.execute(
        "INSERT INTO clients (name, webhook_secret) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING "
        "RETURNING webhook_secret",
        (name, secret),
    ).fetchone()
    if row:
        return row["webhook_secret"], True
    got = conn.execute("SELECT webhook_secret FROM clients WHERE name = %s", (name,)).fetchone()
    assert got is not None
    return got["webhook_secret"], False


def webhook_secret(conn: Conn, client: str) -> str | None:
    row = conn.execute("SELECT webhook_secret FROM clients WHERE name = %s", (client,)).fetchone()
    return None if row is None else str(row["webhook_secret"])


def create_api_key(conn: Conn, client: str, label: str = "") -> tuple[uuid.UUID, str]:
    """A new key for ``client`` (created if needed): (key id, the key — shown once, stored hashed)."""
    ensure_client(conn, client)
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = uuid.uuid4()
    conn.execute(
        "INSERT INTO api_keys (id, client, label, key_prefix, key_hash) VALUES (%s, %s, %s, %s, %s)",
        (key_id, client, label, key[: len(API_KEY_PREFIX) + 6], hash_api_key(key)),
    )
    return key_id, key


def revoke_api_key(conn: Conn, key_id: uuid.UUID) -> bool:
    cur = conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL", (key_id,)
    )
    return cur.rowcount == 1


def list_api_keys(conn: Conn) -> list[Row]:
    return conn.execute(
        "SELECT id, client, label, key_prefix, created_at, last_used_at, revoked_at FROM api_keys "
        "ORDER BY created_at"
    ).fetchall()


def client_for_key(conn: Conn, key: str) -> str | None:
    """The client owning an active key, or None. Marks the key used (at most once a minute)."""
    return client_for_key_hash(conn, hash_api_key(key))


def client_for_key_hash(conn: Conn, key_hash: str) -> str | None:
    """:func:`client_for_key` by the key's hash (the API's key cache holds hashes only)."""
    row = conn.execute(
        "SELECT id, client, last_used_at FROM api_keys WHERE key_hash = %s AND revoked_at IS NULL",
        (key_hash,),
    ).fetchone()
    if row is None:
        return None
    last = row["last_used_at"]
    if last is None or dt.datetime.now(dt.UTC) - last > dt.timedelta(minutes=1):
        conn.execute("UPDATE api_keys SET last_used_at = now() WHERE id = %s", (row["id"],))
    return str(row["client"])


def revoke_api_key_hash(conn: Conn, key_id: uuid.UUID) -> str | None:
    """Revoke a key; its hash (to broadcast the revocation), or None when no active key has this id."""
    row = conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL RETURNING key_hash",
        (key_id,),
    ).fetchone()
    return None if row is None else str(row["key_hash"])
