"""Event webhooks through the real service (PostgreSQL, Redis, S3; loopback receivers).

Jobs move through the same repository calls a worker makes (claim, finish with result and
explanation rows, fail) and through the API (cancel, delete a study); a real dispatcher
delivers the outbox to receivers listening on 127.0.0.1.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import ROOT, LiveApi, Receiver, dispatching, new_key, run_cli, wait_for  # type: ignore[import-not-found]
from seeding import create_job, small_zip, upload  # type: ignore[import-not-found]

from app.config import Settings
from app.db import connect
from app.repository import (
    BlobRef,
    ExplanationRecord,
    claim_attempt,
    mark_failed,
    mark_succeeded,
    webhook_secret,
)
from app.repository.events import DEFAULT_EVENTS, EVENTS
from app.schemas import JobResult
from app.schemas_events import WebhookSettings
from app.webhooks import SIGNATURE_HEADER, WebhookDispatcher, sign, verify


@pytest.fixture(scope="module")
def dispatcher(settings: Settings) -> Iterator[WebhookDispatcher]:
    """The worker's webhook thread, on its own pool."""
    with dispatching(settings, thread=True) as d:
        yield d


def _client(api: LiveApi) -> tuple[str, str]:
    name = f"events-{uuid.uuid4().hex[:8]}"
    return name, new_key(api.settings, name)


def _succeed(api: LiveApi, job_id: str, *, explain: bool) -> None:
    """Claim and finish ``job_id`` as a worker does: result row, explanation row (blobs already stored)."""
    assert api.settings.database_url
    example: dict[str, Any] = JobResult.model_json_schema()["examples"][0]
    with connect(api.settings.database_url) as conn:
        claimed = claim_attempt(conn, uuid.UUID(job_id), "events-worker", 30.0)
        assert claimed is not None
        result = JobResult.model_validate({**example, "job_id": job_id, "attempt": claimed.attempt})
        explanation = ExplanationRecord(
            job_id=claimed.id,
            method="gradcam",
            produced_by=claimed.id,
            attempt=claimed.attempt,
            params={},
            stats={"max": 1.0},
            geometry={"shape_zyx": [4, 8, 8]},
            blobs={"stats": BlobRef(f"jobs/{job_id}/attempt-1/saliency/stats.json", "application/json")},
            model_name=example["model"]["name"],
            model_version=example["model"]["version"],
        )
        assert mark_succeeded(conn, claimed, {"total": 0.5}, result, explanation if explain else None)


def _fail(api: LiveApi, job_id: str) -> None:
    assert api.settings.database_url
    with connect(api.settings.database_url) as conn:
        claimed = claim_attempt(conn, uuid.UUID(job_id), "events-worker", 30.0)
        assert claimed is not None
        assert mark_failed(conn, claimed, {"total": 0.1}, "no_dicom", "no DICOM file in the archive")


def _settled(settings: Settings, client: str) -> bool:
    """Every queued delivery of ``client`` was delivered."""
    assert settings.database_url
    with connect(settings.database_url) as conn:
        row = conn.execute(
            "SELECT count(*) AS n FROM webhook_outbox WHERE client = %s AND delivered_at IS NULL", (client,)
        ).fetchone()
    return row is not None and row["n"] == 0


def _events(rx: Receiver) -> list[str]:
    return [r["headers"]["X-Service4CT-Event"] for r in rx.requests]


def _put(c: httpx.Client, url: str | None, events: list[str] | None) -> dict[str, Any]:
    r = c.put("/v1/webhook", json={"url": url, "events": events})
    assert r.status_code == 200, r.text
    return dict(WebhookSettings.model_validate(r.json()).model_dump(mode="json"))


