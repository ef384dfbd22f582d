"""The Python client (clients/python, ``service4ct_client``) against the real service: the API on
loopback, a worker in this process, the embedded PostgreSQL, Redis and S3."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import LiveApi, new_key  # type: ignore[import-not-found]
from service4ct_client import Service4CTClient, Service4CTError

from app.config import Settings
from ml.phantom import make_study


@pytest.fixture(scope="module")
def sent() -> list[httpx.Request]:
    return []


@pytest.fixture(scope="module")
def client(api: LiveApi, settings: Settings, sent: list[httpx.Request]) -> Iterator[Service4CTClient]:
    key = new_key(settings, "py-client")
    http = httpx.Client(timeout=60, event_hooks={"request": [sent.append]})
    with Service4CTClient(api.base, key, http=http) as c, http:
        yield c


@pytest.fixture(scope="module")
def study_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("py-client") / "study.zip"
    make_study(path, seed=12, label=1)
    return path


def test_upload_predict_wait_result_explanation(
    client: Service4CTClient, worker: Any, study_zip: Path, sent: list[httpx.Request]
) -> None:
    study = client.upload_study(study_zip, client_ref="py-study", metadata={"row": 7}, multipart=True)
    assert (study["client_ref"], study["metadata"]) == ("py-study", {"row": 7})
    again = client.upload_study(study_zip.read_bytes())
    assert again["study_id"] == study["study_id"] and again["existing"]

    job = client.predict(study["study_id"], explain="gradcam", client_ref="py-job")
    seen: list[str] = []
    final = client.wait_for_job(
        job["job_id"], initial_delay=0.2, timeout=240, on_status=lambda s: seen.append(s["state"])
    )
    assert final["state"] == "succeeded", final["error"]
    assert seen[-1] == "succeeded"
    result = client.result(job["job_id"])
    assert 0.0 <= result["probability"] <= 1.0 and result["client_ref"] == "py-job"
    explanation = client.explanation(job["job_id"])
    assert explanation["method"] == "gradcam" and explanation["files"]["nifti"]["url"].startswith("http")
    token = client.viewer_token(job["job_id"])
    assert token["token_type"] == "Bearer" and job["job_id"] in token["jobs"]
    models = client.models()
    assert any(m["name"] == models["default"] for m in models["models"])
    given = client.give_feedback(job["job_id"], "normal", "py-reader", agrees=False)
    assert given["ground_truth"] == "normal" and given["readers"][0]["agrees"] is False
    assert len(client.feedback(job["job_id"])["history"]) == 1
    assert client.get_job(job["job_id"])["feedback"] == given
    assert client.performance(final["model"])["with_feedback"] >= 1

    posts = [r for r in sent if r.method == "POST"]
    assert len(posts) >= 4
    assert all(uuid.UUID(r.headers["Idempotency-Key"]) for r in posts)
    assert all("Bearer" in r.headers["Authorization"] for r in sent)


def test_idempotency_cancel_delete_and_pages(client: Service4CTClient, study_zip: Path) -> None:
    sid = client.upload_study(study_zip)["study_id"]
    a = client.predict(sid, explain="none", client_ref="py-page", idempotency_key="py-same-key")
    b = client.predict(sid, explain="none", client_ref="py-page", idempotency_key="py-same-key")
    assert a["job_id"] == b["job_id"]
    ids = [a["job_id"]]
    ids += [client.predict(sid, explain="none", client_ref="py-page")["job_id"] for _ in range(2)]
    for jid in ids:
        client.cancel_job(jid)
    first = client.list_jobs(client_ref="py-page", limit=2)
    assert len(first["items"]) == 2 and first["next_cursor"] is not None
    assert sorted(j["job_id"] for j in client.jobs(client_ref="py-page", limit=2)) == sorted(ids)
    assert [s["study_id"] for s in client.studies(client_ref="py-study", limit=1)]
    final = client.wait_for_job(ids[-1], initial_delay=0.1, timeout=120)
    assert final["state"] in ("cancelled", "succeeded")
    client.delete_job(ids[-1])
    with pytest.raises(Service4CTError) as e:
        client.get_job(ids[-1])
    assert (e.value.code, e.value.status) == ("job_not_found", 404) and e.value.request_id


def test_errors_carry_the_stable_code(api: LiveApi, client: Service4CTClient) -> None:
    missing = str(uuid.uuid4())
    with pytest.raises(Service4CTError) as e:
        client.predict(missing, explain="magic")
    assert (e.value.code, e.value.status) == ("validation_error", 422)
    with pytest.raises(Service4CTError) as e:
        client.predict(missing, explain="integrated_gradients", explain_params={"steps": 0})
    assert e.value.code == "validation_error" and "steps" in e.value.detail
    with Service4CTClient(api.base, "s4ct_not-a-key") as stranger, pytest.raises(Service4CTError) as e:
        stranger.models()
    assert (e.value.code, e.value.status) == ("unauthorized", 401)
    with pytest.raises(ValueError, match="api_key"):
        Service4CTClient(api.base)


def test_the_demo_script_runs_on_the_client(
    api: LiveApi, worker: Any, settings: Settings, study_zip: Path
) -> None:
    """scripts/demo_client.py (the README's walk-through) predicts a study through the client."""
    key = new_key(settings, "py-demo")
    script = Path(__file__).resolve().parents[2] / "scripts" / "demo_client.py"
    done = subprocess.run(
        [sys.executable, str(script), str(study_zip), "--api", api.base, "--key", key, "--explain", "none"],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "upload:" in done.stdout and '"probability"' in done.stdout
