"""Radiologists' feedback and live performance through the real service: phantom studies with
known labels run by a real worker (demo model on CPU), readers answer (several readers, a
replaced answer, a disagreeing reader, a tie), and the performance endpoint's AUC, rates and
CIs equal what ml.evaluate computes on the same numbers; the CLI writes the report.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import LiveApi, new_key, run_cli, storage_of, wait_job  # type: ignore[import-not-found]
from seeding import small_zip, upload  # type: ignore[import-not-found]

from app.config import Settings
from app.db import Database, connect
from app.retention import retention_pass
from app.schemas import JobStatus
from app.schemas_performance import Performance
from ml.evaluate import bootstrap_ci, ece, roc_auc
from ml.evaluate.metrics import confusion_at, metric_at
from ml.phantom import make_study

MODEL = "resnet10-demo"
#: phantom labels of the six studies (0 normal, 1 pathology); the last gets no feedback
TRUTH = (0, 0, 0, 1, 1, 1)
_NAMES = ("normal", "pathology")


@pytest.fixture(scope="module")
def start() -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)


@pytest.fixture(scope="module")
def client(api: LiveApi, settings: Settings) -> Any:
    with api.client(new_key(settings, "feedback-a")) as c:
        yield c


@pytest.fixture(scope="module")
def other(api: LiveApi, settings: Settings) -> Any:
    with api.client(new_key(settings, "feedback-b")) as c:
        yield c


@pytest.fixture(scope="module")
def jobs(
    client: httpx.Client, worker: Any, start: dt.datetime, tmp_path_factory: pytest.TempPathFactory
) -> list[str]:
    """Six succeeded predictions of phantoms with the labels of TRUTH, then one failed job."""
    folder = tmp_path_factory.mktemp("phantoms")
    ids = []
    for i, label in enumerate(TRUTH):
        path = folder / f"{i}.zip"
        make_study(path, seed=100 + i, label=label)
        r = client.post("/v1/jobs", json={"study_id": upload(client, path.read_bytes()), "explain": "none"})
        assert r.status_code == 202, r.text
        ids.append(str(r.json()["job_id"]))
    done = [wait_job(client, j) for j in ids]
    assert [d["state"] for d in done] == ["succeeded"] * len(TRUTH), done
    return ids


@pytest.fixture(scope="module")
def failed(client: httpx.Client, jobs: list[str]) -> str:
    r = client.post("/v1/jobs", json={"study_id": upload(client, small_zip("not-dicom")), "explain": "none"})
    assert r.status_code == 202, r.text
    job = str(r.json()["job_id"])
    assert wait_job(client, job)["state"] == "failed"
    return job


def _give(c: httpx.Client, job: str, reader: str, truth: str, **extra: Any) -> dict[str, Any]:
    r = c.post(f"/v1/jobs/{job}/feedback", json={"reader": reader, "ground_truth": truth, **extra})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


@pytest.fixture(scope="module")
def answered(client: httpx.Client, jobs: list[str]) -> list[str]:
    """Every job but the last answered as TRUTH by reader r1, plus the other readers' answers."""
    for job, label in zip(jobs[:-1], TRUTH, strict=False):
        _give(client, job, "r1", _NAMES[label])
    # a reader who changes their mind: the later answer replaces the first
    _give(client, jobs[0], "r2", "pathology", agrees=False)
    now = _give(client, jobs[0], "r2", "normal", agrees=True)
    assert now["ground_truth"] == "normal" and [a["reader"] for a in now["readers"]] == ["r1", "r2"]
    # a disagreeing reader is outvoted
    _give(client, jobs[3], "r2", "normal", agrees=False, comment="no nodule seen")
    assert _give(client, jobs[3], "r3", "pathology")["ground_truth"] == "pathology"
    # a tie goes to the most recent current answer
    assert _give(client, jobs[1], "r2", "pathology")["ground_truth"] == "pathology"
    assert _give(client, jobs[1], "r1", "normal")["ground_truth"] == "normal"
    return jobs


def test_feedback_is_listed_with_the_job_and_its_history(client: httpx.Client, answered: list[str]) -> None:
    status = client.get(f"/v1/jobs/{answered[3]}").json()
    JobStatus.model_validate(status)
    fb = status["feedback"]
    assert fb["ground_truth"] == "pathology"
    assert [(a["reader"], a["ground_truth"], a["agrees"]) for a in fb["readers"]] == [
        ("r1", "pathology", None),
        ("r2", "normal", False),
        ("r3", "pathology", None),
    ]
    assert fb["readers"][1]["comment"] == "no nodule seen"
    assert client.get(f"/v1/jobs/{answered[5]}").json()["feedback"] is None
    history = client.get(f"/v1/jobs/{answered[0]}/feedback").json()
    assert [(h["reader"], h["ground_truth"], h["current"]) for h in history["history"]] == [
        ("r1", "normal", True),
        ("r2", "pathology", False),
        ("r2", "normal", True),
    ]
    assert history["feedback"]["ground_truth"] == "normal" and len(history["feedback"]["readers"]) == 2