def test_every_event_reaches_the_default_webhook_signed(api: LiveApi, dispatcher: WebhookDispatcher) -> None:
    name, key = _client(api)
    with Receiver() as rx, api.client(key) as c:
        got = c.get("/v1/webhook").json()
        assert got == {
            "url": None,
            "events": list(DEFAULT_EVENTS),
            "default_events": True,
            "secret_rotation_until": None,
        }
        assert _put(c, rx.url, list(EVENTS)) == {
            "url": rx.url,
            "events": list(EVENTS),
            "default_events": False,
            "secret_rotation_until": None,
        }
        assert c.get("/v1/webhook").json()["events"] == list(EVENTS)
        study = upload(c, small_zip(f"ev-{uuid.uuid4().hex[:6]}"))
        ok, bad, stop = (
            c.post(
                "/v1/jobs", json={"study_id": study, "client_ref": f"ref-{i}", "metadata": {"n": i}}
            ).json()["job_id"]
            for i in range(3)
        )
        _succeed(api, ok, explain=True)
        _fail(api, bad)
        assert c.post(f"/v1/jobs/{stop}/cancel").status_code == 200
        other = upload(c, small_zip(f"ev-del-{uuid.uuid4().hex[:6]}"))
        assert c.delete(f"/v1/studies/{other}").status_code == 204
        wait_for(lambda: len(rx.requests) >= 7 and _settled(api.settings, name), timeout=30, what="7 events")
    time.sleep(0.3)  # nothing more arrives
    assert len(rx.requests) == 7, _events(rx)
    assert api.settings.database_url
    with connect(api.settings.database_url) as conn:
        secret = webhook_secret(conn, name)
    assert secret
    by: dict[tuple[str, str | None], dict[str, Any]] = {}
    for req in rx.requests:
        h = req["headers"]
        payload = httpx.Response(200, content=req["body"]).json()
        assert h["X-Service4CT-Event"] == payload["event"]
        assert verify(
            secret,
            req["body"],
            h[SIGNATURE_HEADER],
            delivery=h["X-Service4CT-Delivery"],
            event=payload["event"],
        )
        by[(payload["event"], payload.get("job_id", payload.get("study_id")))] = payload
    assert sorted(by) == sorted(
        [
            ("job.started", ok),
            ("job.succeeded", ok),
            ("explanation.succeeded", ok),
            ("job.started", bad),
            ("job.failed", bad),
            ("job.cancelled", stop),
            ("study.deleted", other),
        ]
    )
    started = by[("job.started", ok)]
    assert started["state"] == "running" and started["attempt"] == 1 and started["client_ref"] == "ref-0"
    succeeded = by[("job.succeeded", ok)]
    assert succeeded["state"] == "succeeded" and succeeded["label"] in ("normal", "pathology")
    assert succeeded["metadata"] == {"n": 0} and succeeded["result_url"] == f"/v1/jobs/{ok}/result"
    explained = by[("explanation.succeeded", ok)]
    assert explained["method"] == "gradcam" and explained["produced_by"] == ok
    assert explained["explanation_url"] == f"/v1/jobs/{ok}/explanation" and explained["client_ref"] == "ref-0"
    failed = by[("job.failed", bad)]
    assert failed["error"] == {"code": "no_dicom", "detail": "no DICOM file in the archive"}
    assert failed["client_ref"] == "ref-1"
    assert by[("job.cancelled", stop)]["state"] == "cancelled"
    deleted = by[("study.deleted", other)]
    assert set(deleted) == {"event", "study_id", "sha256", "client_ref", "metadata", "deleted_at"}
    assert len(deleted["sha256"]) == 64


def test_selection_filters_and_a_jobs_callback_url_wins(api: LiveApi, dispatcher: WebhookDispatcher) -> None:
    name, key = _client(api)
    with Receiver() as default, Receiver() as own, api.client(key) as c:
        _put(c, default.url, ["job.succeeded", "study.deleted"])
        study = upload(c, small_zip(f"sel-{uuid.uuid4().hex[:6]}"))
        plain = create_job(c, study)
        r = c.post("/v1/jobs", json={"study_id": study, "callback_url": own.url})
        assert r.status_code == 202, r.text
        routed = r.json()["job_id"]
        failing = create_job(c, study)
        for job in (plain, routed):
            _succeed(api, job, explain=True)  # no job.started nor explanation.succeeded: not selected
        _fail(api, failing)  # job.failed is not selected
        assert c.delete(f"/v1/studies/{study}").status_code == 204
        wait_for(lambda: len(default.requests) >= 2 and len(own.requests) >= 1, timeout=30, what="deliveries")
        wait_for(lambda: _settled(api.settings, name), timeout=30, what="the outbox delivered")
    assert sorted(_events(default)) == ["job.succeeded", "study.deleted"]
    assert default.payloads()[_events(default).index("job.succeeded")]["job_id"] == plain
    assert _events(own) == ["job.succeeded"] and own.payloads()[0]["job_id"] == routed
    assert own.requests[0]["path"] == "/hook"


