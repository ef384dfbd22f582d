"""deploy/laravel end to end: the Laravel app drives the real service (``make test-laravel``, slow).

Real parts on both sides, nothing mocked: ``service4ct serve`` (API + worker) on the embedded
PostgreSQL, Redis and S3; the Laravel app on Debian's framework with ``php artisan queue:work
redis`` on Redis databases of its own and its webhook route served by ``php -S``. What a Laravel
developer relies on is checked through the app's own log (JSON lines) and the service's database:
streamed uploads, one service job per queued job even when the queue worker is killed mid-job,
one webhook handled once (a redelivery ignored), the result and the explanation links read
through Laravel, and every error class of the API as a ``Service4CTException`` with its stable
code and request id, released with the service's ``Retry-After`` or failed at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from laravel_app import LaravelApp, missing  # type: ignore[import-not-found, unused-ignore]
from phi_guard import watch_log

from app.config import Settings
from app.db import connect
from app.devstack import EmbeddedStack
from app.devstack.serve import worker_env
from app.errors import SERVICE_ERROR_CODES
from app.webhooks import sign
from ml.phantom import make_study

from conftest import free_port  # type: ignore[import-not-found, unused-ignore]

ROOT = Path(__file__).resolve().parents[2]
WHY_NOT = missing()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")]

LARAVEL_DB, LARAVEL_CACHE_DB = 7, 8  # the app's own Redis databases (the service uses 0)
PREFIX = "service4ct_laravel_"  # config/database.php's REDIS_PREFIX default
RETRY_AFTER_S = 45  # the app's queue retry_after: a killed worker's job is handed out again after it


@dataclass
class Service:
    settings: Settings
    base: str
    key: str
    secret: str

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {self.key}"}, timeout=60)

    def sql(self, query: str, *args: Any) -> list[dict[str, Any]]:
        assert self.settings.database_url
        with connect(self.settings.database_url) as conn:
            return list(conn.execute(query, args).fetchall())


@contextlib.contextmanager
def _service_process(settings: Settings, log: Path, command: str) -> Iterator[str]:
    """``python -m app.cli COMMAND --port P`` (serve or api) with ``settings``; its base URL once ready."""
    port = free_port()
    watch_log(log)  # scanned for patient identifiers at the end of the session
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", command, "--port", str(port)],
            cwd=ROOT,
            env=worker_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        ready = "/readyz" if command == "serve" else "/healthz"
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + ready, timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{command} did not become ready:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def service(make_settings: Callable[..., Settings], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    settings = make_settings()
    logs = tmp_path_factory.mktemp("laravel-service")
    with _service_process(settings, logs / "serve.log", "serve") as base:
        created = subprocess.run(
            [sys.executable, "-m", "app.cli", "apikey", "create", "laravel-e2e", "--label", "laravel"],
            cwd=ROOT,
            env=worker_env(settings),
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        key = re.search(r"api key:\s+(\S+)", created)
        secret = re.search(r"webhook secret:\s+(\S+)", created)
        assert key and secret, created
        yield Service(settings, base, key.group(1), secret.group(1))


@pytest.fixture(scope="module")
def app_redis(stack: EmbeddedStack) -> redis.Redis:
    url = httpx.URL(stack.redis_url)
    r = redis.Redis(host=url.host, port=url.port or 6379, db=LARAVEL_DB, decode_responses=True)
    r.flushdb()
    redis.Redis(host=url.host, port=url.port or 6379, db=LARAVEL_CACHE_DB).flushdb()
    return r


@pytest.fixture(scope="module")
def laravel(
    service: Service, stack: EmbeddedStack, app_redis: redis.Redis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LaravelApp]:
    url = httpx.URL(stack.redis_url)
    app = LaravelApp(
        tmp_path_factory.mktemp("laravel-app"),
        {
            "SERVICE4CT_URL": service.base,
            "SERVICE4CT_API_KEY": service.key,
            "SERVICE4CT_WEBHOOK_SECRET": service.secret,
            "SERVICE4CT_POLL_TIMEOUT": "20",
            "REDIS_HOST": str(url.host),
            "REDIS_PORT": str(url.port),
            "REDIS_DB": str(LARAVEL_DB),
            "REDIS_CACHE_DB": str(LARAVEL_CACHE_DB),
            "QUEUE_RETRY_AFTER": str(RETRY_AFTER_S),
        },
    )
    watch_log(app.log)
    try:
        yield app
    finally:
        app.stop_all()


@pytest.fixture(scope="module")
def webhook_url(laravel: LaravelApp) -> str:
    port = free_port()
    laravel.http_server(port)
    return f"http://127.0.0.1:{port}/api/service4ct/webhook"


def _submit(app: LaravelApp, zip_path: Path, ref: str, callback: str = "") -> None:
    out = app.artisan("service4ct:submit", str(zip_path), f"--ref={ref}", f"--callback={callback}")
    assert out.returncode == 0, out.stdout + out.stderr


def _jobs_of_study(service: Service, study_id: str) -> int:
    return int(service.sql("SELECT count(*) AS n FROM jobs WHERE study_id = %s", study_id)[0]["n"])


# ---------------------------------------------------------------------------- the flows


def test_study_through_laravel_with_the_webhook(
    service: Service, laravel: LaravelApp, webhook_url: str, tmp_path: Path
) -> None:
    """Queued job → streamed upload → service job → signed webhook → event once → result read."""
    study = tmp_path / "large.zip"
    make_study(study, seed=21, label=1, rows=512, cols=512, n_slices=64)  # ~11 MB
    size = study.stat().st_size
    worker = laravel.queue_worker()
    _submit(laravel, study, "flow-1", webhook_url)

    uploaded = laravel.wait_record("service4ct study uploaded", study_ref="flow-1")["context"]
    # streamed: the upload did not hold the ZIP in PHP's memory
    assert uploaded["upload_memory_bytes"] < size / 4, (uploaded, size)
    job_id = laravel.wait_record("service4ct job queued", study_ref="flow-1")["context"]["job_id"]
    read = laravel.wait_record("service4ct result read", timeout=600, job_id=job_id)["context"]
    print(f"result read through Laravel: {json.dumps(read)}")
    assert read["label"] in ("normal", "pathology", "indeterminate") and 0 <= read["probability"] <= 1
    assert read["model"] == "resnet10-demo" and read["explanation_method"] == "gradcam"
    assert "sprite_png" in read["explanation_links"] and "nifti" in read["explanation_links"], read

    accepted = laravel.records("service4ct webhook accepted", job_id=job_id)
    assert len(accepted) == 1, accepted
    assert _jobs_of_study(service, uploaded["study_id"]) == 1

    # the service redelivers (as after a lost 2xx): the same delivery id, recognised and ignored
    (row,) = service.sql(
        "UPDATE webhook_outbox SET delivered_at = NULL, next_attempt_at = now() WHERE job_id = %s "
        "RETURNING id",
        uuid.UUID(job_id),
    )
    laravel.wait_record("service4ct webhook duplicate ignored", delivery=str(row["id"]), timeout=60)
    # a forged or altered delivery never reaches the controller's work
    body = json.dumps({"event": "job.succeeded", "job_id": job_id, "state": "succeeded"}).encode()
    headers = {"Content-Type": "application/json", "X-Service4CT-Delivery": "forged"}
    for signature in (sign("not-the-secret", body), sign(service.secret, body + b" ")):
        r = httpx.post(webhook_url, content=body, headers={**headers, "X-Service4CT-Signature": signature})
        assert r.status_code == 401, r.text
    time.sleep(3)  # anything wrongly queued by these would have run by now
    assert len(laravel.records("service4ct webhook accepted", job_id=job_id)) == 1
    finished = laravel.records("service4ct job finished", job_id=job_id)
    assert len(finished) == 1 and finished[0]["context"]["state"] == "succeeded", finished
    assert worker.poll() is None, laravel.output("worker")
    print(f"webhook handled once for job {job_id}; redelivery {row['id']} ignored")


def test_worker_killed_mid_job_retries_into_the_same_service_job(
    service: Service, laravel: LaravelApp, tmp_path: Path
) -> None:
    """SIGKILL the queue worker after the job was created, before it finished: one service job."""
    app = laravel.with_env(REDIS_QUEUE="kill")
    study = tmp_path / "small.zip"
    make_study(study, seed=22, label=0)
    worker = app.queue_worker()
    _submit(app, study, "kill-1")  # no callback URL: the queued job polls the service
    queued = app.wait_record("service4ct job queued", study_ref="kill-1")["context"]
    app.kill(worker)  # mid-job: the service job exists, the queued job is not finished
    assert not app.records("service4ct job finished", job_id=queued["job_id"])

    app.queue_worker()  # the job is handed out again after the queue's retry_after
    read = app.wait_record("service4ct result read", timeout=RETRY_AFTER_S + 300, job_id=queued["job_id"])
    again = [r["context"] for r in app.records("service4ct job queued", study_ref="kill-1")]
    assert [c["attempt"] for c in again] == [1, 2], again
    assert {c["job_id"] for c in again} == {queued["job_id"]}  # the Idempotency-Key replayed it
    study_id = app.records("service4ct study uploaded", study_ref="kill-1")[0]["context"]["study_id"]
    assert _jobs_of_study(service, study_id) == 1
    assert len(app.records("service4ct job finished", job_id=queued["job_id"])) == 1
    print(f"killed mid-job, retried: one service job {queued['job_id']}, result {read['context']['label']}")
