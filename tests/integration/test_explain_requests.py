"""Explanation requests at the API: the cost model's refusals, and identical requests answered once.

The API runs against real PostgreSQL, Redis and S3; no worker is needed (the parent job
is finished through the repository calls a worker makes, see ``seeding.py``).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from conftest import LiveApi  # type: ignore[import-not-found]
from seeding import Seeded, seed_client  # type: ignore[import-not-found]

from app.db import connect


@pytest.fixture(scope="module")
def owner(api: LiveApi) -> Seeded:
    return seed_client(api, "explainer")


COSTLY: list[tuple[str, dict[str, Any], str]] = [
    ("integrated_gradients", {"internal_batch_size": 64, "steps": 64}, "explain_too_costly"),  # ≈ 22 GiB
    ("occlusion", {"window": 8}, "explain_too_costly"),  # 4097 forward passes
    ("occlusion", {"window": 2, "stride": 1}, "validation_error"),  # what the worker always refused
    ("occlusion", {"window": 16, "stride": 32}, "validation_error"),
]


@pytest.mark.parametrize(("method", "params", "code"), COSTLY)
def test_the_api_refuses_what_the_worker_would_refuse_or_what_exceeds_the_budget(
    api: LiveApi, owner: Seeded, method: str, params: dict[str, Any], code: str
) -> None:
    with api.client(owner.key) as c:
        for path, body in (
            ("/v1/jobs", {"study_id": owner.study_id, "explain": method, "explain_params": params}),
            (f"/v1/jobs/{owner.jobs['succeeded']}/explain", {"method": method, "params": params}),
        ):
            r = c.post(path, json=body)
            assert r.status_code == 422, r.text
            assert r.json()["error"] == code, r.json()
    assert api.settings.database_url
    with connect(api.settings.database_url) as conn:
        row = conn.execute(
            "SELECT count(*) AS n FROM jobs WHERE client = %s AND explain = %s", (owner.client, method)
        ).fetchone()
    assert row is not None and row["n"] == 0  # nothing was queued


def test_identical_explain_requests_return_the_existing_job(api: LiveApi, owner: Seeded) -> None:
    parent = owner.jobs["succeeded"]
    with api.client(owner.key) as c:
        # the parent already has a gradcam explanation (default parameters): that job comes back
        same = c.post(f"/v1/jobs/{parent}/explain", json={"method": "gradcam"})
        assert same.status_code == 200, same.text
        assert same.json()["job_id"] == parent and same.headers["location"] == f"/v1/jobs/{parent}"
        spelled = c.post(f"/v1/jobs/{parent}/explain", json={"method": "gradcam", "params": {}})
        assert spelled.status_code == 200 and spelled.json()["job_id"] == parent

        first = c.post(f"/v1/jobs/{parent}/explain", json={"method": "integrated_gradients"})
        assert first.status_code == 202, first.text
        job = first.json()["job_id"]
        # the same request while that job is queued: the same job, nothing new queued
        again = c.post(
            f"/v1/jobs/{parent}/explain", json={"method": "integrated_gradients", "params": {"steps": 32}}
        )
        assert again.status_code == 200 and again.json()["job_id"] == job
        other = c.post(
            f"/v1/jobs/{parent}/explain", json={"method": "integrated_gradients", "params": {"steps": 16}}
        )
        assert other.status_code == 202 and other.json()["job_id"] != job
        # with an Idempotency-Key, the replay is the first answer
        key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
        a = c.post(f"/v1/jobs/{parent}/explain", json={"method": "saliency"}, headers=key)
        b = c.post(f"/v1/jobs/{parent}/explain", json={"method": "saliency"}, headers=key)
        assert a.status_code == b.status_code == 202 and a.json() == b.json()
    assert api.settings.database_url
    with connect(api.settings.database_url) as conn:
        rows = conn.execute(
            "SELECT explain, count(*) AS n FROM jobs WHERE parent_job_id = %s GROUP BY explain",
            (uuid.UUID(parent),),
        ).fetchall()
    assert {r["explain"]: r["n"] for r in rows} == {"integrated_gradients": 2, "saliency": 1}
