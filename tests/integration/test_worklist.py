"""The worklist API against real PostgreSQL, Redis and S3 (no worker): listing and paging,
client references and metadata, cancelling queued jobs, the priority order of the queue."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import httpx
import orjson
import pytest
from conftest import LiveApi, new_key  # type: ignore[import-not-found]
from seeding import create_job, finish_failed, finish_succeeded, small_zip, upload  # type: ignore[import-not-found]

from app.config import Settings
from app.db import connect
from app.repository import job_event
from app.schemas import JobStatus, StudyOut
from app.schemas_worklist import JobPage, StudyPage


@pytest.fixture(scope="module")
def key(settings: Settings) -> str:
    return new_key(settings, "worklist-a")


def _other_client(settings: Settings) -> str:
    """A key of another client, who must see none of worklist-a's rows."""
    return new_key(settings, "worklist-b")


def _pages(c: httpx.Client, path: str, params: dict[str, Any], between: Any = None) -> list[dict[str, Any]]:
    """Every item of a listing, page by page; ``between()`` runs after each page."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        r = c.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items
        if between is not None:
            between()


def _ids(items: list[dict[str, Any]], key: str = "job_id") -> list[str]:
    return [i[key] for i in items]


def test_job_pages_are_stable_while_jobs_are_created(api: LiveApi, settings: Settings, key: str) -> None:
    with api.client(key) as c, api.client(_other_client(settings)) as other:
        study = upload(c, small_zip(f"page-{uuid.uuid4().hex[:6]}"))
        before = [create_job(c, study, "none") for _ in range(7)]
        added: list[str] = []
        seen = _pages(
            c, "/v1/jobs", {"limit": 3, "study_id": study}, lambda: added.append(create_job(c, study))
        )
        JobPage.model_validate({"items": seen, "next_cursor": None})
        # every job that existed when paging began, once, newest first; none created meanwhile
        assert _ids(seen) == list(reversed(before))
        assert len(added) == 2
        # a new first page starts with them
        first = c.get("/v1/jobs", params={"limit": 2, "study_id": study}).json()
        assert _ids(first["items"]) == list(reversed(added)) and first["next_cursor"]
        # all at once (limit up to 200), and the other client sees none of them
        everything = c.get("/v1/jobs", params={"limit": 200, "study_id": study}).json()
        assert len(everything["items"]) == 9 and everything["next_cursor"] is None
        assert other.get("/v1/jobs", params={"study_id": study}).json() == {"items": [], "next_cursor": None}
        assert other.get("/v1/jobs").json()["items"] == []


def test_job_filters(api: LiveApi, key: str) -> None:
    with api.client(key) as c:
        study = upload(c, small_zip(f"filters-{uuid.uuid4().hex[:6]}"))
        t0 = dt.datetime.now(dt.UTC)
        queued = create_job(c, study)
        done = create_job(c, study)
        failed = create_job(c, study)
        urgent = c.post("/v1/jobs", json={"study_id": study, "priority": "urgent"}).json()["job_id"]
        finish_succeeded(api, done)  # its result's label: "pathology"
        finish_failed(api, failed)

        def ids(**params: Any) -> set[str]:
            r = c.get("/v1/jobs", params={"study_id": study, **params})
            assert r.status_code == 200, r.text
            return set(_ids(r.json()["items"]))

        assert ids() == {queued, done, failed, urgent}
        assert ids(state="queued") == {queued, urgent}
        assert ids(state=["succeeded", "failed"]) == {done, failed}
        assert ids(label="pathology") == {done} and ids(label="normal") == set()
        assert ids(priority="urgent") == {urgent}
        assert ids(created_after=t0.isoformat()) == {queued, done, failed, urgent}
        assert ids(created_before=t0.isoformat()) == set()
        # a time without an offset is UTC
        assert ids(created_after=t0.replace(tzinfo=None).isoformat()) == {queued, done, failed, urgent}
        item = next(
            i for i in c.get("/v1/jobs", params={"study_id": study}).json()["items"] if i["job_id"] == done
        )
        assert item["label"] == "pathology" and item["state"] == "succeeded"
        JobStatus.model_validate(item)


def test_listing_refuses_bad_paging(api: LiveApi, key: str) -> None:
    with api.client(key) as c:
        for params in (
            {"limit": 201},
            {"limit": 0},
            {"cursor": "nonsense"},
            {"state": "sleeping"},
            {"client_ref": "nul\u0000"},
            {"created_after": "yesterday"},
        ):
            r = c.get("/v1/jobs", params=params)
            assert r.status_code == 422 and r.json()["error"] == "validation_error", (params, r.text)
        upload(c, small_zip(f"cursor-{uuid.uuid4().hex[:6]}"))
        upload(c, small_zip(f"cursor-{uuid.uuid4().hex[:6]}"))
        studies = c.get("/v1/studies", params={"limit": 1}).json()
        assert studies["next_cursor"]
        # a cursor of one list is refused by the other
        r = c.get("/v1/jobs", params={"cursor": studies["next_cursor"]})
        assert r.status_code == 422 and "cursor" in r.json()["detail"]
        assert c.get("/v1/jobs").status_code == 200
    with api.client() as anonymous:
        assert anonymous.get("/v1/jobs").json()["error"] == "unauthorized"
        assert anonymous.get("/v1/studies").json()["error"] == "unauthorized"


def test_study_pages_references_and_metadata(api: LiveApi, settings: Settings, key: str) -> None:
    ref = f"worklist-{uuid.uuid4().hex[:8]}"
    meta = {"row": 4711, "ward": "ER", "tags": ["a", "b"], "nested": {"ok": True, "x": None}}
    headers = {
        "content-type": "application/zip",
        "X-Client-Ref": ref,
        "X-Client-Metadata": orjson.dumps(meta),
    }
    with api.client(key) as c, api.client(_other_client(settings)) as other:
        r = c.post("/v1/studies", content=small_zip(ref), headers=headers)
        assert r.status_code == 201, r.text
        study = StudyOut.model_validate(r.json())
        assert study.client_ref == ref and study.metadata == meta
        got = c.get(f"/v1/studies/{study.study_id}").json()
        assert got["client_ref"] == ref and got["metadata"] == meta
        # the same bytes again: the existing study, with its own reference
        again = c.post("/v1/studies", content=small_zip(ref), headers={"content-type": "application/zip"})
        assert again.status_code == 200 and again.json()["client_ref"] == ref
        # filtered by reference; paged; own rows only
        page = StudyPage.model_validate(c.get("/v1/studies", params={"client_ref": ref}).json())
        assert [s.study_id for s in page.items] == [study.study_id] and page.next_cursor is None
        assert other.get("/v1/studies", params={"client_ref": ref}).json()["items"] == []
        more = [upload(c, small_zip(f"{ref}-{i}")) for i in range(3)]
        listed = _pages(c, "/v1/studies", {"limit": 2}, lambda: upload(c, small_zip(uuid.uuid4().hex)))
        assert _ids(listed, "study_id")[:4] == [*reversed(more), str(study.study_id)]
        assert len(set(_ids(listed, "study_id"))) == len(listed)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Client-Ref", "r" * 129),
        ("X-Client-Ref", ""),
        ("X-Client-Metadata", "[1, 2]"),
        ("X-Client-Metadata", "{broken"),
        ("X-Client-Metadata", orjson.dumps({"blob": "x" * 4100}).decode()),
    ],
)
def test_bad_upload_references_are_refused_before_the_body(
    api: LiveApi, key: str, name: str, value: str
) -> None:
    with api.client(key) as c:
        r = c.post(
            "/v1/studies",
            content=small_zip("bad-ref"),
            headers={"content-type": "application/zip", name: value},
        )
        assert r.status_code == 422 and r.json()["error"] == "validation_error", r.text
        assert c.get("/v1/studies", params={"client_ref": "r" * 128}).json()["items"] == []


def test_job_references_are_echoed_everywhere(api: LiveApi, settings: Settings, key: str) -> None:
    ref, meta = "order-0815", {"row": 815, "priority_note": "ER"}
    with api.client(key) as c:
        study = upload(c, small_zip(f"echo-{uuid.uuid4().hex[:6]}"))
        body = {"study_id": study, "client_ref": ref, "metadata": meta, "explain": "none"}
        r = c.post("/v1/jobs", json=body)
        assert r.status_code == 202, r.text
        job = r.json()["job_id"]
        status = c.get(f"/v1/jobs/{job}").json()
        assert status["client_ref"] == ref and status["metadata"] == meta and status["priority"] == "routine"
        listed = c.get("/v1/jobs", params={"client_ref": ref}).json()["items"]
        assert [(i["job_id"], i["metadata"]) for i in listed] == [(job, meta)]
        finish_succeeded(api, job)
        result = c.get(f"/v1/jobs/{job}/result").json()
        assert result["client_ref"] == ref and result["metadata"] == meta
        # the webhook payload of the finished job (what the outbox stores and the dispatcher signs)
        assert settings.database_url
        with connect(settings.database_url) as conn:
            event = job_event(conn, uuid.UUID(job))
        assert event["client_ref"] == ref and event["metadata"] == meta and event["event"] == "job.succeeded"
        # refused: too long, not an object, over 4 KiB
        too_deep: dict[str, Any] = {}
        for _ in range(300):
            too_deep = {"a": too_deep}
        for bad in (
            {"client_ref": "x" * 129},
            {"client_ref": "nul\u0000"},
            {"metadata": [1]},
            {"metadata": {"k": "v" * 4096}},
            {"metadata": {"k": "nul\u0000"}},
            {"metadata": too_deep},
            {"series_uid": "1.2\u00003"},  # a DICOM UID is digits and dots
            {"series_uid": "1.2.x"},
        ):
            r = c.post("/v1/jobs", json={"study_id": study, **bad})
            assert r.status_code == 422 and r.json()["error"] == "validation_error", bad


def test_cancel_a_queued_job(api: LiveApi, settings: Settings, key: str) -> None:
    from app.repository import claim_attempt, outbox_rows

    with api.client(key) as c, api.client(_other_client(settings)) as other:
        study = upload(c, small_zip(f"cancel-{uuid.uuid4().hex[:6]}"))
        body = {"study_id": study, "callback_url": "http://127.0.0.1:9/hook", "client_ref": "c-1"}
        job = c.post("/v1/jobs", json=body).json()["job_id"]
        assert other.post(f"/v1/jobs/{job}/cancel").json()["error"] == "job_not_found"
        r = c.post(f"/v1/jobs/{job}/cancel")
        assert r.status_code == 200, r.text
        status = JobStatus.model_validate(r.json())
        assert status.state == "cancelled" and status.finished_at is not None and status.eta_s == 0.0
        assert status.queue_position is None
        # idempotent
        again = c.post(f"/v1/jobs/{job}/cancel")
        assert again.status_code == 200 and again.json()["finished_at"] == r.json()["finished_at"]
        for path in ("result", "explanation"):
            got = c.get(f"/v1/jobs/{job}/{path}")
            assert got.status_code == 409 and got.json()["error"] == "job_cancelled"
        explain = c.post(f"/v1/jobs/{job}/explain", json={"method": "saliency"})
        assert explain.status_code == 409 and explain.json()["error"] == "job_cancelled"
        assert [i["job_id"] for i in c.get("/v1/jobs", params={"state": "cancelled"}).json()["items"]] == [
            job
        ]
        # a worker can never claim it; its callback says cancelled
        assert settings.database_url
        with connect(settings.database_url) as conn:
            assert claim_attempt(conn, uuid.UUID(job), "w", 30.0) is None
            hooks = outbox_rows(conn, uuid.UUID(job))
            event = job_event(conn, uuid.UUID(job))
        assert [h["event"] for h in hooks] == ["job.cancelled"]
        assert event["state"] == "cancelled" and event["client_ref"] == "c-1"
        # finished jobs cannot be cancelled
        done, failed = create_job(c, study), create_job(c, study)
        finish_succeeded(api, done)
        finish_failed(api, failed)
        for finished in (done, failed):
            r = c.post(f"/v1/jobs/{finished}/cancel")
            assert r.status_code == 409 and r.json()["error"] == "job_finished", r.text
        assert c.get(f"/v1/jobs/{done}/result").status_code == 200


def test_queue_order_is_urgent_first_and_old_routine_jobs_are_promoted(
    api: LiveApi, settings: Settings, key: str
) -> None:
    import time

    from app.queue import JobQueue
    from app.repository import reconcile_jobs

    with api.client(key) as c:
        study = upload(c, small_zip(f"prio-{uuid.uuid4().hex[:6]}"))
        r1, r2 = create_job(c, study), create_job(c, study)
        urgent = c.post("/v1/jobs", json={"study_id": study, "priority": "urgent"}).json()["job_id"]

        def pos(job: str) -> int:
            status = c.get(f"/v1/jobs/{job}").json()
            assert status["state"] == "queued"
            return int(status["queue_position"])

        assert pos(urgent) < pos(r1) < pos(r2) == pos(r1) + 1
        assert c.get(f"/v1/jobs/{urgent}").json()["priority"] == "urgent"
        assert settings.redis_url and settings.database_url
        q = JobQueue.from_url(settings.redis_url, settings.stream, settings.group)
        try:
            assert uuid.UUID(urgent) in {m.job_id for m in q._messages(q.r.xrange(q.urgent_stream))}
            assert uuid.UUID(r1) not in {m.job_id for m in q._messages(q.r.xrange(q.urgent_stream))}
            # routine jobs that waited longer than priority_age_s join the urgent lane, oldest first
            time.sleep(0.3)
            with connect(settings.database_url) as conn:
                done = reconcile_jobs(conn, stale_after_s=3600, idempotency_ttl_s=3600, priority_age_s=0.2)
            assert {uuid.UUID(r1), uuid.UUID(r2)} <= set(done.promoted) <= done.urgent
            assert uuid.UUID(urgent) not in done.promoted
            assert pos(r1) < pos(r2) < pos(urgent)
        finally:
            q.close()


def test_models_that_cannot_be_served_are_marked_and_refused(make_settings: Any, tmp_path: Any) -> None:
    import json

    from app.config import DEFAULT_MANIFEST

    manifest = json.loads(DEFAULT_MANIFEST.read_text())
    demo = manifest["models"][manifest["default"]]
    demo["uri"] = str(DEFAULT_MANIFEST.parent / demo["uri"])
    demo["ood"]["uri"] = str(DEFAULT_MANIFEST.parent / demo["ood"]["uri"])
    manifest["models"]["bad-sha"] = {**demo, "name": "bad-sha", "sha256": "0" * 64}
    manifest["models"]["gone"] = {**demo, "name": "gone", "uri": "missing.pt"}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    settings = make_settings(manifest_path=path)
    with LiveApi(settings) as live, live.client(new_key(settings, "models")) as c:
        cards = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
        assert cards[manifest["default"]]["available"] is True
        assert cards[manifest["default"]]["unavailable_reason"] is None
        reasons = {
            name: cards[name]["unavailable_reason"] for name in ("bad-sha", "gone", "resnet34-medicalnet")
        }
        assert "sha256" in reasons["bad-sha"] and "not found" in reasons["gone"]
        assert "no sha256" in reasons["resnet34-medicalnet"]  # the shipped entry for operator weights
        assert not any(cards[name]["available"] for name in reasons)
        study = upload(c, small_zip("models"))
        for name in reasons:
            r = c.post("/v1/jobs", json={"study_id": study, "model": name})
            assert r.status_code == 422 and r.json()["error"] == "model_unavailable", r.text
            assert name in r.json()["detail"]
        assert c.post("/v1/jobs", json={"study_id": study}).status_code == 202
        assert c.get("/v1/jobs").json()["items"][0]["model"] == manifest["default"]
    # an API apart from the weights (the api image: manifest only) checks the manifest, not the files
    apart = make_settings(manifest_path=path, api_checks_weight_files=False)
    with LiveApi(apart) as live, live.client(new_key(apart, "models-apart")) as c:
        cards = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
        assert cards["bad-sha"]["available"] is True and cards["gone"]["available"] is True
        assert "no sha256" in cards["resnet34-medicalnet"]["unavailable_reason"]