def test_webhook_settings_are_validated_and_reset(api: LiveApi) -> None:
    _, key = _client(api)
    with api.client(key) as c:
        for url in ("http://169.254.169.254/latest/meta-data/", "ftp://127.0.0.1/hook", "http://10.0.0.7/"):
            r = c.put("/v1/webhook", json={"url": url, "events": ["job.failed"]})
            assert r.status_code == 422 and r.json()["error"] in (
                "callback_url_invalid",
                "validation_error",
            ), url
        assert c.put("/v1/webhook", json={"url": None, "events": ["job.exploded"]}).json()["error"] == (
            "validation_error"
        )
        assert c.put("/v1/webhook", json={"url": None, "extra": 1}).status_code == 422
        assert c.get("/v1/webhook").json()["default_events"] is True  # nothing was stored
        assert _put(c, "http://127.0.0.1:9/hook", ["job.failed", "job.started", "job.failed"])["events"] == [
            "job.started",
            "job.failed",
        ]
        back = _put(c, None, None)
        assert back["url"] is None and back["default_events"] is True
        assert httpx.get(f"{api.base}/v1/webhook").status_code == 401


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(
        settings, "client", *args, env={"S4CT_WEBHOOK_ALLOW_LOOPBACK": "true", "PYTHONPATH": str(ROOT)}
    )


def test_cli_webhook_and_secret_rotation_sign_with_both_secrets(
    api: LiveApi, dispatcher: WebhookDispatcher
) -> None:
    name, key = _client(api)
    settings = api.settings
    assert settings.database_url
    with connect(settings.database_url) as conn:
        old = webhook_secret(conn, name)
    assert old
    with Receiver() as rx, api.client(key) as c:
        r = _cli(settings, "webhook", name, "--url", rx.url, "--events", "job.succeeded,job.cancelled")
        assert r.returncode == 0, r.stderr
        assert f"url: {rx.url}" in r.stdout and "events: job.succeeded,job.cancelled" in r.stdout
        bad = _cli(settings, "webhook", name, "--url", "http://169.254.169.254/", "--events", "job.failed")
        assert bad.returncode == 2 and "link-local" in bad.stderr, bad.stderr
        unknown = _cli(settings, "webhook", name, "--events", "job.exploded")
        assert unknown.returncode == 2 and "unknown events ['job.exploded']" in unknown.stderr
        assert _cli(settings, "webhook", "no-such-client").returncode == 2
        assert c.get("/v1/webhook").json()["events"] == ["job.succeeded", "job.cancelled"]  # unchanged

        rotated = _cli(settings, "rotate-secret", name, "--overlap-hours", "1")
        assert rotated.returncode == 0, rotated.stderr
        new = rotated.stdout.split("new webhook secret: ", 1)[1].split()[0]
        assert len(new) == 64 and new != old
        assert c.get("/v1/webhook").json()["secret_rotation_until"] is not None
        study = upload(c, small_zip(f"rot-{uuid.uuid4().hex[:6]}"))
        during = create_job(c, study)
        assert c.post(f"/v1/jobs/{during}/cancel").status_code == 200
        wait_for(lambda: len(rx.requests) >= 1, timeout=30, what="a delivery during the overlap")

        finished = _cli(settings, "rotate-secret", name, "--finish")
        assert finished.returncode == 0, finished.stderr
        assert c.get("/v1/webhook").json()["secret_rotation_until"] is None
        after = create_job(c, study)
        assert c.post(f"/v1/jobs/{after}/cancel").status_code == 200
        wait_for(lambda: len(rx.requests) >= 2, timeout=30, what="a delivery after the rotation")

    def checks(req: dict[str, Any]) -> tuple[bool, bool]:
        h = req["headers"]
        args = (req["body"], h[SIGNATURE_HEADER])
        kw = {"delivery": h["X-Service4CT-Delivery"], "event": h["X-Service4CT-Event"]}
        return verify(old, *args, **kw), verify(new, *args, **kw)

    first, second = rx.requests
    assert checks(first) == (True, True)  # either secret verifies during the overlap
    h = first["headers"]
    t = int(h[SIGNATURE_HEADER].split(",")[0].removeprefix("t="))
    delivery, event = h["X-Service4CT-Delivery"], h["X-Service4CT-Event"]
    # the documented format: t, then v1 and v2 of the new secret, then of the previous one
    assert h[SIGNATURE_HEADER] == sign([new, old], first["body"], t, delivery=delivery, event=event)
    assert checks(second) == (False, True)  # only the new one after --finish
    assert second["headers"][SIGNATURE_HEADER].count("v2=") == 1
