"""Knowing when it does not know, end to end: upload → job → real worker (demo model) → result, webhook.

A study that is not a chest CT (phantom families of :mod:`ml.phantom.families`: a head, a
water-cylinder QA phantom) comes back ``indeterminate`` with its reasons, every operating-point
decision ``indeterminate``, the probability still reported, and the webhook says so; a chest
phantom on the demo model's training grid keeps its decision. The OOD block is checked against
whatever OOD statistics the repository manifest carries (method and threshold read from it, never
hard-coded); without an ``ood`` block the result has ``ood: null`` and only the pixel plausibility
check can make a study indeterminate. No answer of the API is a 5xx. The real sample
(``realdata``) is in tests/e2e/test_serve.py, run once through ``service4ct serve``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import LiveApi, Receiver, new_key, wait_for, wait_job  # type: ignore[import-not-found]

from app.config import Settings
from app.db import connect
from app.schemas import JobResult
from app.webhooks import SIGNATURE_HEADER, verify
from app.worker.runner import Worker
from ml.model import Manifest, OODRef
from ml.ood.reasons import INDETERMINATE_REASONS, REASON_OUT_OF_DISTRIBUTION
from ml.phantom import make_family, make_study, write_family_study

#: the demo model's training grid (128² pixels of 3 mm, 2.5 mm slices): in-distribution chest phantoms
DEMO_GRID: dict[str, Any] = {"rows": 128, "cols": 128, "pixel_spacing_mm": 3.0, "slice_spacing_mm": 2.5}
CLIENT = "site-ood"


@dataclass
class Service:
    """The API client of this module, the service's settings and the served model's OOD block."""

    client: httpx.Client
    settings: Settings
    ood: OODRef | None  # None: the repository manifest has no OOD statistics for the model
    statuses: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, status) answered

    def check_no_5xx(self) -> None:
        assert self.statuses, "no request was recorded"
        assert [s for s in self.statuses if s[2] >= 500] == [], "the API answered 5xx"

    def secret(self) -> str:
        assert self.settings.database_url
        with connect(self.settings.database_url) as conn:
            row = conn.execute("SELECT webhook_secret FROM clients WHERE name = %s", (CLIENT,)).fetchone()
        assert row is not None
        return str(row["webhook_secret"])

    def predict(self, zip_path: Path, explain: str, callback_url: str) -> tuple[str, dict[str, Any]]:
        """Upload, predict, wait: (job id, result)."""
        c = self.client
        r = c.post("/v1/studies", content=zip_path.read_bytes(), headers={"content-type": "application/zip"})
        assert r.status_code in (200, 201), r.text
        body = {"study_id": r.json()["study_id"], "explain": explain, "callback_url": callback_url}
        r = c.post("/v1/jobs", json=body)
        assert r.status_code == 202, r.text
        job: str = r.json()["job_id"]
        status = wait_job(c, job)
        assert status["state"] == "succeeded", status
        r = c.get(f"/v1/jobs/{job}/result")
        assert r.status_code == 200, r.text
        result: dict[str, Any] = r.json()
        JobResult.model_validate(result)
        return job, result


@pytest.fixture(scope="module")
def svc(api: LiveApi, worker: Worker, settings: Settings) -> Iterator[Service]:
    ood = Manifest.load(settings.manifest_path).get(None).ood
    key = new_key(settings, CLIENT)
    statuses: list[tuple[str, str, int]] = []

    def record(r: httpx.Response) -> None:
        statuses.append((r.request.method, r.request.url.path, r.status_code))

    with api.client(key, event_hooks={"response": [record]}) as c:
        yield Service(c, settings, ood, statuses)


def _check_ood(result: dict[str, Any], ref: OODRef | None) -> None:
    """The result's OOD block agrees with the manifest's statistics and with the reasons."""
    flagged_reason = REASON_OUT_OF_DISTRIBUTION in result["indeterminate_reasons"]
    if ref is None:
        assert result["ood"] is None and not flagged_reason, result
        return
    ood = result["ood"]
    assert ood is not None, "the manifest has OOD statistics but the result has no ood block"
    assert ood["method"] == ref.method and ood["threshold"] == pytest.approx(ref.threshold)
    assert ood["flagged"] is (ood["score"] > ood["threshold"])
    assert ood["flagged"] is flagged_reason, (ood, result["indeterminate_reasons"])


def _check_webhook(svc: Service, hook: Receiver, job: str, result: dict[str, Any]) -> None:
    wait_for(lambda: any(p["job_id"] == job for p in hook.payloads()), timeout=30, what="webhook")
    delivered = zip(hook.requests, hook.payloads(), strict=True)
    req, payload = next((r, p) for r, p in delivered if p["job_id"] == job)
    assert verify(svc.secret(), req["body"], req["headers"][SIGNATURE_HEADER])
    assert payload["event"] == "job.succeeded"
    assert payload["label"] == result["label"]
    assert payload["indeterminate_reasons"] == result["indeterminate_reasons"]
    assert payload["probability"] == pytest.approx(result["probability"])


@pytest.mark.parametrize(("family", "seed"), [("head", 1), ("water_cylinder", 2)])
def test_a_study_that_is_not_a_chest_ct_is_indeterminate(
    svc: Service, tmp_path: Path, family: str, seed: int
) -> None:
    zp = tmp_path / f"{family}.zip"
    write_family_study(zp, make_family(family, seed))
    with Receiver() as hook:
        job, result = svc.predict(zp, "gradcam", hook.url)
        assert result["label"] == "indeterminate", result
        reasons = result["indeterminate_reasons"]
        assert "no_lungs_found" in reasons and set(reasons) <= set(INDETERMINATE_REASONS), reasons
        assert len(set(reasons)) == len(reasons)
        # every operating point: no decision, but the probability is still there
        assert set(result["decision"]) == set(result["operating_points"])
        assert set(result["decision"].values()) == {"indeterminate"}
        assert 0.0 <= result["probability"] <= 1.0
        plaus = result["qc"]["plausibility"]
        assert "no_lungs_found" in plaus["reasons"] and plaus["lung_volume_ml"] >= 0
        assert [r for r in reasons if r != REASON_OUT_OF_DISTRIBUTION] == plaus["reasons"]
        _check_ood(result, svc.ood)
        _check_webhook(svc, hook, job, result)

    # the rest of the service serves an indeterminate job as any other
    status = svc.client.get(f"/v1/jobs/{job}").json()
    assert status["state"] == "succeeded" and status["error"] is None
    expl = svc.client.get(f"/v1/jobs/{job}/explanation")
    assert expl.status_code == 200 and expl.json()["method"] == "gradcam"
    assert svc.client.get(f"/viewer/{job}").status_code == 200
    svc.check_no_5xx()


def test_a_chest_phantom_keeps_its_decision(svc: Service, tmp_path: Path) -> None:
    studies = [
        make_study(tmp_path / "n.zip", seed=22, label=0, **DEMO_GRID),
        make_study(tmp_path / "p.zip", seed=21, label=1, difficulty=(0.9, 1.0), **DEMO_GRID),
    ]
    with Receiver() as hook:
        for info in studies:
            job, result = svc.predict(info.zip_path, "none", hook.url)
            assert result["label"] in ("normal", "pathology"), result
            assert result["indeterminate_reasons"] == []
            assert set(result["decision"].values()) <= {"normal", "pathology"}
            assert result["decision"][result["operating_point"]] == result["label"]
            assert result["qc"]["plausibility"]["reasons"] == []
            _check_ood(result, svc.ood)
            if svc.ood is not None:
                assert result["ood"]["flagged"] is False, result["ood"]
            _check_webhook(svc, hook, job, result)
    svc.check_no_5xx()
