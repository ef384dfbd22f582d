"""Webhooks against real PostgreSQL: SSRF refusals, pinned delivery, every error an attempt, isolation.

Nothing here connects anywhere but loopback: names resolve through stubbed resolvers,
refused addresses are refused before a connection, and the receivers listen on 127.0.0.1.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import LiveApi, Receiver, dispatching, wait_for  # type: ignore[import-not-found]
from seeding import Seeded, seed_client, small_zip, upload  # type: ignore[import-not-found]

from app.config import Settings
from app.db import connect
from app.repository import job_event, outbox_add, outbox_rows, webhook_secret
from app.webhooks import SIGNATURE_HEADER, verify

PUBLIC = "93.184.216.34"


def _stub_dns(table: dict[str, str]) -> Callable[[str, int], list[str]]:
    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError("NXDOMAIN")
        return [table[host]]

    return resolve


@pytest.fixture(scope="module")
def strict(make_settings: Callable[..., Settings]) -> Iterator[LiveApi]:
    """An API with the production policy: no loopback, no private addresses."""
    with LiveApi(make_settings(webhook_allow_loopback=False)) as live:
        live.app.state.services.callback_resolver = _stub_dns(
            {"hooks.example": PUBLIC, "metadata.example": "169.254.169.254", "intranet.example": "10.0.0.7"}
        )
        yield live


@pytest.fixture(scope="module")
def strict_owner(strict: LiveApi) -> Seeded:
    return seed_client(strict, "hooks-owner")


POISONED = [
    "http://169.254.169.254/latest/meta-data/iam/",
    "http://[fd00:ec2::254]/",
    "http://100.100.100.200/",
    "http://[2002:a9fe:a9fe::1]/",
    "http://[::ffff:127.0.0.1]:8000/",
    "http://127.0.0.1:8000/v1/studies",
    "http://localhost:6379/",
    "http://10.0.0.7/hook",
    "https://metadata.example/hook",  # a name that resolves to the metadata address
    "https://intranet.example/hook",
    "https://nowhere.example/hook",  # does not resolve
    "https://" + "a" * 64 + ".example/hook",  # crashed every delivery batch before
    "https://hooks.example/" + "x" * 2100,
]


def test_poisoned_callback_urls_are_refused_at_post(strict: LiveApi, strict_owner: Seeded) -> None:
    with strict.client(strict_owner.key) as c:
        study = upload(c, small_zip(f"hooks-{uuid.uuid4().hex[:6]}"))
        parent = strict_owner.jobs["succeeded"]
        for url in POISONED:
            for path, body in (
                ("/v1/jobs", {"study_id": study, "callback_url": url}),
                (f"/v1/studies/{study}/predict", {"callback_url": url}),
                (f"/v1/jobs/{parent}/explain", {"method": "saliency", "callback_url": url}),
            ):
                r = c.post(path, json=body)
                assert r.status_code == 422, (path, url, r.text)
                error = r.json()
                assert error["error"] in ("callback_url_invalid", "validation_error"), (url, error)
        # the two long ones are pydantic's or ours, the others always ours
        ours = c.post("/v1/jobs", json={"study_id": study, "callback_url": POISONED[0]}).json()
        assert ours["error"] == "callback_url_invalid" and "link-local" in ours["detail"]
        ok = c.post("/v1/jobs", json={"study_id": study, "callback_url": "https://hooks.example/cb"})
        assert ok.status_code == 202, ok.text
    assert strict.settings.database_url
    with connect(strict.settings.database_url) as conn:
        stored = conn.execute(
            "SELECT count(*) AS n FROM jobs WHERE client = %s AND callback_url IS NOT NULL",
            (strict_owner.client,),
        ).fetchone()
    assert stored is not None and stored["n"] == 1  # only the public one was stored


def _outbox(settings: Settings, owner: Seeded, url: str, n: int = 1) -> uuid.UUID:
    assert settings.database_url
    job = uuid.UUID(owner.jobs["succeeded"])
    with connect(settings.database_url) as conn:
        for _ in range(n):
            outbox_add(conn, job, owner.client, url, "job.succeeded", job_event(conn, job))
    return job


def _rows(settings: Settings, job: uuid.UUID, url: str) -> list[dict[str, Any]]:
    assert settings.database_url
    with connect(settings.database_url) as conn:
        return [dict(r) for r in outbox_rows(conn, job) if r["url"] == url]


def test_rebinding_at_delivery_is_refused_and_a_pinned_delivery_keeps_the_name(
    strict: LiveApi, strict_owner: Seeded, make_settings: Callable[..., Settings]
) -> None:
    settings = strict.settings
    with Receiver() as rx:
        port = rx.server.server_address[1]
        url = f"http://rebind.example:{port}/hook"  # checked at POST while it pointed elsewhere
        job = _outbox(settings, strict_owner, url)
        with dispatching(settings, _stub_dns({"rebind.example": "127.0.0.1"})) as d:
            wait_for(
                lambda: d.deliver_due() >= 0 and d.wait_idle(5) and _rows(settings, job, url)[0]["dead_at"]
            )
        (row,) = _rows(settings, job, url)
        assert row["attempts"] == 1 and "loopback" in row["last_error"]  # refused once, not retried
        assert rx.requests == []  # nothing reached the address

        # the same name where loopback is allowed: delivered to the checked address, Host kept
        dev = settings.model_copy(update={"webhook_allow_loopback": True})
        url2 = f"http://pinned.example:{port}/hook?token=secret"
        job = _outbox(dev, strict_owner, url2)
        with dispatching(dev, _stub_dns({"pinned.example": "127.0.0.1"})) as d:
            wait_for(lambda: d.deliver_due() >= 0 and rx.requests, timeout=30, what="the pinned delivery")
    (delivery,) = rx.requests
    headers = {k.lower(): v for k, v in delivery["headers"].items()}
    assert headers["host"] == f"pinned.example:{port}" and delivery["path"] == "/hook?token=secret"
    assert dev.database_url
    with connect(dev.database_url) as conn:
        secret = webhook_secret(conn, strict_owner.client)
    assert secret
    rid, event = headers["x-service4ct-delivery"], headers["x-service4ct-event"]
    header = headers[SIGNATURE_HEADER.lower()]
    assert verify(secret, delivery["body"], header, delivery=rid, event=event)  # v2
    assert verify(secret, delivery["body"], header)  # v1, for receivers written before v2
    assert not verify(secret, delivery["body"], header, delivery=str(int(rid) + 1), event=event)


def test_any_error_is_an_attempt_with_backoff_and_an_end(strict: LiveApi, strict_owner: Seeded) -> None:
    """A resolver that raises something unexpected (not OSError, not httpx): retried, then given up."""
    settings = strict.settings.model_copy(
        update={"webhook_max_attempts": 3, "webhook_backoff_s": 0.05, "webhook_backoff_max_s": 0.1}
    )

    def broken(host: str, port: int) -> list[str]:
        raise RuntimeError("resolver bug")

    url = "https://broken.example/hook"
    job = _outbox(settings, strict_owner, url)
    with dispatching(settings, broken) as d:
        wait_for(
            lambda: d.deliver_due() >= 0 and _rows(settings, job, url)[0]["dead_at"],
            timeout=30,
            what="the row to be given up",
        )
    (row,) = _rows(settings, job, url)
    assert row["attempts"] == 3 and row["last_error"] == "RuntimeError" and row["delivered_at"] is None


class _Hanging:
    """A loopback endpoint that accepts connections and never answers (until closed)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


def test_a_hanging_endpoint_holds_only_its_clients_slots(api: LiveApi, settings: Settings) -> None:
    slow_owner, fast_owner = seed_client(api, "slow-client"), seed_client(api, "fast-client")
    s = settings.model_copy(update={"webhook_timeout_s": 60.0, "webhook_per_client": 2})
    hang = _Hanging()
    try:
        with Receiver() as rx:
            slow_url = f"http://127.0.0.1:{hang.port}/hook"
            _outbox(s, slow_owner, slow_url, n=5)  # the slow client's rows come first
            time.sleep(0.05)
            _outbox(s, fast_owner, rx.url)
            with dispatching(s, _stub_dns({}), thread=True) as d:
                try:
                    # well inside the hanging deliveries' 60 s read timeout
                    wait_for(lambda: rx.requests, timeout=20, what="the other client's webhook")
                    time.sleep(0.3)
                    assert len(hang.conns) == 2  # its per-client share, not the pool
                    assert d.in_flight() == 2
                finally:
                    hang.close()  # the held deliveries fail now (recorded as attempts) before the stop
    finally:
        hang.close()
    assert json.loads(rx.requests[0]["body"])["job_id"] == fast_owner.jobs["succeeded"]
