"""The HTTP edge against a real uvicorn (app/api/edge.py, app/api/server.py), with raw sockets.

The API of this module has short limits (1 s header deadline and body idle timeout, a 4 KiB
JSON cap, a 1 MiB upload cap, two upload slots), so that every cut-off happens in about a
second:

- an unauthenticated request declaring a 64 MiB JSON body gets 401 at once, with a few bytes
  sent, and the connection is closed (the body is never read);
- JSON bodies over the cap are 413 (declared, or chunked); too many header fields 431;
  a header block over ``max_header_bytes`` 400;
- a client that trickles its headers, or sends none, gets 408 and is disconnected; so does
  one whose body stalls or trickles (a JSON body, an upload: aborted, its slot freed);
- one client holds at most its share of the upload slots while another client uploads;
- multipart form fields and chunked bodies count against the upload cap;
- beyond ``limit_concurrency`` (connections or requests in progress) a request gets 503
  ``overloaded`` in the JSON error format, with ``Retry-After``;
- unknown keys are looked up once (negative cache), malformed ones never; a revoked key
  stops within 1 s (the revocation is broadcast through Redis).
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import LiveApi, list_keys, new_key, storage_of, wait_for  # type: ignore[import-not-found]

from app.api.deps import Services
from app.api.keys import broadcast_revocation
from app.db import connect
from app.repository import create_api_key, revoke_api_key_hash

MiB = 1 << 20
CAP = 1 * MiB
JSON_CAP = 4096


@pytest.fixture(scope="module")
def edge(make_settings: Any) -> Iterator[LiveApi]:
    settings = make_settings(
        header_timeout_s=1.0,
        body_idle_timeout_s=1.0,
        body_min_bytes_per_s=1024,
        max_json_bytes=JSON_CAP,
        max_upload_bytes=CAP,
        max_concurrent_uploads=2,
        upload_wait_s=1.0,
        max_header_count=30,
        max_header_bytes=8192,
    )
    with LiveApi(settings) as live:
        yield live


@pytest.fixture(scope="module")
def key(edge: LiveApi) -> str:
    return new_key(edge.settings, "edge")


def _connect(api: LiveApi) -> socket.socket:
    return socket.create_connection(("127.0.0.1", api.port), timeout=15)


def _request(api: LiveApi, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: 127.0.0.1:{api.port}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _answer(sock: socket.socket) -> tuple[int, dict[str, Any], http.client.HTTPResponse]:
    response = http.client.HTTPResponse(sock)
    response.begin()
    body = json.loads(response.read())
    return response.status, body, response


def _trickle(sock: socket.socket, pieces: Iterator[bytes], until: float) -> None:
    """Send one piece every 0.2 s until ``until`` (monotonic) or the server drops the connection."""
    for piece in pieces:
        try:
            sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            return
        time.sleep(0.2)
        if time.monotonic() > until:
            return


def _closed(sock: socket.socket, within: float = 5.0) -> bool:
    """The server closed the connection (EOF or reset) within ``within`` seconds."""
    sock.settimeout(within)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_an_unauthenticated_64_mib_json_body_is_refused_unread(edge: LiveApi) -> None:
    paths = ["/v1/jobs", f"/v1/studies/{uuid.uuid4()}/predict", f"/v1/jobs/{uuid.uuid4()}/explain"]
    for path, auth in [(p, a) for p in paths for a in ({}, {"Authorization": "Bearer s4ct_" + "x" * 43})]:
        headers = {"Content-Type": "application/json", "Content-Length": str(64 * MiB), **auth}
        with _connect(edge) as sock:
            t0 = time.monotonic()
            sock.sendall(_request(edge, "POST", path, headers, b'{"study_id": "'))
            status, body, response = _answer(sock)
            assert (status, body["error"]) == (401, "unauthorized"), (path, status, body)
            assert time.monotonic() - t0 < 2.0  # at once: not after a body timeout
            assert response.getheader("connection") == "close"
            assert _closed(sock)  # the 64 MiB are never read: the connection is dropped


def test_json_bodies_over_the_cap_are_413(edge: LiveApi, key: str) -> None:
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    with _connect(edge) as sock:  # declared: refused before the body
        sock.sendall(_request(edge, "POST", "/v1/jobs", {**auth, "Content-Length": str(JSON_CAP + 1)}))
        status, body, _ = _answer(sock)
        assert (status, body["error"]) == (413, "payload_too_large")
        assert _closed(sock)

    def chunks() -> Iterator[bytes]:  # chunked: counted as it arrives
        yield b'{"study_id": "'
        for _ in range(8):
            yield b"x" * 1024

    with edge.client(key) as c:
        r = c.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
        assert (r.status_code, r.json()["error"]) == (413, "payload_too_large")
        # under the cap the route sees the whole body (replayed) and validates it
        r = c.post("/v1/jobs", json={"study_id": str(uuid.uuid4()), "explain": "none"})
        assert (r.status_code, r.json()["error"]) == (404, "study_not_found")


def test_too_many_or_too_large_headers_are_refused(edge: LiveApi, key: str) -> None:
    with edge.client(key) as c:
        many = {f"X-Pad-{i}": "1" for i in range(40)}
        r = c.get("/v1/models", headers=many)
        assert (r.status_code, r.json()["error"]) == (431, "headers_too_large")
        assert c.get("/v1/models", headers={f"X-Pad-{i}": "1" for i in range(10)}).status_code == 200
        r = c.get("/healthz", headers={"X-Big": "y" * 9000})  # over max_header_bytes (8 KiB)
        assert (r.status_code, r.json()["error"]) == (431, "headers_too_large")
    with _connect(edge) as sock:  # a header block still arriving past the limit: the parser refuses it
        sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"y" * 9000)
        assert sock.recv(64).startswith(b"HTTP/1.1 400")
        assert _closed(sock)


def test_slow_and_silent_header_senders_are_cut_off(edge: LiveApi) -> None:
    silent = [_connect(edge) for _ in range(20)]  # connect and send nothing
    try:
        with _connect(edge) as sock:
            t0 = time.monotonic()
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            _trickle(sock, (f"X-Slow-{i}: a\r\n".encode() for i in range(20)), t0 + 1.5)  # never completes
            status, body, _ = _answer(sock)
            assert (status, body["error"]) == (408, "request_timeout"), body
            assert time.monotonic() - t0 < 3.0
            assert _closed(sock)
        for s in silent:
            assert _closed(s, within=3.0)
    finally:
        for s in silent:
            s.close()
    with httpx.Client(base_url=edge.base) as c:  # a kept-alive client is not affected
        for _ in range(3):
            assert c.get("/healthz").status_code == 200
            time.sleep(0.5)


def test_a_stalled_json_body_is_cut_off(edge: LiveApi, key: str) -> None:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", "Content-Length": "200"}
    with _connect(edge) as sock:
        t0 = time.monotonic()
        sock.sendall(_request(edge, "POST", "/v1/jobs", headers, b'{"study_id": '))
        status, body, _ = _answer(sock)
        assert (status, body["error"]) == (408, "request_timeout")
        assert 0.9 < time.monotonic() - t0 < 3.0
        assert _closed(sock)


def _services(api: LiveApi) -> Services:
    services: Services = api.app.state.services
    return services


def test_a_trickled_upload_is_cut_off_aborted_and_frees_its_slot(edge: LiveApi, key: str) -> None:
    storage = storage_of(edge.settings)
    before = list_keys(storage, "studies/")
    headers = {
        "Authorization": f"Bearer {key}",
        "Content-Type": "application/zip",
        "Content-Length": "100000",
    }
    with _connect(edge) as sock:
        t0 = time.monotonic()
        sock.sendall(_request(edge, "POST", "/v1/studies", headers, b"PK\x03\x04"))
        wait_for(lambda: _services(edge).uploads.in_use == 1, timeout=10, what="the upload's slot")
        _trickle(sock, (b"\0" for _ in range(15)), t0 + 2.0)  # 5 bytes/s: far below 1 KiB/s
        status, body, _ = _answer(sock)
        assert (status, body["error"]) == (408, "request_timeout"), body
        assert time.monotonic() - t0 < 4.0
        assert _closed(sock)
    wait_for(lambda: _services(edge).uploads.in_use == 0, timeout=10, what="the slot to be freed")
    assert list_keys(storage, "studies/") == before
    assert not storage.client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads")


class _HeldUpload:
    """An upload that holds a slot: a thread keeps sending 16 KiB every 0.1 s until closed."""

    def __init__(self, api: LiveApi, key: str) -> None:
        headers = {
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/zip",
            "Content-Length": str(CAP),
        }
        self.sock = _connect(api)
        self.sock.sendall(_request(api, "POST", "/v1/studies", headers, b"PK\x03\x04"))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._feed, daemon=True)
        self.thread.start()

    def _feed(self) -> None:
        for _ in range(50):  # 800 KiB at most: under the 1 MiB it declared
            if self.stop.wait(0.1):
                return
            try:
                self.sock.sendall(bytes(16384))
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


def test_one_client_cannot_take_every_upload_slot(edge: LiveApi, key: str, study_zip: bytes) -> None:
    gate = _services(edge).uploads
    assert gate.limit == 2 and gate.per_client == 1
    other = new_key(edge.settings, "edge-other")
    holder = _HeldUpload(edge, key)
    try:
        wait_for(lambda: gate.in_use == 1, timeout=10, what="the first upload's slot")
        with edge.client(key) as c:  # the same client's second upload waits for its own share: 503
            busy = c.post("/v1/studies", content=study_zip, headers={"content-type": "application/zip"})
        assert (busy.status_code, busy.json()["error"]) == (503, "server_busy"), busy.text
        assert "this client" in busy.json()["detail"] and int(busy.headers["retry-after"]) >= 1
        with edge.client(other) as c:  # while another client uploads at once
            r = c.post("/v1/studies", content=study_zip, headers={"content-type": "application/zip"})
        assert r.status_code == 201, r.text
        assert gate.in_use == 1  # the holder still streams
    finally:
        holder.close()
    wait_for(lambda: gate.in_use == 0, timeout=10, what="the slots to be freed")


@pytest.fixture(scope="module")
def study_zip() -> bytes:
    from zipcraft import zip_of  # type: ignore[import-not-found]

    data: bytes = zip_of([("a.dcm", b"DICM" * 10)])
    return data


def test_multipart_fields_and_chunked_bodies_count_against_the_upload_cap(edge: LiveApi, key: str) -> None:
    boundary = "s4ctedge"
    field = f'--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\n'.encode()
    file_head = (
        f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="s.zip"\r\n'
        "Content-Type: application/zip\r\n\r\n"
    ).encode()
    end = f"\r\n--{boundary}--\r\n".encode()

    def form() -> Iterator[bytes]:  # chunked (no Content-Length): a 3 MiB field, then a tiny file
        yield field
        for _ in range(3):
            yield b"n" * MiB
        yield file_head + b"PK\x05\x06" + bytes(18) + end

    def raw() -> Iterator[bytes]:
        for _ in range(3):
            yield bytes(MiB)

    with edge.client(key) as c:
        for body, ctype in (
            (form(), f"multipart/form-data; boundary={boundary}"),
            (raw(), "application/zip"),
        ):
            r = c.post("/v1/studies", content=body, headers={"content-type": ctype})
            assert (r.status_code, r.json()["error"]) == (413, "payload_too_large"), r.text


def _assert_overloaded(sock: socket.socket) -> None:
    status, body, response = _answer(sock)
    assert (status, body["error"]) == (503, "overloaded"), body
    assert response.getheader("retry-after") == "1"
    assert response.getheader("content-type") == "application/json"
    assert body["request_id"] and response.getheader("x-request-id") == body["request_id"]
    assert _closed(sock)


def test_limit_concurrency_answers_json_503_beyond_it(make_settings: Any) -> None:
    settings = make_settings(limit_concurrency=2, header_timeout_s=30.0, body_idle_timeout_s=30.0)
    with LiveApi(settings) as live:
        key = new_key(live.settings, "concurrency")
        slow_head = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        slow_head["Content-Length"] = "64"
        slow = [_connect(live) for _ in range(2)]  # two requests in progress: their bodies never finish
        try:
            for sock in slow:
                sock.sendall(_request(live, "POST", "/v1/jobs", slow_head, b'{"study_id": "'))
            wait_for(lambda: len(live.server.server_state.tasks) >= 2, timeout=10, what="slow requests")
            with _connect(live) as sock:  # a third request: over the limit, answered in our JSON format
                sock.sendall(_request(live, "GET", "/healthz", {}))
                _assert_overloaded(sock)
        finally:
            for s in slow:
                s.close()
        wait_for(lambda: httpx.get(f"{live.base}/healthz").status_code == 200, timeout=10, what="recovery")
        # idle connections count too: two open, a third is refused
        idle = [_connect(live) for _ in range(2)]
        try:
            wait_for(lambda: len(live.server.server_state.connections) >= 2, timeout=10, what="connections")
            with _connect(live) as sock:
                sock.sendall(_request(live, "GET", "/healthz", {}))
                _assert_overloaded(sock)
            r = httpx.get(f"{live.base}/healthz")  # within the limit once one of them leaves
            assert r.status_code == 503
            idle.pop().close()
            wait_for(lambda: httpx.get(f"{live.base}/healthz").status_code == 200, timeout=10, what="freed")
        finally:
            for s in idle:
                s.close()


def test_unknown_keys_are_looked_up_once_and_malformed_ones_never(edge: LiveApi) -> None:
    keys = _services(edge).keys
    unknown = "s4ct_" + "u" * 43
    with edge.client() as c:
        before = keys.lookups
        for _ in range(20):
            r = c.get("/v1/models", headers={"Authorization": f"Bearer {unknown}"})
            assert r.status_code == 401
        assert keys.lookups == before + 1  # the miss is cached
        for bad in ("s4ct_short", "x" * 48, "s4ct_" + "!" * 43):
            assert c.get("/v1/models", headers={"Authorization": f"Bearer {bad}"}).status_code == 401
        assert keys.lookups == before + 1  # not even looked up


def test_a_revoked_key_stops_within_one_second(edge: LiveApi) -> None:
    s = edge.settings
    assert s.database_url
    with connect(s.database_url) as conn:
        key_id, key = create_api_key(conn, "revocable", "test")
    services = _services(edge)
    wait_for(services.revocations.subscribed.is_set, timeout=10, what="the revocation subscription")
    with edge.client(key) as c:
        assert c.get("/v1/models").status_code == 200  # cached as valid now (TTL 10 s)
        with connect(s.database_url) as conn:
            key_hash = revoke_api_key_hash(conn, key_id)
        assert key_hash
        revoked_at = time.monotonic()
        assert broadcast_revocation(services.queue.r, key_hash) >= 1  # what `apikey revoke` does
        wait_for(lambda: c.get("/v1/models").status_code == 401, timeout=5, interval=0.05, what="revocation")
        assert time.monotonic() - revoked_at < 1.0
