"""The typed records (app/repository/records.py): rows in, links and views out, checked by the schemas."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from app.repository import BlobRef, Delivery, ExplanationRecord, Job, JobLinks, RecentStats
from app.schemas import Explanation, JobAccepted, JobResult, JobStatus

JobRow = Callable[..., dict[str, Any]]

NOW = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC)  # when the job_row fixture's rows were made
STATS = RecentStats(run_s=4.0, samples=10, workers=2)


def result_of(job: Job) -> JobResult:
    example: dict[str, Any] = JobResult.model_json_schema()["examples"][0]
    return JobResult.model_validate({**example, "job_id": str(job.id), "attempt": job.attempt})


def test_a_job_is_built_from_its_row_and_the_extra_columns_are_optional(job_row: JobRow) -> None:
    row = job_row()
    job = Job.from_row(row)
    assert job.id == row["id"] and job.model == "resnet10-demo" and job.enqueued_at == NOW
    assert job.study_s3_key is None and job.queue_position is None
    joined = Job.from_row(row | {"study_s3_key": "studies/x/source.zip", "queue_position": 4})
    assert joined.study_s3_key == "studies/x/source.zip" and joined.queue_position == 4
    with pytest.raises(TypeError):
        Job.from_row({k: v for k, v in row.items() if k != "state"})
    with pytest.raises(AttributeError):
        job.state = "running"  # type: ignore[misc]


def test_links_are_built_in_one_place(job_row: JobRow) -> None:
    jid = uuid.uuid4()
    links = JobLinks.of(jid)
    assert links.as_dict() == {
        "status": f"/v1/jobs/{jid}",
        "result": f"/v1/jobs/{jid}/result",
        "explanation": f"/v1/jobs/{jid}/explanation",
    }
    assert JobLinks.of(str(jid)) == links and Job.from_row(job_row(id=jid)).links == links


def test_accepted_view_is_the_202_body(job_row: JobRow) -> None:
    job = Job.from_row(job_row())
    body = job.accepted_view()
    assert JobAccepted.model_validate(body).job_id == job.id
    assert body["status_url"] == job.links.status and body["links"] == job.links.as_dict()
    assert body["state"] == "queued"


@pytest.mark.parametrize(
    "over",
    [
        {"state": "queued", "queue_position": 3},
        {"state": "running", "stage": "inference", "progress": 0.6, "attempt": 1, "started_at": NOW},
        {"state": "succeeded", "progress": 1.0, "attempt": 1, "started_at": NOW, "finished_at": NOW},
        {"state": "failed", "attempt": 2, "error_code": "no_dicom", "error_detail": "x", "finished_at": NOW},
        {"kind": "explain", "parent_job_id": uuid.uuid4(), "explain": "saliency"},
    ],
)
def test_status_view_matches_the_job_status_schema(over: dict[str, Any], job_row: JobRow) -> None:
    job = Job.from_row(job_row(**over, stage_timings={"fetching": 0.2}))
    view = job.status_view(STATS)
    assert json.loads(json.dumps(view)) == view  # JSON as is (the route sends it without a model)
    parsed = JobStatus.model_validate(view)
    assert parsed.model_dump(mode="json").keys() == view.keys()
    assert view["links"] == job.links.as_dict() and view["created_at"] == "2026-11-23T10:00:00Z"
    assert (view["error"] is None) == (job.error_code is None)


def test_eta(job_row: JobRow) -> None:
    queued = Job.from_row(job_row(state="queued", queue_position=4))
    assert queued.eta_s(STATS) == 4.0 * (1 + 4 / 2)
    assert queued.eta_s(RecentStats(run_s=None, samples=0, workers=0)) is None
    assert queued.eta_s(RecentStats(run_s=4.0, samples=1, workers=0)) == 4.0 * 5  # at least one worker
    for state in ("succeeded", "failed"):
        assert Job.from_row(job_row(state=state)).eta_s(RecentStats(None, 0, 0)) == 0.0
    started = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    running = Job.from_row(job_row(state="running", progress=0.5, started_at=started))
    eta = running.eta_s(STATS)
    assert eta is not None and 2.9 <= eta <= 3.0
    late = Job.from_row(job_row(state="running", progress=0.5, started_at=NOW - dt.timedelta(hours=1)))
    assert late.eta_s(STATS) == round(4.0 * 0.5 * 0.1, 2)


def test_event_view_of_a_predict_job(job_row: JobRow) -> None:
    job = Job.from_row(job_row(state="succeeded", attempt=1, finished_at=NOW))
    event = job.event_view(result_of(job))
    assert event["event"] == "job.succeeded" and event["job_id"] == str(job.id)
    assert event["status_url"] == job.links.status and event["result_url"] == job.links.result
    assert event["explanation_url"] == job.links.explanation
    assert event["probability"] == 0.93 and event["label"] == "pathology" and event["error"] is None
    assert event["finished_at"] == NOW.isoformat()
    assert json.loads(json.dumps(event)) == event


def test_event_view_of_a_failed_explain_job_points_at_its_parent(job_row: JobRow) -> None:
    parent = uuid.uuid4()
    job = Job.from_row(
        job_row(kind="explain", parent_job_id=parent, state="failed", error_code="worker_crashed")
    )
    event = job.event_view(None)
    assert event["event"] == "job.failed" and event["error"] == {"code": "worker_crashed", "detail": None}
    assert event["result_url"] is None and event["explanation_url"] == JobLinks.of(parent).explanation
    assert event["parent_job_id"] == str(parent) and "probability" not in event
    assert job.explanation_target == parent
    assert Job.from_row(job_row()).explanation_target != parent


def explanation_row(job_id: uuid.UUID) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "method": "gradcam",
        "produced_by": job_id,
        "attempt": 1,
        "params": {},
        "stats": {"max": 0.98},
        "geometry": {"shape_zyx": [4, 8, 8]},
        "blobs": {
            "nifti": {
                "key": "jobs/x/attempt-1/saliency/gradcam/saliency.nii.gz",
                "content_type": "application/gzip",
            },
            "png": {"key": "jobs/x/attempt-1/saliency/gradcam/ct.png", "content_type": "image/png"},
        },
        "model_name": "resnet10-demo",
        "model_version": "0.1.0",
        "created_at": NOW,
    }


def test_explanation_record_round_trips_its_blobs_and_serves_the_explanation_schema() -> None:
    jid = uuid.uuid4()
    row = explanation_row(jid)
    record = ExplanationRecord.from_row(row)
    assert record.blobs["png"] == BlobRef("jobs/x/attempt-1/saliency/gradcam/ct.png", "image/png")
    assert record.blobs_json() == row["blobs"]  # what upsert_explanation stores
    expires = NOW + dt.timedelta(minutes=15)
    body = record.view(lambda key: f"https://s3.example/{key}?sig", expires)
    parsed = Explanation.model_validate(body)
    assert parsed.job_id == jid and body["model"] == {"name": "resnet10-demo", "version": "0.1.0"}
    assert body["files"]["png"] == {
        "url": "https://s3.example/jobs/x/attempt-1/saliency/gradcam/ct.png?sig",
        "content_type": "image/png",
        "expires_at": "2026-11-23T10:15:00Z",
    }


def test_delivery_from_an_outbox_row() -> None:
    row = {
        "id": 7,
        "job_id": uuid.uuid4(),
        "client": "site-a",
        "url": "https://laravel.example/hook",
        "event": "job.succeeded",
        "payload": {"job_id": "x"},
        "attempts": 2,
        "created_at": NOW,
    }
    d = Delivery.from_row(row)
    assert (d.id, d.url, d.attempts, d.payload) == (7, row["url"], 2, {"job_id": "x"})