def _listed(c: httpx.Client, **params: Any) -> set[str]:
    r = c.get("/v1/jobs", params={"limit": 200, **params})
    assert r.status_code == 200, r.text
    return {item["job_id"] for item in r.json()["items"]}


def test_the_job_list_filters_by_feedback_and_ground_truth(client: httpx.Client, answered: list[str]) -> None:
    assert _listed(client, feedback="none") >= {answered[5]}
    assert answered[5] not in _listed(client, feedback="any")
    assert _listed(client, feedback="any") == set(answered[:5])
    assert _listed(client, ground_truth="pathology") == {answered[3], answered[4]}
    assert _listed(client, ground_truth="normal") == set(answered[:3])
    items = client.get("/v1/jobs", params={"feedback": "any", "limit": 2}).json()
    assert all(i["feedback"] is not None for i in items["items"]) and items["next_cursor"]
    bad = client.get("/v1/jobs", params={"feedback": "some"})
    assert bad.status_code == 422 and bad.json()["error"] == "validation_error"


def test_idempotent_feedback_replays_without_a_second_answer(
    client: httpx.Client, answered: list[str]
) -> None:
    job, key = answered[4], {"Idempotency-Key": f"fb-{uuid.uuid4()}"}
    body = {"reader": "r9", "ground_truth": "pathology"}
    first = client.post(f"/v1/jobs/{job}/feedback", json=body, headers=key)
    again = client.post(f"/v1/jobs/{job}/feedback", json=body, headers=key)
    assert first.status_code == again.status_code == 201 and first.json() == again.json()
    other = client.post(f"/v1/jobs/{job}/feedback", json={**body, "ground_truth": "normal"}, headers=key)
    assert other.status_code == 409 and other.json()["error"] == "idempotency_conflict"
    history = client.get(f"/v1/jobs/{job}/feedback").json()["history"]
    assert [h["reader"] for h in history].count("r9") == 1


@pytest.mark.parametrize(
    "body",
    [
        {"reader": "Dr Smith", "ground_truth": "normal"},  # a space: looks like a name
        {"reader": "smith@hospital.org", "ground_truth": "normal"},
        {"reader": "r" * 65, "ground_truth": "normal"},
        {"reader": "r1", "ground_truth": "maybe"},
        {"reader": "r1", "ground_truth": "normal", "comment": "x" * 1001},
        {"reader": "r1", "ground_truth": "normal", "comment": "nul \x00 byte"},
        {"reader": "r1", "ground_truth": "normal", "patient": "x"},
        {"ground_truth": "normal"},
    ],
)
def test_invalid_feedback_is_refused(client: httpx.Client, jobs: list[str], body: dict[str, Any]) -> None:
    r = client.post(f"/v1/jobs/{jobs[5]}/feedback", json=body)
    assert r.status_code == 422 and r.json()["error"] == "validation_error", r.text


def test_feedback_needs_a_succeeded_prediction_of_the_caller(
    client: httpx.Client, other: httpx.Client, answered: list[str], failed: str
) -> None:
    r = client.post(f"/v1/jobs/{failed}/feedback", json={"reader": "r1", "ground_truth": "normal"})
    assert r.status_code == 409 and r.json()["error"] == "feedback_not_accepted", r.text
    for call in (
        lambda: other.post(
            f"/v1/jobs/{answered[0]}/feedback", json={"reader": "x", "ground_truth": "normal"}
        ),
        lambda: other.get(f"/v1/jobs/{answered[0]}/feedback"),
        lambda: client.get(f"/v1/jobs/{uuid.uuid4()}/feedback"),
    ):
        r = call()
        assert r.status_code == 404 and r.json()["error"] == "job_not_found", r.text


def _expected(client: httpx.Client, jobs: list[str]) -> tuple[list[float], list[int]]:
    probabilities = [client.get(f"/v1/jobs/{j}/result").json()["probability"] for j in jobs[:5]]
    return probabilities, list(TRUTH[:5])


def test_live_performance_equals_ml_evaluate_on_the_same_numbers(
    client: httpx.Client, answered: list[str], failed: str, start: dt.datetime
) -> None:
    r = client.get(f"/v1/models/{MODEL}/performance", params={"since": start.isoformat()})
    assert r.status_code == 200, r.text
    report = Performance.model_validate(r.json())
    p, y = _expected(client, answered)
    assert (report.jobs, report.succeeded, report.failed, report.with_feedback) == (7, 6, 1, 5)
    assert report.studies == 7 and report.client == "feedback-a"
    assert [x.code for x in report.refusals] == [
        client.get(f"/v1/jobs/{failed}").json()["error"]["code"]
    ] and report.refusals[0].rate == pytest.approx(1 / 7)
    assert report.indeterminate.of == 6 and report.ood_flagged.of in (0, 6)
    live = report.live
    assert (live.n, live.n_pathology) == (5, 2)
    assert live.auc.value == pytest.approx(roc_auc(y, p))
    assert live.auc.ci95 == pytest.approx(bootstrap_ci(y, p, roc_auc, n=1000, seed=0))
    card = client.get("/v1/models").json()["models"]
    ops = next(m for m in card if m["name"] == MODEL)["operating_points"]
    assert set(live.operating_points) == set(ops)
    for name, op in live.operating_points.items():
        threshold = ops[name]["threshold"]
        c = confusion_at(y, p, threshold)
        assert (op.threshold, op.tp, op.fp, op.tn, op.fn) == (threshold, c.tp, c.fp, c.tn, c.fn)
        for rate in ("sensitivity", "specificity", "ppv", "npv"):
            ci = bootstrap_ci(y, p, metric_at(rate, threshold), n=1000, seed=0)
            estimate = getattr(op, rate)
            assert estimate.ci95 == (pytest.approx(ci) if all(math.isfinite(v) for v in ci) else None)
        assert report.card.operating_points[name].sensitivity.value == ops[name]["sensitivity"]
    assert live.calibration.ece == pytest.approx(ece(y, p))
    assert sum(b.count for b in live.calibration.bins) == 5
    assert report.card.auc.value is not None and report.card.n == 240


