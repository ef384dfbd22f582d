"""Per-client quotas through the real API processes: request rate (shared in Redis) and queued jobs."""

from __future__ import annotations

import concurrent.futures as cf
import subprocess
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis
from conftest import LiveApi, free_port, new_key, run_cli  # type: ignore[import-not-found]

from app.config import Settings
from app.db import Database, connect
from app.quotas import Quotas
from app.repository.quotas import KEEP, set_quota
from ml.phantom import make_study


@pytest.fixture(scope="module")
def second_api(settings: Settings) -> Iterator[LiveApi]:
    """A second API process on the same stack: quotas must hold across processes."""
    with LiveApi(settings) as live:
        yield live


@pytest.fixture(scope="module")
def study_zip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    p = tmp_path_factory.mktemp("zips") / "study.zip"
    make_study(p, seed=5, label=0)
    return p.read_bytes()


def _client_with(settings: Settings, **quota: int | None) -> str:
    name = f"quota-{uuid.uuid4().hex[:10]}"
    key = new_key(settings, name)
    assert settings.database_url
    with connect(settings.database_url) as conn:
        set_quota(conn, name, **quota)  # type: ignore[arg-type]
    return key


def _upload(c: httpx.Client, data: bytes) -> str:
    r = c.post("/v1/studies", content=data, headers={"content-type": "application/zip"})
    assert r.status_code in (200, 201), r.text
    study_id: str = r.json()["study_id"]
    return study_id


def test_request_rate_is_shared_by_api_processes_and_answers_429_with_retry_after(
    settings: Settings, api: LiveApi, second_api: LiveApi
) -> None:
    key = _client_with(settings, rate_limit_per_minute=4)
    other = _client_with(settings)
    missing = f"/v1/jobs/{uuid.uuid4()}"
    with api.client(key) as a, second_api.client(key) as b, api.client(other) as o:
        # four requests, alternating between the two processes, are admitted (404: no such job)
        assert [c.get(missing).status_code for c in (a, b, a, b)] == [404] * 4
        for c in (a, b):  # the fifth is refused by whichever process gets it
            r = c.get(missing)
            assert r.status_code == 429, r.text
            assert r.json()["error"] == "rate_limited" and r.json()["request_id"]
            assert 1 <= int(r.headers["Retry-After"]) <= 15  # one request every 60/4 s
        # another client is not affected
        assert [o.get(missing).status_code for _ in range(10)] == [404] * 10


def test_a_request_without_a_valid_key_is_not_counted(settings: Settings, api: LiveApi) -> None:
    key = _client_with(settings, rate_limit_per_minute=2)
    with api.client("s4ct_not-a-key") as stranger, api.client(key) as c:
        assert all(stranger.get("/v1/models").status_code == 401 for _ in range(5))
        assert [c.get("/v1/models").status_code for _ in range(3)] == [200, 200, 429]


def test_queued_jobs_quota_refuses_the_job_beyond_it(
    settings: Settings, api: LiveApi, second_api: LiveApi, study_zip: bytes
) -> None:
    key = _client_with(settings, max_queued_jobs=2)  # no worker runs here: jobs stay queued
    with api.client(key) as a, second_api.client(key) as b:
        study = _upload(a, study_zip)
        body = {"study_id": study, "explain": "none"}
        first = a.post("/v1/jobs", json=body, headers={"Idempotency-Key": "quota-1"})
        assert first.status_code == 202
        assert b.post("/v1/jobs", json=body).status_code == 202
        r = a.post("/v1/jobs", json=body)
        assert r.status_code == 429 and r.json()["error"] == "quota_exceeded", r.text
        assert r.headers["Retry-After"] == str(settings.quota_retry_after_s)
        r = b.post(f"/v1/studies/{study}/predict", json={"explain": "none"})
        assert r.status_code == 429 and r.json()["error"] == "quota_exceeded", r.text
        # a retried request (same Idempotency-Key) replays the job it created: not a new job
        again = b.post("/v1/jobs", json=body, headers={"Idempotency-Key": "quota-1"})
        assert again.status_code == 202 and again.json()["job_id"] == first.json()["job_id"]
        # the refused request left nothing behind: the same key works once there is room
        assert settings.database_url
        with connect(settings.database_url) as conn:
            conn.execute("UPDATE jobs SET state = 'running' WHERE id = %s", (first.json()["job_id"],))
        assert a.post("/v1/jobs", json=body).status_code == 202


def test_concurrent_creations_in_two_processes_cannot_overshoot_the_quota(
    settings: Settings, api: LiveApi, second_api: LiveApi, study_zip: bytes
) -> None:
    key = _client_with(settings, max_queued_jobs=3)
    with api.client(key) as a, second_api.client(key) as b:
        study = _upload(a, study_zip)
        body = {"study_id": study, "explain": "none"}
        with cf.ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda i: (a, b)[i % 2].post("/v1/jobs", json=body).status_code, range(8)))
    assert sorted(codes) == [202] * 3 + [429] * 5, codes


def test_the_rate_limit_lets_requests_through_when_redis_is_unreachable(settings: Settings) -> None:
    assert settings.database_url
    name = f"quota-{uuid.uuid4().hex[:10]}"
    new_key(settings, name)
    capped = settings.model_copy(update={"rate_limit_per_minute": 1})
    db = Database(settings.database_url)
    db.open()
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.5)
    try:
        quotas = Quotas(capped, db, dead)
        quotas.admit(name)  # no 429, no exception: the counter is down, the API is not
        t0 = time.monotonic()
        for _ in range(50):
            quotas.admit(name)  # and the next requests do not wait for Redis to fail again
        assert time.monotonic() - t0 < 2.0
    finally:
        db.close()
        dead.close()


def test_operators_set_and_reset_quotas_with_the_cli(settings: Settings) -> None:
    name = f"quota-{uuid.uuid4().hex[:10]}"
    new_key(settings, name)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(settings, "client", "quota", *args)

    r = cli(name, "--rate-per-minute", "120", "--max-queued", "5")
    assert r.returncode == 0, r.stderr
    assert "rate per minute: 120" in r.stdout and "max queued jobs: 5" in r.stdout
    r = cli(name, "--rate-per-minute", "0")  # back to the default; the other limit stays
    assert r.returncode == 0, r.stderr
    assert "rate per minute: no limit (default)" in r.stdout and "max queued jobs: 5" in r.stdout
    r = cli("no-such-client", "--max-queued", "1")
    assert r.returncode == 2 and "no client" in r.stderr
    with connect(str(settings.database_url)) as conn:
        assert set_quota(conn, name, rate_limit_per_minute=KEEP).max_queued_jobs == 5  # type: ignore[union-attr]
