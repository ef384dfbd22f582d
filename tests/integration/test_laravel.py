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
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from conftest import free_port  # type: ignore[import-not-found, unused-ignore]
from laravel_app import LaravelApp, missing  # type: ignore[import-not-found, unused-ignore]
from phi_guard import watch_log

from app.config import Settings
from app.db import connect
from app.devstack import EmbeddedStack
from app.devstack.serve import worker_env
from app.webhooks import sign
from ml.phantom import make_study

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
            # callbacks go to the app's php -S on loopback (a development set-up, allowed explicitly)
            env={
                **worker_env(settings),
                "S4CT_WEBHOOK_ALLOW_PRIVATE": "true",
                "S4CT_WEBHOOK_ALLOW_LOOPBACK": "true",
            },
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
        proc.terminate()  # serve stops its worker and the API; SIGKILL only if that hangs
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=90)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def service(
    make_settings: Callable[..., Settings], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
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


def _redis_env(stack: EmbeddedStack) -> dict[str, str]:
    """REDIS_* of the app: the stack's Redis server (its password, if any), the app's own databases."""
    url = httpx.URL(stack.redis_url)
    env = {"REDIS_HOST": url.host, "REDIS_PORT": str(url.port or 6379)}
    if url.password:
        env["REDIS_PASSWORD"] = url.password
    return {**env, "REDIS_DB": str(LARAVEL_DB), "REDIS_CACHE_DB": str(LARAVEL_CACHE_DB)}


@pytest.fixture(scope="module")
def app_redis(stack: EmbeddedStack) -> redis.Redis:
    env = _redis_env(stack)
    server = {
        "host": env["REDIS_HOST"],
        "port": int(env["REDIS_PORT"]),
        "password": env.get("REDIS_PASSWORD"),
    }
    redis.Redis(**server, db=LARAVEL_CACHE_DB).flushdb()
    r = redis.Redis(**server, db=LARAVEL_DB, decode_responses=True)
    r.flushdb()
    return r


@pytest.fixture(scope="module")
def laravel(
    service: Service, stack: EmbeddedStack, app_redis: redis.Redis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LaravelApp]:
    app = LaravelApp(
        tmp_path_factory.mktemp("laravel-app"),
        {
            "SERVICE4CT_URL": service.base,
            "SERVICE4CT_API_KEY": service.key,
            "SERVICE4CT_WEBHOOK_SECRET": service.secret,
            "SERVICE4CT_POLL_TIMEOUT": "20",
            "QUEUE_RETRY_AFTER": str(RETRY_AFTER_S),
            **_redis_env(stack),
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


def _json_lines(out: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert out.returncode == 0, out.stdout + out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


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
    assert "heat_layer" in read["explanation_links"] and "nifti" in read["explanation_links"], read

    accepted = laravel.records("service4ct webhook accepted", job_id=job_id)
    assert len(accepted) == 1, accepted
    assert _jobs_of_study(service, uploaded["study_id"]) == 1

    # the product hands the browser a viewer token of this job, never its API key
    shown = laravel.artisan("service4ct:show", job_id, "--result", "--viewer-token")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    out = json.loads(shown.stdout[shown.stdout.index("{") :])
    assert out["result"]["label"] == read["label"] and out["viewer_token"]["job_id"] == job_id
    token = out["viewer_token"]["token"]
    with httpx.Client(base_url=service.base, headers={"Authorization": f"Bearer {token}"}) as viewer:
        assert viewer.get(f"/v1/jobs/{job_id}/result").json()["label"] == read["label"]
        assert viewer.get("/v1/models").status_code == 403  # nothing but this job

    # the service redelivers (as after a lost 2xx): the same delivery id, recognised and ignored
    (row,) = service.sql(
        "UPDATE webhook_outbox SET delivered_at = NULL, next_attempt_at = now() WHERE job_id = %s "
        "RETURNING id",
        uuid.UUID(job_id),
    )
    laravel.wait_record("service4ct webhook duplicate ignored", delivery=str(row["id"]), timeout=60)
    # a forged or altered delivery never reaches the controller's work
    body = json.dumps({"event": "job.succeeded", "job_id": job_id, "state": "succeeded"}).encode()
    d, e = "forged", "job.succeeded"
    headers = {"Content-Type": "application/json", "X-Service4CT-Delivery": d, "X-Service4CT-Event": e}
    for signature in (
        sign("not-the-secret", body, delivery=d, event=e),
        sign(service.secret, body + b" ", delivery=d, event=e),  # body altered
        sign(service.secret, body, delivery=str(row["id"]), event=e),  # another delivery's id
        sign(service.secret, body),  # v1 only
    ):
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


def test_worklist_through_laravel_list_priority_and_cancel(
    service: Service, laravel: LaravelApp, webhook_url: str, tmp_path: Path
) -> None:
    """client_ref, metadata, priority reach the service; the list follows cursors; one job.cancelled."""
    app = laravel.with_env(REDIS_QUEUE="worklist")
    app.queue_worker()  # the submissions
    laravel.queue_worker()  # the queued listener (default queue)
    refs = {"wl-1": "urgent", "wl-2": "routine", "wl-3": "routine", "wl-cancel": "routine"}
    for seed, (ref, priority) in enumerate(refs.items(), start=41):
        study = tmp_path / f"{ref}.zip"
        make_study(study, seed=seed, label=seed % 2)
        out = app.artisan(
            "service4ct:submit",
            str(study),
            f"--ref={ref}",
            f"--callback={webhook_url}",
            f"--priority={priority}",
            f"--metadata={json.dumps({'row': seed})}",
        )
        assert out.returncode == 0 and f"queued {ref} ({priority})" in out.stdout, out.stdout + out.stderr
    ids = {ref: app.wait_record("service4ct job queued", study_ref=ref)["context"]["job_id"] for ref in refs}

    # cancel right after submission, behind three jobs: queued (or just started) → cancelled
    cancel_id = ids["wl-cancel"]
    (before,) = service.sql("SELECT state FROM jobs WHERE id = %s", uuid.UUID(cancel_id))
    assert before["state"] in ("queued", "running"), before
    for _ in range(2):  # idempotent
        out = app.artisan("service4ct:cancel", cancel_id)
        assert out.returncode == 0, out.stdout + out.stderr
        status = json.loads(out.stdout[out.stdout.index("{") :])
        assert (status["job_id"], status["state"], status["client_ref"]) == (
            cancel_id,
            "cancelled",
            "wl-cancel",
        )
    accepted = laravel.wait_record("service4ct webhook accepted", job_id=cancel_id, timeout=120)["context"]
    assert (accepted["event"], accepted["client_ref"]) == ("job.cancelled", "wl-cancel"), accepted
    finished = laravel.wait_record("service4ct job finished", job_id=cancel_id, timeout=120)["context"]
    assert (finished["state"], finished["client_ref"]) == ("cancelled", "wl-cancel"), finished

    # the service's rows carry what Laravel sent
    rows = {
        r["client_ref"]: r
        for r in service.sql(
            "SELECT client_ref, priority, metadata, state FROM jobs WHERE id = ANY(%s)",
            [uuid.UUID(i) for i in ids.values()],
        )
    }
    assert {ref: r["priority"] for ref, r in rows.items()} == refs, rows
    assert rows["wl-cancel"]["state"] == "cancelled" and rows["wl-1"]["metadata"] == {"row": 41}, rows

    # every job of the client, one per page: the cursor is followed to the end, nothing repeated
    items = _json_lines(app.artisan("service4ct:list", "--limit=1", "--json"))
    listed = [i["job_id"] for i in items]
    assert set(ids.values()) <= set(listed) and len(listed) == len(set(listed)) >= 4, listed
    pages = re.search(r"(\d+) jobs, (\d+) pages", app.artisan("service4ct:list", "--limit=1").stdout)
    assert pages and int(pages.group(2)) >= int(pages.group(1)) >= 4, pages
    by_id = {i["job_id"]: i for i in items}
    assert (by_id[ids["wl-1"]]["priority"], by_id[ids["wl-1"]]["metadata"]) == ("urgent", {"row": 41})
    # found by the product's own reference; several states in one filter
    (found,) = _json_lines(app.artisan("service4ct:list", "--client-ref=wl-2", "--limit=1", "--json"))
    assert (found["job_id"], found["client_ref"], found["priority"]) == (ids["wl-2"], "wl-2", "routine")
    done = _json_lines(app.artisan("service4ct:list", "--state=cancelled", "--state=failed", "--json"))
    assert cancel_id in {j["job_id"] for j in done} and {j["state"] for j in done} <= {"cancelled", "failed"}

    # the series picker of the study, through the client
    shown = app.artisan("service4ct:show", ids["wl-2"], "--series")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    series = json.loads(shown.stdout[shown.stdout.index("{") :])["series"]
    (pick,) = [s for s in series["series"] if s["selected"]]
    assert pick["usable"] and pick["rank"] == 1 and series["selected_uid"] == pick["series_uid"], series

    # a cancelled job's webhook is handled once; the others finish as usual
    for ref in ("wl-1", "wl-2", "wl-3"):
        laravel.wait_record("service4ct result read", timeout=600, job_id=ids[ref])
    assert len(laravel.records("service4ct webhook accepted", job_id=cancel_id)) == 1
    assert len(laravel.records("service4ct job finished", job_id=cancel_id)) == 1
    assert not laravel.records("service4ct result read", job_id=cancel_id)
    print(f"listed {pages.group(1)} jobs in {pages.group(2)} pages by cursor")
    print(f"cancelled {cancel_id} ({before['state']} before), its job.cancelled webhook handled once")


# ---------------------------------------------------------------------------- error classes


@pytest.fixture(scope="module")
def tight_api(service: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second API process of the same service with small limits: 1 MB uploads, one upload at a time."""
    settings = service.settings.model_copy(
        update={"max_upload_bytes": 1_000_000, "max_concurrent_uploads": 1, "upload_wait_s": 8.0}
    )
    with _service_process(settings, tmp_path_factory.mktemp("tight") / "api.log", "api") as base:
        yield base


@pytest.fixture(scope="module")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("studies") / "small.zip"
    make_study(path, seed=31, label=1)
    return path


def _queued_uuid(r: redis.Redis, queue: str) -> str:
    (raw,) = r.lrange(f"{PREFIX}queues:{queue}", 0, -1)
    return str(json.loads(raw)["uuid"])


def _upload_key(job_uuid: str, ref: str) -> str:
    """The Idempotency-Key SubmitStudyToService4CT sends for its upload (see idempotencyKey())."""
    return "laravel:" + hashlib.sha256(f"{job_uuid}|{ref}|upload".encode()).hexdigest()


def _earlier_attempt_uploaded(service: Service, r: redis.Redis, queue: str, zip_path: Path) -> str:
    """Upload ``zip_path`` under the Idempotency-Key of the job queued on ``queue`` (ref = queue)."""
    key = _upload_key(_queued_uuid(r, queue), queue)
    with service.client() as c:
        up = c.post(
            "/v1/studies",
            content=zip_path.read_bytes(),
            # the same request as the job's: the reference is part of it
            headers={"Content-Type": "application/zip", "Idempotency-Key": key, "X-Client-Ref": queue},
        )
    assert up.status_code in (200, 201), up.text
    return str(up.json()["study_id"])


def _work_once(app: LaravelApp) -> None:
    out = app.artisan("queue:work", "redis", "--once", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def _failed_at_once(app: LaravelApp, r: redis.Redis, queue: str, ref: str, code: str, status: int) -> None:
    """The job met the error once, carried its code and request id, failed, and left the queue."""
    failed = [x["context"] for x in app.records("service4ct submission failed", study_ref=ref)]
    assert len(failed) == 1, app.records(study_ref=ref)
    ctx = failed[0]
    assert (ctx["error"], ctx["status"], ctx["attempt"]) == (code, status, 1), ctx
    assert ctx["request_id"], ctx  # the id to quote, from the error body
    assert not app.records("service4ct asks to retry later", study_ref=ref)
    for suffix in ("", ":delayed", ":reserved"):
        assert r.exists(f"{PREFIX}queues:{queue}{suffix}") == 0, suffix  # not released, not retried


def test_401_a_wrong_key_fails_the_job_at_once(
    laravel: LaravelApp, app_redis: redis.Redis, small_study: Path
) -> None:
    app = laravel.with_env(REDIS_QUEUE="e401", SERVICE4CT_API_KEY="s4ct_" + "x" * 43)
    _submit(app, small_study, "e401")
    _work_once(app)
    _failed_at_once(app, app_redis, "e401", "e401", "unauthorized", 401)


def test_404_a_study_deleted_meanwhile_fails_the_job_at_once(
    service: Service, laravel: LaravelApp, app_redis: redis.Redis, small_study: Path
) -> None:
    """An earlier attempt uploaded the study (same key), then the study was deleted: 404 on predict."""
    app = laravel.with_env(REDIS_QUEUE="e404")
    _submit(app, small_study, "e404")
    study_id = _earlier_attempt_uploaded(service, app_redis, "e404", small_study)
    with service.client() as c:
        assert c.delete(f"/v1/studies/{study_id}").status_code == 204
    _work_once(app)
    _failed_at_once(app, app_redis, "e404", "e404", "study_not_found", 404)


def test_409_the_file_changed_under_the_same_key_fails_the_job_at_once(
    service: Service, laravel: LaravelApp, app_redis: redis.Redis, small_study: Path, tmp_path: Path
) -> None:
    """An earlier attempt uploaded other bytes under the job's key: idempotency_conflict, no retry."""
    app = laravel.with_env(REDIS_QUEUE="e409")
    _submit(app, small_study, "e409")
    other = tmp_path / "other.zip"
    make_study(other, seed=32, label=0)
    _earlier_attempt_uploaded(service, app_redis, "e409", other)
    _work_once(app)
    _failed_at_once(app, app_redis, "e409", "e409", "idempotency_conflict", 409)


def test_413_a_study_over_the_size_limit_fails_the_job_at_once(
    laravel: LaravelApp, app_redis: redis.Redis, tight_api: str, tmp_path: Path
) -> None:
    app = laravel.with_env(REDIS_QUEUE="e413", SERVICE4CT_URL=tight_api)
    big = tmp_path / "big.zip"
    make_study(big, seed=33, label=1, rows=384, cols=384, n_slices=48)
    assert big.stat().st_size > 1_000_000
    _submit(app, big, "e413")
    _work_once(app)
    _failed_at_once(app, app_redis, "e413", "e413", "payload_too_large", 413)


def test_422_a_file_that_is_no_zip_fails_the_job_at_once(
    laravel: LaravelApp, app_redis: redis.Redis, tmp_path: Path
) -> None:
    app = laravel.with_env(REDIS_QUEUE="e422")
    bad = tmp_path / "scan.zip"
    bad.write_bytes(b"this is a text file, not a ZIP archive\n" * 100)
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(bad)
    _submit(app, bad, "e422")
    _work_once(app)
    (failed,) = app.records("service4ct submission failed", study_ref="e422")
    _failed_at_once(app, app_redis, "e422", "e422", failed["context"]["error"], 422)
    assert failed["context"]["error"] == "zip_invalid", failed


def _cli(service: Service, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env=worker_env(service.settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout


def test_429_rate_limited_is_released_after_retry_after_then_succeeds(
    service: Service, laravel: LaravelApp, app_redis: redis.Redis, small_study: Path
) -> None:
    """Over the client's request rate: 429 rate_limited + Retry-After → released that long, then uploaded."""
    key = re.search(r"api key:\s+(\S+)", _cli(service, "apikey", "create", "laravel-429"))
    assert key
    # 30 requests a minute: a burst of 30, then one every 2 s
    assert "rate per minute: 30" in _cli(service, "client", "quota", "laravel-429", "--rate-per-minute", "30")
    with httpx.Client(base_url=service.base, headers={"Authorization": f"Bearer {key.group(1)}"}) as c:
        codes = [c.get("/v1/models").status_code for _ in range(31)]
    assert codes == [200] * 30 + [429], codes  # the burst is spent
    app = laravel.with_env(REDIS_QUEUE="e429", SERVICE4CT_API_KEY=key.group(1))
    _submit(app, small_study, "e429")
    _work_once(app)
    (later,) = app.records("service4ct asks to retry later", study_ref="e429")
    ctx = later["context"]
    assert (ctx["error"], ctx["status"]) == ("rate_limited", 429), ctx
    assert ctx["delay_s"] in (1, 2) and ctx["request_id"], ctx  # the service's Retry-After
    assert not app.records("service4ct submission failed", study_ref="e429")
    ((_, available_at),) = app_redis.zrange(f"{PREFIX}queues:e429:delayed", 0, -1, withscores=True)
    released_at = datetime.fromisoformat(later["datetime"]).timestamp()
    assert abs(available_at - (released_at + ctx["delay_s"])) <= 1, (available_at, released_at)

    time.sleep(ctx["delay_s"] + 2.5)  # Retry-After passed: the same job uploads now
    _work_once(app)
    uploaded = app.records("service4ct study uploaded", study_ref="e429")
    assert [u["context"]["attempt"] for u in uploaded] == [2], uploaded


def test_503_server_busy_is_released_after_retry_after_then_succeeds(
    service: Service, laravel: LaravelApp, app_redis: redis.Redis, tight_api: str, small_study: Path
) -> None:
    """Every upload slot busy: 503 server_busy + Retry-After 2 → released for 2 s, then uploaded."""
    app = laravel.with_env(REDIS_QUEUE="e503", SERVICE4CT_URL=tight_api)
    hold = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield b"PK\x03\x04" + b"\0" * 1000
        hold.wait(120)  # the upload holds the only slot until the test lets it go

    def occupy() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(
                f"{tight_api}/v1/studies",
                content=slow_body(),
                headers={"Authorization": f"Bearer {service.key}", "Content-Type": "application/zip"},
                timeout=180,
            )

    occupant = threading.Thread(target=occupy, daemon=True)
    occupant.start()
    try:
        time.sleep(1.5)  # the occupant's upload holds the slot
        _submit(app, small_study, "e503")
        _work_once(app)
    finally:
        hold.set()
        occupant.join(timeout=60)
    (later,) = app.records("service4ct asks to retry later", study_ref="e503")
    ctx = later["context"]
    assert (ctx["error"], ctx["status"], ctx["delay_s"]) == ("server_busy", 503, 2), ctx
    assert ctx["request_id"], ctx
    assert not app.records("service4ct submission failed", study_ref="e503")
    ((_, available_at),) = app_redis.zrange(f"{PREFIX}queues:e503:delayed", 0, -1, withscores=True)
    released_at = datetime.fromisoformat(later["datetime"]).timestamp()
    assert abs(available_at - (released_at + 2)) <= 1, (available_at, released_at)

    time.sleep(2.5)  # Retry-After passed: the same job uploads now
    _work_once(app)
    uploaded = app.records("service4ct study uploaded", study_ref="e503")
    assert [u["context"]["attempt"] for u in uploaded] == [2], uploaded


def test_connection_refused_is_retried_after_backoff(
    stack: EmbeddedStack, app_redis: redis.Redis, small_study: Path, tmp_path: Path
) -> None:
    """No service listening: Laravel's ConnectionException, the job released after backoff()[0] = 10 s."""
    app = LaravelApp(
        tmp_path / "app",
        {
            "SERVICE4CT_URL": f"http://127.0.0.1:{free_port()}",
            "SERVICE4CT_API_KEY": "s4ct_unused",
            "REDIS_QUEUE": "refused",
            **_redis_env(stack),
        },
    )
    _submit(app, small_study, "refused")
    before = time.time()
    _work_once(app)
    (crash,) = app.crashes()
    assert crash["context"]["exception"]["class"].endswith("ConnectionException"), crash
    ((_, available_at),) = app_redis.zrange(f"{PREFIX}queues:refused:delayed", 0, -1, withscores=True)
    assert before + 9 <= available_at <= time.time() + 11, (before, available_at)
    assert not app.records("service4ct submission failed")
