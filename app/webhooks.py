"""Webhooks: outbox rows delivered with an HMAC-SHA256 signature, retried with exponential backoff.

The row, with the job's event payload (:meth:`app.repository.Job.event_view`), is written in
the same transaction that finishes the job (:mod:`app.repository.outcomes`), so a
callback is never lost nor sent for an uncommitted result. A dispatcher thread
(in the worker) takes due rows with ``FOR UPDATE SKIP LOCKED`` (several workers
never send the same row at once), POSTs them, and records the outcome.

Signature header (docs/architecture.md §3.8)::

    X-Service4CT-Signature: t=<unix seconds>,v1=<hex hmac_sha256(secret, f"{t}.{body}")>

The receiver recomputes the HMAC over the raw body with its client's webhook
secret (printed by ``service4ct apikey create``) and rejects old timestamps
(:func:`verify`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import random
import socket
import threading
import time
from urllib.parse import urlsplit

import httpx

from app.config import Settings
from app.db import Database
from app.logs import logger
from app.repository import Delivery, outbox_done, outbox_retry, outbox_take_due, webhook_secret

__all__ = ["SIGNATURE_HEADER", "WebhookDispatcher", "backoff_s", "sign", "verify"]

SIGNATURE_HEADER = "X-Service4CT-Signature"
_LEASE_S = 60.0


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The signature header value for ``body``."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(
    secret: str, body: bytes, header: str, tolerance_s: float = 300.0, now: float | None = None
) -> bool:
    """Check a signature header (what a receiver does); False if wrong or older than ``tolerance_s``."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        t = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs((now if now is not None else time.time()) - t) > tolerance_s:
        return False
    expected = sign(secret, body, t).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def backoff_s(attempts: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Delay before retry number ``attempts`` (1 = first retry): base·2^(n−1), capped, ±20 % jitter."""
    r = rng or random
    return float(min(max_s, base_s * 2 ** max(0, attempts - 1)) * r.uniform(0.8, 1.2))


def _address_allowed(url: str) -> str | None:
    """None if ``url``'s host resolves only to public addresses, else the reason."""
    host = urlsplit(url).hostname
    if not host:
        return "callback URL without host"
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return "callback host does not resolve"
    for info in infos:
        ip = ipaddress.ip_address(info[4][0])
        if ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved:
            return "callback address is not public (S4CT_WEBHOOK_ALLOW_PRIVATE is false)"
    return None


class WebhookDispatcher:
    """Delivers due outbox rows in a background thread (or call :meth:`deliver_due` directly)."""

    def __init__(self, db: Database, settings: Settings, client: httpx.Client | None = None) -> None:
        self.db = db
        self.s = settings
        self.http = client or httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.delivered = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="s4ct-webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.s.webhook_timeout_s + 2)
        self.http.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                n = self.deliver_due()
            except Exception:
                logger.exception("webhook dispatcher error")
                n = 0
            if n == 0:
                self._stop.wait(0.5)

    def deliver_due(self, limit: int = 20) -> int:
        """Send every due row (up to ``limit``); returns how many were attempted."""
        with self.db.tx() as conn:
            rows = outbox_take_due(conn, limit, _LEASE_S)
        for row in rows:
            self._deliver(row)
        return len(rows)

    def _deliver(self, row: Delivery) -> None:
        body = json.dumps(row.payload, separators=(",", ":"), sort_keys=True).encode()
        status: int | None = None
        error: str | None = None
        refused = None if self.s.webhook_allow_private else _address_allowed(row.url)
        if refused:
            error = refused
        else:
            with self.db.conn() as conn:
                secret = webhook_secret(conn, row.client) or ""
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "Service4CT-Webhook/1",
                SIGNATURE_HEADER: sign(secret, body),
                "X-Service4CT-Event": row.event,
                "X-Service4CT-Delivery": str(row.id),
            }
            try:
                resp = self.http.post(row.url, content=body, headers=headers)
                status = resp.status_code
                if not 200 <= status < 300:
                    error = f"HTTP {status}"
            except httpx.HTTPError as e:
                error = type(e).__name__
        attempts = row.attempts + 1
        with self.db.conn() as conn:
            if error is None:
                outbox_done(conn, row.id, status)
                self.delivered += 1
                logger.info("webhook {} for job {} delivered", row.id, row.job_id)
                return
            give_up = refused is not None or attempts >= self.s.webhook_max_attempts
            delay = (
                None
                if give_up
                else backoff_s(attempts, self.s.webhook_backoff_s, self.s.webhook_backoff_max_s)
            )
            outbox_retry(conn, row.id, status, error, delay)
        logger.warning(
            "webhook {} for job {} failed ({}); {}",
            row.id,
            row.job_id,
            error,
            "giving up" if delay is None else f"retry in {delay:.0f} s",
        )
