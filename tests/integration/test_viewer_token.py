"""Viewer tokens (``POST /v1/jobs/{id}/viewer-token``) and the self-hosted API docs, on a live API.

- a token reads its job's status, result and explanation (an explain job's token its
  parent's result too) and nothing else: another job, the studies, the models, any POST
  (including minting tokens) are refused with 403 ``forbidden``;
- it lives ``viewer_token_ttl_s`` (≤ 15 min, in Redis) and stops within 1 s when the key
  that issued it is revoked;
- another client cannot mint a token for a job it does not own (404);
- ``/docs`` and ``/redoc`` load their scripts from the API (no other origin), and
  ``docs_enabled=false`` removes them with ``/openapi.json``.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import LiveApi, new_key, wait_for  # type: ignore[import-not-found]
from pydantic import ValidationError
from seeding import Seeded, seed_client  # type: ignore[import-not-found]

from app.api.keys import broadcast_revocation
from app.config import Settings
from app.db import connect
from app.repository import create_api_key, get_study, hash_api_key, insert_job, revoke_api_key_hash

TTL = 120


@pytest.fixture(scope="module")
def live(make_settings: Any) -> Iterator[LiveApi]:
    with LiveApi(make_settings(viewer_token_ttl_s=TTL)) as api:
        yield api


@pytest.fixture(scope="module")
def owner(live: LiveApi) -> Seeded:
    return seed_client(live, "viewer-owner")


def _token(api: LiveApi, key: str, job: str) -> dict[str, Any]:
    with api.client(key) as c:
        r = c.post(f"/v1/jobs/{job}/viewer-token")
    assert r.status_code == 201, r.text
    assert r.headers["cache-control"] == "no-store"
    body: dict[str, Any] = r.json()
    return body


def test_a_viewer_token_reads_its_job_and_nothing_else(live: LiveApi, owner: Seeded) -> None:
    job = owner.jobs["succeeded"]
    issued = _token(live, owner.key, job)
    token = issued["token"]
    assert token.startswith("s4cv_") and issued["jobs"] == [job] and issued["expires_in"] == TTL
    assert issued["viewer_url"] == f"/viewer/{job}" and token not in issued["viewer_url"]
    redis = live.app.state.services.queue.r
    assert 0 < redis.ttl(f"s4ct:viewer-token:{hash_api_key(token)}") <= TTL
    with live.client(token) as c:
        for path in (f"/v1/jobs/{job}", f"/v1/jobs/{job}/result", f"/v1/jobs/{job}/explanation"):
            assert c.get(path).status_code == 200, path
        other = owner.jobs["queued"]
        refused = [
            ("GET", f"/v1/jobs/{other}"),
            ("GET", f"/v1/jobs/{other}/result"),
            ("GET", f"/v1/studies/{owner.study_id}"),
            ("GET", "/v1/models"),
            ("DELETE", f"/v1/studies/{owner.study_id}"),
            ("POST", f"/v1/jobs/{job}/explain"),
            ("POST", f"/v1/jobs/{job}/viewer-token"),
            ("POST", "/v1/jobs"),
            ("POST", "/v1/studies"),
        ]
        for method, path in refused:
            r = c.request(method, path, json={"method": "saliency"} if method == "POST" else None)
            assert (r.status_code, r.json()["error"]) == (403, "forbidden"), (method, path, r.text)
    with live.client(owner.key) as c:  # the study is still there: the DELETE did nothing
        assert c.get(f"/v1/studies/{owner.study_id}").status_code == 200
    with live.client("s4cv_" + "x" * 43) as c:  # an unknown token
        assert (c.get(f"/v1/jobs/{job}").json()["error"]) == "unauthorized"


def test_an_explain_jobs_token_reads_its_parents_result(live: LiveApi, owner: Seeded) -> None:
    assert live.settings.database_url
    parent = owner.jobs["succeeded"]
    with connect(live.settings.database_url) as conn:
        study = get_study(conn, owner.client, uuid.UUID(owner.study_id))
        assert study is not None
        child = insert_job(
            conn,
            client=owner.client,
            study=study,
            model=live.app.state.services.manifest.default,
            series_uid=None,
            explain="saliency",
            explain_params={},
            callback_url=None,
            max_attempts=3,
            kind="explain",
            parent_job_id=uuid.UUID(parent),
        )
    issued = _token(live, owner.key, str(child.id))
    assert sorted(issued["jobs"]) == sorted([str(child.id), parent])
    with live.client(issued["token"]) as c:
        assert c.get(f"/v1/jobs/{child.id}").status_code == 200
        assert c.get(f"/v1/jobs/{parent}/result").status_code == 200


def test_only_the_owner_mints_tokens(live: LiveApi, owner: Seeded) -> None:
    intruder = new_key(live.settings, "viewer-intruder")
    with live.client(intruder) as c:
        r = c.post(f"/v1/jobs/{owner.jobs['succeeded']}/viewer-token")
        assert (r.status_code, r.json()["error"]) == (404, "job_not_found")
        r = c.post(f"/v1/jobs/{uuid.uuid4()}/viewer-token")
        assert (r.status_code, r.json()["error"]) == (404, "job_not_found")
    with pytest.raises(ValidationError):
        Settings(viewer_token_ttl_s=901)  # never more than 15 minutes


def test_a_token_stops_within_one_second_when_its_key_is_revoked(live: LiveApi, owner: Seeded) -> None:
    assert live.settings.database_url
    with connect(live.settings.database_url) as conn:
        key_id, key = create_api_key(conn, owner.client, "viewer-revoke")
    job = owner.jobs["succeeded"]
    token = _token(live, key, job)["token"]
    services = live.app.state.services
    wait_for(services.revocations.subscribed.is_set, timeout=10, what="the revocation subscription")
    with live.client(token) as c:
        assert c.get(f"/v1/jobs/{job}").status_code == 200
        with connect(live.settings.database_url) as conn:
            key_hash = revoke_api_key_hash(conn, key_id)
        assert key_hash
        t0 = time.monotonic()
        broadcast_revocation(services.queue.r, key_hash)
        wait_for(lambda: c.get(f"/v1/jobs/{job}").status_code == 401, timeout=5, interval=0.05, what="stop")
        assert time.monotonic() - t0 < 1.0


def test_docs_load_their_assets_from_the_api(live: LiveApi) -> None:
    with live.client() as c:
        for page in ("/docs", "/redoc"):
            html = c.get(page)
            assert html.status_code == 200
            urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html.text)
            scripts = [u for u in urls if u.endswith((".js", ".css"))]
            assert scripts and all(u.startswith("/docs/assets/") for u in scripts), urls
            assert "cdn" not in html.text.lower() and "fonts.googleapis" not in html.text
            for url in scripts:
                r = c.get(url)
                assert r.status_code == 200 and len(r.content) > 10_000, url
                assert r.headers["content-encoding"] == "gzip"  # stored compressed, sent as stored
        plain = c.get("/docs/assets/swagger-ui.css", headers={"Accept-Encoding": "identity"})
        assert "content-encoding" not in plain.headers and b".swagger-ui" in plain.content
        assert c.get("/docs/assets/README.md").status_code == 404  # a fixed list of assets only


def test_docs_can_be_turned_off(make_settings: Any) -> None:
    with LiveApi(make_settings(docs_enabled=False)) as api, httpx.Client(base_url=api.base) as c:
        for path in ("/docs", "/redoc", "/openapi.json", "/docs/assets/swagger-ui-bundle.js"):
            assert c.get(path).status_code == 404, path
        assert c.get("/healthz").status_code == 200
