"""Security of the live API with real PostgreSQL, Redis and S3 (SeaweedFS): nothing is mocked.

- every route but the open ones (health, docs, metrics, the static viewer) needs a key;
- another client's resources are 404 with the resource's code, never 403 nor data;
- presigned URLs expire for real on the S3 server and are never issued for more than 15 min;
- webhook signatures: a delivery from the outbox verifies; replayed, tampered, wrong-secret ones do not;
- every answer carries the request id (error bodies too, an incoming id is echoed);
- an upload whose Content-Length is over the cap is refused before a body byte is sent;
- refusals of studies whose member names carry patient identifiers do not echo them.
"""

from __future__ import annotations

import datetime as dt
import gzip
import http.client
import json
import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from conftest import LiveApi, Receiver, list_keys, new_key, storage_of, wait_for, wait_job  # type: ignore[import-not-found]
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from phi_guard import identifier_tokens  # type: ignore[import-not-found]
from pydantic import ValidationError
from seeding import Seeded, seed_client, upload  # type: ignore[import-not-found]
from zipcraft import zip_of  # type: ignore[import-not-found]

from app.config import Settings
from app.db import Database, connect
from app.repository import create_api_key, job_event, outbox_add, revoke_api_key, webhook_secret
from app.storage import MAX_PRESIGN_SECONDS
from app.webhooks import SIGNATURE_HEADER, WebhookDispatcher, sign, verify
from ml.phantom import PHI_IDENTIFIERS, make_study

#: routes open by design (docs/architecture.md §3.7), and the static viewer: its page and two assets
#: hold no data and are given a viewer token in memory; the data comes from /v1 routes with it
OPEN = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
    ("GET", "/docs/assets/{name}"),
    ("GET", "/viewer/{job_id}"),
    ("GET", "/viewer/assets/{name}"),
}
PARAMS = {"name": "viewer.js"}
CAP = 1 << 20  # upload cap of the `tight` API
TTL = 3  # presign TTL of the `tight` API (seconds)


def _rid(r: httpx.Response) -> str:
    rid = str(r.headers.get("x-request-id", ""))
    assert rid, f"{r.request.method} {r.request.url.path} → {r.status_code} without X-Request-ID"
    return rid


def _error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """``r`` is the error answer ``status``/``code`` with the stable body carrying its request id."""
    assert r.status_code == status, (r.request.method, r.request.url.path, r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = r.json()
    assert set(body) == {"error", "detail", "request_id"} and body["error"] == code, body
    assert body["request_id"] == _rid(r)
    return body


def _routes(api: LiveApi) -> set[tuple[str, str]]:
    """(method, path) of every route the app serves (HEAD aside), checked against its OpenAPI paths."""
    app = api.server.config.app
    assert isinstance(app, FastAPI)
    out = {
        (m, r.path)
        for r in iter_route_contexts(app.routes)  # included routers flattened
        if r.path and r.methods
        for m in r.methods
        if m != "HEAD"
    }
    spec = app.openapi()
    documented = {(m.upper(), p) for p, item in spec["paths"].items() for m in item}
    assert documented <= out, documented - out
    return out


def _url(path: str) -> str:
    path = path.replace("/docs/assets/{name}", "/docs/assets/swagger-ui.css")
    return re.sub(r"\{([^}]+)\}", lambda m: PARAMS.get(m[1], str(uuid.uuid4())), path)


@pytest.fixture(scope="module")
def owner(api: LiveApi) -> Seeded:
    return seed_client(api, "owner")


@pytest.fixture(scope="module")
def tight(make_settings: Any) -> Iterator[LiveApi]:
    """An API with a 1 MiB upload cap, 3 s presigned URLs and one upload slot (waits 1 s at most)."""
    settings = make_settings(
        max_upload_bytes=CAP, presign_ttl_s=TTL, max_concurrent_uploads=1, upload_wait_s=1.0
    )
    with LiveApi(settings) as live:
        yield live


def test_every_route_but_the_open_ones_needs_a_key(api: LiveApi, owner: Seeded) -> None:
    routes = _routes(api)
    assert routes >= OPEN
    protected = sorted(routes - OPEN)
    assert len(protected) >= 10, protected  # every /v1 operation
    assert api.settings.database_url
    with connect(api.settings.database_url) as conn:
        key_id, revoked = create_api_key(conn, "owner", "revoked before first use")
        assert revoke_api_key(conn, key_id)
    bad_auth: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer s4ct_not-a-key"},
        {"Authorization": f"Bearer {revoked}"},
        {"Authorization": f"Basic {owner.key}"},
        {"Authorization": "Bearer"},
        {"Authorization": owner.key},
    ]
    with api.client() as c:
        for method, path in protected:
            for headers in bad_auth:
                # a valid-looking body: the key is checked before anything else is read
                r = c.request(method, _url(path), headers=headers, json={"study_id": owner.study_id})
                _error(r, 401, "unauthorized")
        for method, path in sorted(OPEN & routes):
            r = c.request(method, _url(path))
            assert r.status_code in ((200, 503) if path == "/readyz" else (200,)), (path, r.status_code)
            _rid(r)
    with api.client(owner.key) as c:  # and the owner's key is accepted on the same routes
        assert c.get(f"/v1/studies/{owner.study_id}").status_code == 200


