"""Webhooks: outbox rows delivered with an HMAC-SHA256 signature, retried with exponential backoff.

The row, with the job's event payload (:meth:`app.repository.Job.event_view`), is written in
the same transaction that finishes the job (:mod:`app.repository.outcomes`), so a
callback is never lost nor sent for an uncommitted result. A dispatcher thread
(in the worker) takes due rows with ``FOR UPDATE SKIP LOCKED`` (several workers
never send the same row at once) and hands them to a pool of delivery threads:
at most ``webhook_concurrency`` at once, at most ``webhook_per_client`` per client, so
that one client's hanging endpoint holds only its own share.

Each delivery resolves the callback host once, checks every address against the policy
(:mod:`app.callbacks`) and connects to the checked address (:class:`PinnedTransport`: the
``Host`` header, TLS SNI and certificate check keep the name), so DNS rebinding
between the check and the connection is impossible. Every error is an attempt: retried
with backoff until ``webhook_max_attempts``; an address the policy refuses ends the row.

Signature header (docs/api.md, Webhooks)::

    X-Service4CT-Signature: t=<unix seconds>,v1=<hex hmac_sha256(secret, f"{t}.{body}")>,
                            v2=<hex hmac_sha256(secret, f"{t}.{delivery}.{event}.{body}")>

``v2`` also covers the delivery id and the event (receivers deduplicate on the id);
``v1`` stays for receivers written before it. During a secret rotation
(:func:`app.repository.events.rotate_secret`) the header carries one ``v1`` and one ``v2``
per valid secret, the new secret's first: ``t=…,v1=<new>,v2=<new>,v1=<old>,v2=<old>``; a
receiver accepts the delivery if any ``v2`` matches its secret. :func:`verify` is the
receiver side.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import httpx

from app.callbacks import (
    AddressPolicy,
    CallbackURLError,
    Resolver,
    check_callback_url,
    policy_of,
    system_resolver,
)
from app.config import Settings
from app.db import Conn, Database
from app.logs import logger
from app.outbox import OutboxSender, Retries, poll
from app.repository import Delivery, outbox_done, outbox_retry, outbox_take_due
from app.repository.events import webhook_secrets

__all__ = [
    "SIGNATURE_HEADER",
    "PinnedTransport",
    "WebhookDispatcher",
    "sign",
    "verify",
]

SIGNATURE_HEADER = "X-Service4CT-Signature"
_LEASE_S = 60.0


def _mac(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(
    secret: str | Sequence[str],
    body: bytes,
    timestamp: int | None = None,
    *,
    delivery: str | None = None,
    event: str | None = None,
) -> str:
    """The signature header for ``body``: ``t``, then ``v1`` (and ``v2`` when delivery and event are
    given) for each secret in order (several while a secret rotation is open)."""
    t = int(time.time()) if timestamp is None else timestamp
    header = f"t={t}"
    for key in [secret] if isinstance(secret, str) else secret:
        header += f",v1={_mac(key, f'{t}.'.encode() + body)}"
        if delivery is not None and event is not None:
            header += f",v2={_mac(key, f'{t}.{delivery}.{event}.'.encode() + body)}"
    return header


def verify(
    secret: str,
    body: bytes,
    header: str,
    tolerance_s: float = 300.0,
    now: float | None = None,
    *,
    delivery: str | None = None,
    event: str | None = None,
) -> bool:
    """Check a signature header (what a receiver does); False if wrong or older than ``tolerance_s``.

    With ``delivery`` and ``event`` (the ``X-Service4CT-Delivery`` and ``-Event`` headers) a
    ``v2`` MAC is required and checked, so neither can be swapped; without them, ``v1``. The
    header may carry several of each (a secret rotation): one matching is enough.
    """
    parts: dict[str, list[str]] = {}
    try:
        for item in header.split(","):
            name, value = item.strip().split("=", 1)
            parts.setdefault(name, []).append(value)
        (t_text,) = parts["t"]
        t = int(t_text)
    except (ValueError, KeyError):
        return False
    if abs((now if now is not None else time.time()) - t) > tolerance_s:
        return False
    if delivery is not None and event is not None:
        expected, scheme = _mac(secret, f"{t}.{delivery}.{event}.".encode() + body), "v2"
    else:
        expected, scheme = _mac(secret, f"{t}.".encode() + body), "v1"
    return any(hmac.compare_digest(expected, got) for got in parts.get(scheme, []))


class PinnedTransport(httpx.BaseTransport):
    """Checks each request's host with :func:`check_callback_url` and connects to the checked address.

    The host is resolved once; the request goes to that IP address with the original
    ``Host`` header and, for https, the original name as TLS SNI and for the certificate
    check. A refused address raises :class:`CallbackURLError` before any connection.
    """

    def __init__(
        self,
        policy: AddressPolicy,
        resolver: Resolver = system_resolver,
        inner: httpx.BaseTransport | None = None,
    ) -> None:
        self.policy = policy
        self.resolver = resolver
        self.inner = inner or httpx.HTTPTransport(retries=0)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        target = check_callback_url(str(request.url), self.policy, self.resolver)
        extensions = dict(request.extensions)
        if target.scheme == "https":
            extensions["sni_hostname"] = target.host
        last: httpx.ConnectError | None = None
        for address in target.addresses:
            pinned = httpx.Request(
                request.method,
                request.url.copy_with(host=address),
                headers=request.headers,  # Host: the name, as built from the original URL
                stream=request.stream,
                extensions=extensions,
            )
            try:
                return self.inner.handle_request(pinned)
            except httpx.ConnectError as e:  # nothing was sent: the next checked address
                last = e
        assert last is not None
        raise last

    def close(self) -> None:
        self.inner.close()


class WebhookDispatcher(OutboxSender[Delivery]):
    """Delivers due outbox rows from a background thread through a pool of delivery threads.

    :meth:`deliver_due` takes as many due rows as there are free slots and starts them;
    :meth:`wait_idle` waits until none is in flight (tests, shutdown).
    """

    def __init__(
        self,
        db: Database,
        settings: Settings,
        client: httpx.Client | None = None,
        resolver: Resolver = system_resolver,
    ) -> None:
        super().__init__(
            db,
            Retries(
                settings.webhook_max_attempts, settings.webhook_backoff_s, settings.webhook_backoff_max_s
            ),
        )
        self.s = settings
        timeout = httpx.Timeout(settings.webhook_timeout_s, connect=settings.webhook_connect_timeout_s)
        self.http = client or httpx.Client(
            transport=PinnedTransport(policy_of(settings), resolver),
            timeout=timeout,
            follow_redirects=False,
            trust_env=False,  # no proxy from the environment: the pinned address is the one reached
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(settings.webhook_concurrency, thread_name_prefix="s4ct-webhook")
        self._busy: dict[str, int] = {}
        self._changed = threading.Condition()
        self.delivered = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="s4ct-webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.wait_idle(self.s.webhook_timeout_s + 2)
        self.http.close()

    def in_flight(self) -> int:
        with self._changed:
            return sum(self._busy.values())

    def wait_idle(self, timeout: float) -> bool:
        """True once no delivery is in flight (False after ``timeout`` seconds)."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._busy, timeout=timeout)

    def _loop(self) -> None:
        poll(self._stop, self.deliver_due, self._idle, "webhook dispatcher error")

    def _idle(self) -> None:
        with self._changed:  # a finished delivery frees a slot: look again at once
            self._changed.wait(0.5)

    def deliver_due(self) -> int:
        """Start every due row that fits the free slots; returns how many were started."""
        with self._changed:
            free = self.s.webhook_concurrency - sum(self._busy.values())
            busy = dict(self._busy)
        if free <= 0 or self._stop.is_set():
            return 0
        with self.db.tx() as conn:
            rows = outbox_take_due(conn, free, _LEASE_S, per_client=self.s.webhook_per_client, busy=busy)
        for row in rows:
            with self._changed:
                self._busy[row.client] = self._busy.get(row.client, 0) + 1
            try:
                future = self._pool.submit(self._run, row)
            except RuntimeError:  # stopping: the lease expires and another dispatcher takes it
                self._done(row)
                continue
            future.add_done_callback(functools.partial(self._cancelled, row))
        return len(rows)

    def _cancelled(self, row: Delivery, future: Future[None]) -> None:
        if future.cancelled():  # never ran: its slot is free again
            self._done(row)

    def _run(self, row: Delivery) -> None:
        try:
            self._deliver(row)
        finally:
            self._done(row)

    def _done(self, row: Delivery) -> None:
        with self._changed:
            left = self._busy.get(row.client, 0) - 1
            if left > 0:
                self._busy[row.client] = left
            else:
                self._busy.pop(row.client, None)
            self._changed.notify_all()

    def _deliver(self, row: Delivery) -> bool:
        """One attempt, recorded whatever happens; True if delivered."""
        status: int | None = None
        final = False
        try:
            status = self._send(row)
            error = None if 200 <= status < 300 else f"HTTP {status}"
        except CallbackURLError as e:
            error, final = str(e), True
        except Exception as e:  # any error is an attempt, with its backoff and its end
            error = type(e).__name__
        try:
            self._record(row, status, error, final)
        except Exception:  # the lease expires and the row is taken again
            logger.exception("webhook {}: recording the attempt failed", row.id)
        return error is None

    def _send(self, row: Delivery) -> int:
        body = json.dumps(row.payload, separators=(",", ":"), sort_keys=True).encode()
        with self.db.conn() as conn:
            secrets = webhook_secrets(conn, row.client) or [""]
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Service4CT-Webhook/1",
            SIGNATURE_HEADER: sign(secrets, body, delivery=str(row.id), event=row.event),
            "X-Service4CT-Event": row.event,
            "X-Service4CT-Delivery": str(row.id),
        }
        return self.http.post(row.url, content=body, headers=headers).status_code

    def _succeeded(self, conn: Conn, row: Delivery, status: int | None) -> None:
        outbox_done(conn, row.id, status)
        with self._changed:
            self.delivered += 1
        logger.info("webhook {} ({}) delivered", row.id, row.event)

    def _retry(
        self, conn: Conn, row: Delivery, status: int | None, error: str, delay_s: float | None
    ) -> None:
        outbox_retry(conn, row.id, status, error, delay_s)

    def _failed(self, row: Delivery, error: str, outcome: str) -> None:
        logger.warning("webhook {} ({}) failed ({}); {}", row.id, row.event, error, outcome)