def test_performance_is_the_callers_own(
    client: httpx.Client, other: httpx.Client, answered: list[str], start: dt.datetime
) -> None:
    mine = other.get(f"/v1/models/{MODEL}/performance", params={"since": start.isoformat()}).json()
    assert mine["jobs"] == 0 and mine["live"]["auc"]["value"] is None and mine["client"] == "feedback-b"
    r = other.get(f"/v1/models/{MODEL}/performance", params={"client": "feedback-a"})
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    r = client.get("/v1/models/no-such-model/performance")
    assert r.status_code == 404 and r.json()["error"] == "model_not_found"
    r = client.get(
        f"/v1/models/{MODEL}/performance",
        params={"since": "2030-01-01T00:00:00Z", "until": "2029-01-01T00:00:00Z"},
    )
    assert r.status_code == 422 and r.json()["error"] == "validation_error"


def test_the_cli_writes_the_report_as_xlsx_and_html(
    settings: Settings, client: httpx.Client, answered: list[str], start: dt.datetime, tmp_path: Path
) -> None:
    from openpyxl import load_workbook  # type: ignore[import-untyped,unused-ignore]

    api = client.get(f"/v1/models/{MODEL}/performance", params={"since": start.isoformat()}).json()
    since = start.isoformat()
    xlsx, page = tmp_path / "report.xlsx", tmp_path / "report.html"
    for out in (xlsx, page):
        done = run_cli(
            settings, "performance", MODEL, "--since", since, "--client", "feedback-a", "-o", str(out)
        )
        assert done.returncode == 0, done.stderr
        assert "5 with feedback" in done.stdout
    book = load_workbook(xlsx)
    assert book.sheetnames == ["summary", "figures", "reliability", "plots"]
    auc_row = next(row for row in book["figures"].iter_rows(values_only=True) if row[0] == "AUC")
    assert auc_row[1] == pytest.approx(api["live"]["auc"]["value"])
    assert len(book["plots"]._images) == 2
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 2 and f"{api['live']['auc']['value']:.3f}" in text


def _feedback_rows(settings: Settings, jobs: list[str]) -> int:
    assert settings.database_url
    with connect(settings.database_url) as conn:
        row = conn.execute(
            "SELECT count(*) AS n FROM feedback WHERE job_id = ANY(%s::uuid[])", (jobs,)
        ).fetchone()
    assert row is not None
    return int(row["n"])


def test_feedback_is_deleted_with_its_job_and_by_retention(
    settings: Settings, client: httpx.Client, answered: list[str], tmp_path: Path
) -> None:
    gone = []  # jobs of their own: the other tests count the module's jobs
    for seed in (200, 201):
        path = tmp_path / f"{seed}.zip"
        make_study(path, seed=seed, label=1)
        r = client.post("/v1/jobs", json={"study_id": upload(client, path.read_bytes()), "explain": "none"})
        gone.append(str(r.json()["job_id"]))
    for job in gone:
        assert wait_job(client, job)["state"] == "succeeded"
        _give(client, job, "r1", "pathology")
        _give(client, job, "r1", "normal")
    assert _feedback_rows(settings, gone) == 4
    deleted, expired = gone
    assert client.delete(f"/v1/jobs/{deleted}").status_code == 204
    assert client.get(f"/v1/jobs/{deleted}/feedback").status_code == 404
    assert _feedback_rows(settings, [deleted]) == 0
    # the retention janitor deletes a job past its days with its feedback
    assert settings.database_url
    with connect(settings.database_url) as conn:
        conn.execute("UPDATE jobs SET created_at = now() - interval '3 days' WHERE id = %s", (expired,))
    db = Database(settings.database_url, min_size=1, max_size=2, name="retention-test")
    db.open()
    try:
        counts = retention_pass(db, storage_of(settings), settings.model_copy(update={"retention_days": 2}))
    finally:
        db.close()
    assert counts.jobs == 1 and _feedback_rows(settings, [expired]) == 0
    assert client.get(f"/v1/jobs/{expired}").status_code == 404