def test_viewer_page_is_static_and_holds_no_data(api: LiveApi, owner: Seeded) -> None:
    job = owner.jobs["succeeded"]
    with api.client() as c:
        page = c.get(f"/viewer/{job}")
        other = c.get(f"/viewer/{uuid.uuid4()}")
    assert page.status_code == 200 and page.text == other.text  # the same static file for any id
    assert owner.study_id not in page.text and job not in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    with api.client() as c:
        _error(c.get("/viewer/assets/index.html"), 404, "not_found")  # a fixed list of assets only
        for traversal in ("%2e%2e%2fviewer.py", "..%2f..%2fmain.py", "%2e%2e%2f%2e%2e%2f__init__.py"):
            r = c.get(f"/viewer/assets/{traversal}")
            assert r.status_code == 404 and "import" not in r.text, (traversal, r.status_code)


@pytest.mark.slow
def test_a_revoked_key_stops_working_within_the_cache_ttl(api: LiveApi) -> None:
    assert api.settings.database_url
    with connect(api.settings.database_url) as conn:
        key_id, key = create_api_key(conn, "revocable", "test")
    with api.client(key) as c:
        assert c.get("/v1/models").status_code == 200  # now cached as valid
        with connect(api.settings.database_url) as conn:
            assert revoke_api_key(conn, key_id)
        revoked_at = time.monotonic()
        wait_for(lambda: c.get("/v1/models").status_code == 401, timeout=30, interval=0.5, what="revocation")
        assert time.monotonic() - revoked_at <= 10 + 2  # the key cache TTL (app.api.deps), plus slack
        _error(c.get("/v1/models"), 401, "unauthorized")


def test_other_clients_resources_are_404(api: LiveApi, owner: Seeded) -> None:
    intruder = new_key(api.settings, "intruder")
    study, done = owner.study_id, owner.jobs["succeeded"]
    probes = [
        ("GET", f"/v1/studies/{study}", None, "study_not_found"),
        ("DELETE", f"/v1/studies/{study}", None, "study_not_found"),
        ("POST", f"/v1/studies/{study}/predict", {"explain": "none"}, "study_not_found"),
        ("POST", "/v1/jobs", {"study_id": study, "explain": "none"}, "study_not_found"),
        *[("GET", f"/v1/jobs/{j}", None, "job_not_found") for j in owner.jobs.values()],
        ("GET", f"/v1/jobs/{done}/result", None, "job_not_found"),
        ("GET", f"/v1/jobs/{done}/explanation", None, "job_not_found"),
        ("GET", f"/v1/jobs/{done}/explanation?method=gradcam", None, "job_not_found"),
        ("POST", f"/v1/jobs/{done}/explain", {"method": "saliency"}, "job_not_found"),
    ]
    with api.client(owner.key) as a:
        shared_key = {"Idempotency-Key": f"shared-{uuid.uuid4().hex[:6]}"}
        first = a.post("/v1/jobs", json={"study_id": study, "explain": "none"}, headers=shared_key)
        assert first.status_code == 202
    with api.client(intruder) as b:
        for method, path, body, code in probes:
            r = b.request(method, path, json=body)
            text = _error(r, 404, code)["detail"]
            assert study not in text and "0.93" not in text and "http" not in text
        # the owner's Idempotency-Key with the owner's request replays nothing to another client
        r = b.post("/v1/jobs", json={"study_id": study, "explain": "none"}, headers=shared_key)
        _error(r, 404, "study_not_found")
        assert first.json()["job_id"] not in r.text
    with api.client(owner.key) as a:  # nothing was changed by the intruder
        assert a.get(f"/v1/studies/{study}").status_code == 200
        assert a.get(f"/v1/jobs/{done}/result").status_code == 200
        assert a.get(f"/v1/jobs/{done}").json()["state"] == "succeeded"


