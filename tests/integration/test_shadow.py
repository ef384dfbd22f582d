"""A shadow model through the real service: two models in one worker, only the primary's answer visible.

The manifest of this module holds the demo model, a shadow of it (the same weights with another
calibration temperature, so its probabilities differ from the primary's) on half of its jobs, and a
shadow whose weights do not verify (it fails on every job it is given). Jobs go through upload →
worker → result and webhook; the shadow's rows land in ``shadow_results`` for exactly the jobs
:func:`app.worker.shadow.in_share` picks, nowhere in what the client can read, and go with their job.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import LiveApi, Receiver, new_key, wait_for, wait_job  # type: ignore[import-not-found]
from prometheus_client.parser import text_string_to_metric_families

from app.config import DEFAULT_MANIFEST, Settings
from app.db import connect
from app.performance import model_figures
from app.repository.drift import shadow_pairs
from app.worker.shadow import in_share
from ml.phantom import make_study

CLIENT = "site-shadow"
PRIMARY = "resnet10-demo"
SHADOW = "resnet10-demo-candidate"
BROKEN = "resnet10-demo-broken"
SHARE = 0.5


def _manifest(tmp: Path) -> Path:
    raw = json.loads(DEFAULT_MANIFEST.read_text())
    demo = raw["models"][PRIMARY]
    weights = DEFAULT_MANIFEST.parent
    demo["uri"] = str(weights / demo["uri"])
    if demo.get("ood"):
        demo["ood"]["uri"] = str(weights / demo["ood"]["uri"])
    demo["model_card"] = None
    cal = {**demo["calibration"], "temperature": 1.7}
    raw["models"] = {
        PRIMARY: demo,
        SHADOW: {**demo, "name": SHADOW, "version": "0.6.0-rc1", "calibration": cal, "shadow_of": PRIMARY},
        BROKEN: {**demo, "name": BROKEN, "version": "0.0.1", "sha256": "0" * 64, "shadow_of": PRIMARY},
    }
    raw["default"] = PRIMARY
    path = tmp / "manifest.json"
    path.write_text(json.dumps(raw))
    return path


@pytest.fixture(scope="module")
def settings(make_settings: Any, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    path = _manifest(tmp_path_factory.mktemp("manifest"))
    s: Settings = make_settings(manifest_path=path, shadow_share=SHARE, drift_refresh_s=0.0)
    return s


@pytest.fixture(scope="module")
def client(api: LiveApi, worker: Any, settings: Settings) -> Iterator[httpx.Client]:
    with api.client(new_key(settings, CLIENT)) as c:
        yield c


def _shadow_rows(settings: Settings) -> dict[str, dict[str, Any]]:
    assert settings.database_url
    with connect(settings.database_url) as conn:
        rows = conn.execute("SELECT * FROM shadow_results").fetchall()
    return {str(r["job_id"]): dict(r) for r in rows}


def test_models_mark_the_shadow_and_jobs_refuse_it(client: httpx.Client, tmp_path: Path) -> None:
    cards = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert cards[SHADOW]["shadow_of"] == PRIMARY and cards[PRIMARY].get("shadow_of") is None
    study = make_study(tmp_path / "s.zip", seed=3)
    r = client.post(
        "/v1/studies", content=study.zip_path.read_bytes(), headers={"content-type": "application/zip"}
    )
    sid = r.json()["study_id"]
    r = client.post("/v1/jobs", json={"study_id": sid, "model": SHADOW, "explain": "none"})
    assert r.status_code == 422 and r.json()["error"] == "model_is_shadow", r.text
    r = client.post(f"/v1/studies/{sid}/predict", json={"model": SHADOW, "explain": "none"})
    assert r.status_code == 422 and r.json()["error"] == "model_is_shadow", r.text


def test_only_the_primary_answer_is_visible(
    client: httpx.Client, api: LiveApi, settings: Settings, tmp_path: Path
) -> None:
    jobs: list[str] = []
    with Receiver() as hook:
        seed = 0
        # enough jobs for both sides of the share (ids are random: a few more when they all fell on one)
        while len(jobs) < 3 or len({in_share(uuid.UUID(j), SHARE) for j in jobs}) < 2:
            assert len(jobs) < 10, "the share never split the jobs"
            seed += 1
            zp = make_study(tmp_path / f"{seed}.zip", seed=seed).zip_path
            r = client.post(
                "/v1/studies", content=zp.read_bytes(), headers={"content-type": "application/zip"}
            )
            body = {"study_id": r.json()["study_id"], "explain": "gradcam", "callback_url": hook.url}
            r = client.post("/v1/jobs", json=body)
            assert r.status_code == 202, r.text
            jobs.append(r.json()["job_id"])
            assert wait_job(client, jobs[-1])["state"] == "succeeded"  # the broken shadow fails no job
        wait_for(lambda: len(hook.payloads()) >= len(jobs), timeout=60, what="webhooks")
        payloads = {p["job_id"]: p for p in hook.payloads()}

    rows = _shadow_rows(settings)
    chosen = {j for j in jobs if in_share(uuid.UUID(j), SHARE)}
    assert set(rows) == chosen  # exactly the share, and nothing from the broken shadow
    assert {r["model"] for r in rows.values()} == {SHADOW} and {
        r["primary_model"] for r in rows.values()
    } == {PRIMARY}

    listing = client.get("/v1/jobs").text
    assert SHADOW not in listing and BROKEN not in listing
    for job in jobs:
        texts = [
            client.get(f"/v1/jobs/{job}").text,
            client.get(f"/v1/jobs/{job}/result").text,
            client.get(f"/v1/jobs/{job}/explanation").text,
            json.dumps(payloads[job]),
        ]
        assert not [t for t in texts if SHADOW in t or BROKEN in t]
        result = client.get(f"/v1/jobs/{job}/result").json()
        assert result["model"]["name"] == PRIMARY
        assert payloads[job]["probability"] == pytest.approx(result["probability"])
        # where the shadow answered something else (both models can saturate at p = 1.0 on the
        # same study), that answer stays inside
        if job in rows and abs(rows[job]["probability"] - result["probability"]) > 1e-6:
            assert f"{rows[job]['probability']:.6f}" not in "".join(texts)

    # the pairs the performance report reads, and the agreement gauge
    assert settings.database_url
    with connect(settings.database_url) as conn:
        pairs = shadow_pairs(conn, PRIMARY, SHADOW)
    assert {str(p.job_id) for p in pairs} == chosen
    for p in pairs:
        assert p.shadow_probability == pytest.approx(rows[str(p.job_id)]["probability"])
    text = httpx.get(f"http://127.0.0.1:{api.app.state.metrics_port}/metrics", timeout=30).text
    samples = {
        (s.name, s.labels.get("shadow")): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name.startswith("s4ct_shadow")
    }
    assert samples[("s4ct_shadow_window_jobs", SHADOW)] == len(chosen)
    agree = sum(p.primary_label == p.shadow_label for p in pairs) / len(pairs)
    assert samples[("s4ct_shadow_agreement", SHADOW)] == pytest.approx(agree)
    assert ("s4ct_shadow_agreement", BROKEN) not in samples

    # the performance report: the shadow beside the primary on the jobs it answered, against feedback
    for job in jobs:
        truth = "pathology" if rows.get(job, {"probability": 0.0})["probability"] >= 0.5 else "normal"
        r = client.post(f"/v1/jobs/{job}/feedback", json={"ground_truth": truth, "reader": "r1"})
        assert r.status_code == 201, r.text
    with connect(settings.database_url) as conn:
        judged = shadow_pairs(conn, PRIMARY, SHADOW)
        later = shadow_pairs(conn, PRIMARY, SHADOW, since=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
        other_client = shadow_pairs(conn, PRIMARY, SHADOW, client="someone-else")
    assert [p.job_id for p in judged] == [p.job_id for p in pairs]  # the job-time window, oldest first
    assert all(p.ground_truth == ("pathology" if p.shadow_probability >= 0.5 else "normal") for p in judged)
    assert later == [] and other_client == []
    report = client.get(f"/v1/models/{PRIMARY}/performance").json()
    shadows = {s["model"]: s for s in report["shadows"]}
    assert set(shadows) == {SHADOW, BROKEN}
    assert shadows[BROKEN]["paired"] == 0 and shadows[BROKEN]["agreement"]["rate"] is None
    mine = shadows[SHADOW]
    assert (mine["paired"], mine["with_feedback"]) == (len(chosen), len(chosen))
    assert mine["agreement"]["count"] == sum(p.primary_label == p.shadow_label for p in pairs)
    labels = [int(rows[str(p.job_id)]["probability"] >= 0.5) for p in pairs]
    expected = model_figures(
        [p.shadow_probability for p in pairs], labels, {"t": 0.5}, n_boot=report["bootstrap"]
    )
    assert mine["live"]["n"] == expected.n and mine["live"]["n_pathology"] == expected.n_pathology
    assert mine["live"]["auc"]["value"] == expected.auc.value
    assert mine["primary_live"]["n"] == len(chosen)

    # shadow results go with their job
    gone = next(iter(chosen))
    assert client.delete(f"/v1/jobs/{gone}").status_code == 204
    assert gone not in _shadow_rows(settings)