def _expires(url: str) -> int:
    (value,) = parse_qs(urlsplit(url).query)["X-Amz-Expires"]
    return int(value)


def test_explanation_urls_are_presigned_for_at_most_15_minutes(api: LiveApi, owner: Seeded) -> None:
    with api.client(owner.key) as c:
        t0 = dt.datetime.now(dt.UTC)
        r = c.get(f"/v1/jobs/{owner.jobs['succeeded']}/explanation")
    assert r.status_code == 200, r.text
    files = r.json()["files"]
    assert files
    for blob in files.values():
        assert _expires(blob["url"]) == api.settings.presign_ttl_s <= MAX_PRESIGN_SECONDS == 900
        expires_at = dt.datetime.fromisoformat(blob["expires_at"].replace("Z", "+00:00"))
        assert expires_at <= t0 + dt.timedelta(seconds=MAX_PRESIGN_SECONDS + 5)
        got = httpx.get(blob["url"], timeout=30)  # no API key: the signature is the credential
        assert got.status_code == 200 and got.content
    storage = storage_of(api.settings)
    for bad in (0, MAX_PRESIGN_SECONDS + 1, 7 * 24 * 3600):
        with pytest.raises(ValueError):
            storage.presign_get(owner.blob_keys[0], bad)
    with pytest.raises(ValidationError):
        Settings(presign_ttl_s=MAX_PRESIGN_SECONDS + 1)


def test_presigned_urls_expire_on_the_real_s3_server(tight: LiveApi) -> None:
    """Through the API (TTL 3 s): the URL works, then S3 refuses it with 403 once expired."""
    seeded = seed_client(tight, "expiry")
    with tight.client(seeded.key) as c:
        r = c.get(f"/v1/jobs/{seeded.jobs['succeeded']}/explanation")
    issued = time.monotonic()
    urls = [b["url"] for b in r.json()["files"].values()]
    assert all(_expires(u) == TTL for u in urls)
    first = httpx.get(urls[0], timeout=30)
    assert first.status_code == 200, first.text
    assert time.monotonic() - issued < TTL  # the 200 really was inside the window

    def refused() -> bool:
        return httpx.get(urls[0], timeout=30).status_code == 403

    wait_for(refused, timeout=30, interval=0.5, what="the presigned URL to expire")
    assert time.monotonic() - issued >= TTL - 1  # not refused before its time (1 s clock granularity)
    assert all(httpx.get(u, timeout=30).status_code == 403 for u in urls)
    # a URL signed with a tampered expiry is refused at once
    tampered = urls[1].replace(f"X-Amz-Expires={TTL}", "X-Amz-Expires=900")
    assert httpx.get(tampered, timeout=30).status_code == 403


def test_webhook_signature_from_the_outbox_verifies_and_replays_do_not(api: LiveApi, owner: Seeded) -> None:
    s = api.settings
    assert s.database_url and s.webhook_allow_loopback
    job = uuid.UUID(owner.jobs["succeeded"])
    with Receiver() as rx:
        with connect(s.database_url) as conn:
            outbox_add(conn, job, owner.client, rx.url, "job.succeeded", job_event(conn, job))
            secret = webhook_secret(conn, owner.client)
            other_secret = webhook_secret(conn, "intruder") or "not-the-secret"
        assert secret
        db = Database(s.database_url, min_size=1, max_size=2, name="webhook-test")
        db.open()
        dispatcher = WebhookDispatcher(db, s)
        try:
            wait_for(lambda: dispatcher.deliver_due() >= 0 and rx.requests, timeout=30, what="the webhook")
        finally:
            dispatcher.stop()
            db.close()
        (delivery,) = rx.requests
    body: bytes = delivery["body"]
    header = {k.lower(): v for k, v in delivery["headers"].items()}[SIGNATURE_HEADER.lower()]
    t = int(header.split(",")[0].removeprefix("t="))
    assert abs(time.time() - t) < 120
    assert json.loads(body)["job_id"] == str(job)
    assert verify(secret, body, header)  # a genuine delivery passes
    assert not verify(secret, body, header, now=t + 301)  # replayed after the 5 min tolerance
    assert not verify(secret, body, header, now=t - 301)  # a timestamp from the future
    assert verify(secret, body, header, now=t + 299)
    assert not verify(secret, body.replace(b"succeeded", b"failed"), header)  # tampered body
    assert not verify(secret, body + b" ", header)
    assert not verify(other_secret, body, header)  # another client's secret
    old = sign(secret, body, t - 3600)  # a correctly signed, old delivery (a replay) is refused
    assert not verify(secret, body, old)
    forged_t = header.replace(f"t={t}", f"t={t + 60}")  # a fresher timestamp on the old MAC
    assert not verify(secret, body, forged_t)
    for garbage in ("", "t=abc,v1=00", f"t={t}", "v1=" + header.split("v1=")[1], "nonsense"):
        assert not verify(secret, body, garbage)


def test_every_answer_carries_the_request_id(api: LiveApi, tight: LiveApi, owner: Seeded) -> None:
    with api.client(owner.key) as c:
        for path in (
            "/healthz",
            "/openapi.json",
            "/docs",
            "/v1/models",
            f"/viewer/{uuid.uuid4()}",
        ):
            r = c.get(path)
            assert r.status_code == 200, path
            _rid(r)
        ready = c.get("/readyz")  # no worker here: 503 with its health body
        assert ready.status_code == 503 and _rid(ready)
        _error(c.get(f"/v1/jobs/{uuid.uuid4()}"), 404, "job_not_found")
        _error(c.get("/v1/nowhere"), 404, "not_found")
        r405 = c.put("/v1/models")
        _error(r405, 405, "method_not_allowed")
        assert "GET" in r405.headers.get("allow", "")
        _error(c.get("/v1/jobs/not-a-uuid"), 422, "validation_error")
        _error(
            c.post("/v1/jobs", content=b"\xff\xfe{", headers={"content-type": "application/json"}),
            422,
            "validation_error",
        )
        _error(c.get(f"/v1/jobs/{owner.jobs['queued']}/result"), 409, "job_not_finished")
        _error(
            c.post("/v1/studies", content=b"x", headers={"content-type": "text/plain"}),
            415,
            "unsupported_media_type",
        )
        # an incoming X-Request-ID is echoed in the header and the error body
        r = c.get(f"/v1/studies/{uuid.uuid4()}", headers={"X-Request-ID": "laravel-req-42"})
        assert _error(r, 404, "study_not_found")["request_id"] == "laravel-req-42"
        assert c.get("/healthz", headers={"X-Request-ID": "laravel-req-43"}).headers["x-request-id"] == (
            "laravel-req-43"
        )
        # ... unless it is unusable: then a fresh one
        for bad in ("x" * 129, "tab\there"):
            r = c.get(f"/v1/jobs/{uuid.uuid4()}", headers={"X-Request-ID": bad})
            assert _error(r, 404, "job_not_found")["request_id"] not in (bad, "")
        ids = {c.get("/healthz").headers["x-request-id"] for _ in range(5)}
        assert len(ids) == 5  # one per request
    key = new_key(tight.settings, "rid")
    # the only upload slot held by an upload that has sent 10 of its 1000 bytes: the next one is 503
    holder = _open_upload(
        tight,
        {"Authorization": f"Bearer {key}", "Content-Type": "application/zip", "Content-Length": "1000"},
        b"PK\x03\x04" + bytes(6),
    )
    try:
        with tight.client(key) as c:
            busy = c.post("/v1/studies", content=b"PK", headers={"content-type": "application/zip"})
    finally:
        holder.close()
    _error(busy, 503, "server_busy")
    assert int(busy.headers["retry-after"]) >= 1
    with tight.client(key) as c:
        big = b"\0" * (CAP + 2 * (1 << 20))
        _error(
            c.post("/v1/studies", content=big, headers={"content-type": "application/zip"}),
            413,
            "payload_too_large",
        )


def _open_upload(api: LiveApi, headers: dict[str, str], body_prefix: bytes = b"") -> socket.socket:
    """A raw connection that has sent an upload's request line, headers and ``body_prefix`` only."""
    sock = socket.create_connection(("127.0.0.1", api.port), timeout=60)
    lines = [
        "POST /v1/studies HTTP/1.1",
        f"Host: 127.0.0.1:{api.port}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body_prefix)
    return sock


@pytest.mark.parametrize("ctype", ["application/zip", "multipart/form-data; boundary=xyz"])
def test_upload_over_the_cap_is_refused_before_the_body(tight: LiveApi, ctype: str) -> None:
    key = new_key(tight.settings, f"cap-{uuid.uuid4().hex[:6]}")
    storage = storage_of(tight.settings)
    before = list_keys(storage, "studies/")
    declared = CAP + (8 << 20)
    for auth, status, code in (
        (f"Bearer {key}", 413, "payload_too_large"),
        ("Bearer wrong", 401, "unauthorized"),
    ):
        sock = _open_upload(
            tight, {"Authorization": auth, "Content-Type": ctype, "Content-Length": str(declared)}
        )
        try:
            response = http.client.HTTPResponse(sock)
            response.begin()  # the answer arrives although not one byte of the body was sent
            body = json.loads(response.read())
            assert response.status == status and body["error"] == code, (response.status, body)
            assert body["request_id"] == response.getheader("x-request-id")
        finally:
            sock.close()
    assert list_keys(storage, "studies/") == before  # nothing was stored, no multipart upload left
    assert not list(storage.client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads", []))


def _assert_no_phi(text: str, where: str) -> None:
    for token in identifier_tokens():
        assert token.lower() not in text.lower(), f"identifier {token!r} in {where}"


def test_refusals_do_not_echo_identifier_bearing_member_names(api: LiveApi, owner: Seeded) -> None:
    pid, name = PHI_IDENTIFIERS.patient_id, PHI_IDENTIFIERS.patient_name.replace("^", "_")
    hostile = {
        "unsafe path": zip_of([(f"../{name}/{pid}_0001.dcm", b"DICM")]),
        "absolute path": zip_of([(f"/{pid}/{pid}_0001.dcm", b"DICM")]),
        "not a zip": f"{pid} {name}".encode() * 10,
    }
    with api.client(owner.key) as c:
        for what, data in hostile.items():
            r = c.post(
                "/v1/studies",
                files={"file": (f"{pid}_{name}.zip", data, "application/zip")},
                headers={"Idempotency-Key": pid},
            )
            assert 400 <= r.status_code < 500, (what, r.status_code, r.text)
            _assert_no_phi(r.text + json.dumps(dict(r.headers)), f"{what}: {r.text}")


@pytest.mark.slow
def test_phi_study_end_to_end_leaves_no_identifier(
    api: LiveApi, settings: Settings, worker: Any, tmp_path: Path
) -> None:
    """A study full of (fake) identifiers through upload, prediction, explanation and webhook."""
    good = make_study(tmp_path / f"{PHI_IDENTIFIERS.patient_id}.zip", seed=31, variant="phi", label=1)
    few = make_study(tmp_path / "few.zip", seed=32, variant="few_slices", identifiers=PHI_IDENTIFIERS)
    key = new_key(settings, "phi-site")
    seen: list[str] = []
    with Receiver() as rx, api.client(key) as c:
        jobs = []
        for info in (good, few):
            sid = upload(c, info.zip_path.read_bytes())
            r = c.post("/v1/jobs", json={"study_id": sid, "explain": "gradcam", "callback_url": rx.url})
            assert r.status_code == 202, r.text
            jobs.append(r.json()["job_id"])
            seen.append(r.text)
        states = [wait_job(c, j, timeout=600) for j in jobs]
        assert [s["state"] for s in states] == ["succeeded", "failed"], states
        assert states[1]["error"]["code"] == "too_few_slices"
        seen += [json.dumps(s) for s in states]
        for path in ("result", "explanation"):
            r = c.get(f"/v1/jobs/{jobs[0]}/{path}")
            assert r.status_code == 200
            seen.append(r.text)
        for blob in r.json()["files"].values():  # every stored blob: JSON, PNG text chunks, NIfTI header
            data = httpx.get(blob["url"], timeout=60).content
            seen.append((gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data).decode("latin-1"))
        seen.append(c.get(f"/v1/jobs/{jobs[1]}/result").text)  # 409 job_failed body
        seen.append(c.get(f"/v1/jobs/{jobs[1]}/explanation").text)
        wait_for(lambda: len(rx.requests) >= 2, timeout=60, what="both webhooks")
        seen += [r["body"].decode() for r in rx.requests]
    joined = "\n".join(seen)
    assert "probability" in joined and "too_few_slices" in joined and "series" in joined  # real content
    _assert_no_phi(joined, "API answers, blobs or webhooks")
