"""Dependency outages, for real: Redis restarted and flushed, PostgreSQL stopped, S3 cut or hung.

The module runs its own embedded stack (the session ``stack`` is shared with other modules
and must stay up), so that its PostgreSQL and Redis can be stopped and started again on the
same port and data directory. S3 is reached through :class:`faultproxy.FaultProxy`, a TCP
proxy in front of the real SeaweedFS that can refuse connections, swallow them (a hung
server) or slow them down. One API (uvicorn in a thread) and one worker serve every test
and are never restarted: each test ends by proving they recovered by themselves.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis
from conftest import (  # type: ignore[import-not-found, unused-ignore]
    LiveApi,
    _fresh_settings,
    list_keys,
    new_key,
    running_stack,
    storage_of,
    wait_for,
    wait_job,
)
from faultproxy import FaultProxy  # type: ignore[import-not-found, unused-ignore]

from app.config import Settings
from app.db import connect
from app.devstack import EmbeddedStack
from app.queue import JobQueue
from app.storage import Storage
from app.worker.runner import Worker
from ml.phantom import make_study

pytestmark = pytest.mark.slow

MiB = 1 << 20
BOUND_S = 10.0  # "no hang": an answer comes well before (timeouts of 2 s in these settings)
STORAGE_RETRY_S = 6.0


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def private_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    """The module's own stack: its services are stopped and started by the tests."""
    with running_stack(tmp_path_factory.mktemp("faults-stack")) as s:
        yield s


@pytest.fixture(scope="module")
def s3_proxy(private_stack: EmbeddedStack) -> Iterator[FaultProxy]:
    assert private_stack.s3 is not None
    with FaultProxy("127.0.0.1", private_stack.s3.port) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def settings(
    private_stack: EmbeddedStack, s3_proxy: FaultProxy, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    """The module's services (overrides conftest's: ``api`` and ``worker`` use the private stack)."""
    return _fresh_settings(
        private_stack,
        tmp_path_factory.mktemp("faults"),
        s3_endpoint=s3_proxy.url,
        s3_read_timeout_s=2.0,
        s3_max_retries=1,
        storage_retry_s=STORAGE_RETRY_S,
        upload_abandon_s=2.0,
        upload_part_bytes=5 * MiB,
        lease_s=5.0,
        worker_stale_s=5.0,
    )


@pytest.fixture(scope="module")
def direct(settings: Settings, private_stack: EmbeddedStack) -> Storage:
    """The module's bucket on the real S3, bypassing the proxy (to look at what is left)."""
    return storage_of(settings.model_copy(update={"s3_endpoint": private_stack.s3_endpoint}))


@pytest.fixture(scope="module")
def client(api: LiveApi, settings: Settings) -> Iterator[httpx.Client]:
    with api.client(new_key(settings, "site-faults")) as c:
        yield c


@pytest.fixture(scope="module")
def study_zip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("faults-zip") / "s.zip"
    make_study(path, seed=7)
    return path.read_bytes()


@pytest.fixture(scope="module")
def study(client: httpx.Client, study_zip: bytes) -> str:
    r = client.post("/v1/studies", content=study_zip, headers={"content-type": "application/zip"})
    assert r.status_code in (200, 201), r.text
    sid: str = r.json()["study_id"]
    return sid


@pytest.fixture(autouse=True)
def _restore(private_stack: EmbeddedStack, s3_proxy: FaultProxy) -> Iterator[None]:
    """Whatever a test broke is repaired before the next one."""
    yield
    s3_proxy.pass_through()
    for svc in (private_stack.postgres, private_stack.redis):
        if not svc.running:
            svc.start()


# --------------------------------------------------------------------------- helpers


def _submit(c: httpx.Client, study: str) -> str:
    r = c.post("/v1/jobs", json={"study_id": study, "explain": "none"})
    assert r.status_code == 202, r.text
    job: str = r.json()["job_id"]
    return job


def _all_succeed(c: httpx.Client, settings: Settings, jobs: list[str], timeout: float = 240.0) -> None:
    """Every job ends ``succeeded``, with exactly one result row."""
    states = {j: wait_job(c, j, timeout=timeout) for j in jobs}
    failed = {j: s.get("error") for j, s in states.items() if s["state"] != "succeeded"}
    assert not failed, failed
    assert settings.database_url
    with connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT job_id, count(*) AS n FROM results WHERE job_id = ANY(%s) GROUP BY job_id",
            ([uuid.UUID(j) for j in jobs],),
        ).fetchall()
    assert {str(r["job_id"]): r["n"] for r in rows} == {j: 1 for j in jobs}


def _timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    t0 = time.monotonic()
    r = call()
    return r, time.monotonic() - t0


def _unavailable(
    r: httpx.Response, elapsed: float, codes: tuple[str, ...] = ("service_unavailable",)
) -> None:
    """A clean refusal: 502/503/504 with a stable code and a request id, answered in bounded time."""
    assert r.status_code in (502, 503, 504), (r.status_code, r.text)
    body = r.json()
    assert body["error"] in codes, body
    assert body["request_id"] and r.headers.get("x-request-id") == body["request_id"]
    assert elapsed < BOUND_S, elapsed
    print(
        f"measure: {r.request.method} {r.request.url.path}: {r.status_code} {body['error']} {elapsed:.2f} s"
    )


def _study_rows(settings: Settings) -> int:
    assert settings.database_url
    with connect(settings.database_url) as conn:
        row = conn.execute("SELECT count(*) AS n FROM studies").fetchone()
    assert row is not None
    return int(row["n"])


def _multipart_uploads(storage: Storage) -> list[str]:
    resp = storage.client.list_multipart_uploads(Bucket=storage.bucket)
    return [str(u["Key"]) for u in resp.get("Uploads", []) or []]


class _Submitter:
    """Submits a job every ``interval`` seconds in a thread until stopped (a stream of work)."""

    def __init__(self, c: httpx.Client, study: str, interval: float) -> None:
        self.c, self.study, self.interval = c, study, interval
        self.jobs: list[str] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            r = self.c.post("/v1/jobs", json={"study_id": self.study, "explain": "none"})
            if r.status_code == 202:
                self.jobs.append(r.json()["job_id"])
            else:
                self.errors.append(f"{r.status_code} {r.text[:200]}")
            self._stop.wait(self.interval)

    def __enter__(self) -> _Submitter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def _reconciled(worker: Worker, action: str) -> float:
    value = worker.metrics.registry.get_sample_value("s4ct_worker_reconciled_jobs_total", {"action": action})
    return float(value or 0.0)


# --------------------------------------------------------------------------- Redis


def test_redis_restart_and_flush_lose_no_job(
    client: httpx.Client,
    worker: Worker,
    settings: Settings,
    private_stack: EmbeddedStack,
    study: str,
) -> None:
    lost_before = _reconciled(worker, "lost")
    port = private_stack.redis.port
    with _Submitter(client, study, interval=0.4) as stream:
        wait_for(lambda: len(stream.jobs) >= 6, timeout=60, what="six jobs submitted")
        private_stack.redis.stop()  # jobs queued in the stream and held by the worker
        time.sleep(1.0)  # submissions meanwhile: committed in PostgreSQL, XADD fails
        private_stack.redis.start()  # empty: no stream, no group
        assert private_stack.redis.port == port
        wait_for(lambda: len(stream.jobs) >= 12, timeout=60, what="jobs after the restart")
        with redis.Redis.from_url(private_stack.redis_url) as r:
            r.flushall()
        wait_for(lambda: len(stream.jobs) >= 16, timeout=60, what="jobs after the flush")
    assert not stream.errors, stream.errors  # job creation never depends on Redis
    _all_succeed(client, settings, stream.jobs)
    # jobs Redis lost came back through the reconciler (PostgreSQL is the truth)
    assert _reconciled(worker, "lost") > lost_before
    print(f"measure: {len(stream.jobs)} jobs, {_reconciled(worker, 'lost') - lost_before:.0f} re-enqueued")
    queue = JobQueue.from_url(private_stack.redis_url, settings.stream, settings.group)
    try:
        wait_for(lambda: queue.depth() == 0, timeout=30, what="stream drained")
    finally:
        queue.close()


# --------------------------------------------------------------------------- PostgreSQL


def test_postgres_outage_answers_503_and_recovers(
    client: httpx.Client,
    api: LiveApi,
    worker: Worker,
    settings: Settings,
    private_stack: EmbeddedStack,
    direct: Storage,
    study: str,
    study_zip: bytes,
) -> None:
    done = _submit(client, study)
    assert wait_job(client, done)["state"] == "succeeded"
    in_flight = [_submit(client, study) for _ in range(3)]
    wait_for(
        lambda: any(client.get(f"/v1/jobs/{j}").json()["state"] == "running" for j in in_flight),
        timeout=60,
        what="a job running when PostgreSQL goes away",
    )
    keys_before = list_keys(direct, "studies/")
    private_stack.postgres.stop()

    _unavailable(*_timed(lambda: client.get(f"/v1/jobs/{done}")))
    _unavailable(*_timed(lambda: client.post("/v1/jobs", json={"study_id": study, "explain": "none"})))
    _unavailable(
        *_timed(
            lambda: client.post("/v1/studies", content=study_zip, headers={"content-type": "application/zip"})
        )
    )
    # a well-formed key that is not cached: it must be looked up in PostgreSQL (a malformed one is
    # refused with 401 without a query)
    with api.client("s4ct_" + secrets.token_urlsafe(32)) as stranger:
        _unavailable(*_timed(lambda: stranger.get(f"/v1/jobs/{done}")))
    with api.client() as anon:
        ready, elapsed = _timed(lambda: anon.get("/readyz"))
        assert ready.status_code == 503 and elapsed < BOUND_S, ready.text
        assert ready.json()["checks"]["postgres"].startswith("unreachable"), ready.text
        assert anon.get("/healthz").status_code == 200
    assert list_keys(direct, "studies/") == keys_before  # the refused upload's object was removed

    private_stack.postgres.start()
    t_up = time.monotonic()
    # the same API and worker objects reconnect by themselves
    wait_for(lambda: client.get(f"/v1/jobs/{done}").status_code == 200, timeout=60, what="API back")
    with api.client() as anon:
        wait_for(lambda: anon.get("/readyz").status_code == 200, timeout=60, what="readyz back")
    print(f"measure: API and readyz back {time.monotonic() - t_up:.2f} s after PostgreSQL started")
    _all_succeed(client, settings, [*in_flight, _submit(client, study)])


# --------------------------------------------------------------------------- S3


def test_upload_with_s3_down_fails_cleanly(
    client: httpx.Client, s3_proxy: FaultProxy, settings: Settings, direct: Storage, study_zip: bytes
) -> None:
    rows, keys = _study_rows(settings), list_keys(direct, "studies/")
    s3_proxy.refuse()
    r, elapsed = _timed(
        lambda: client.post("/v1/studies", content=study_zip, headers={"content-type": "application/zip"})
    )
    _unavailable(r, elapsed, ("upload_failed",))
    with client.stream("GET", "/readyz") as ready:
        assert ready.status_code == 503
    s3_proxy.pass_through()
    assert _study_rows(settings) == rows
    assert list_keys(direct, "studies/") == keys
    assert _multipart_uploads(direct) == []


def test_s3_cut_mid_multipart_upload_leaves_nothing(
    client: httpx.Client, worker: Worker, s3_proxy: FaultProxy, settings: Settings, direct: Storage
) -> None:
    rows, keys = _study_rows(settings), list_keys(direct, "studies/")
    sent = {"bytes": 0}

    def body() -> Iterator[bytes]:
        chunk = b"\0" * MiB
        for i in range(24):
            if i == 12:  # two parts of 5 MiB are in S3 (or on their way): the store goes away
                s3_proxy.refuse()
            sent["bytes"] += len(chunk)
            yield chunk

    r, elapsed = _timed(
        lambda: client.post("/v1/studies", content=body(), headers={"content-type": "application/zip"})
    )
    _unavailable(r, elapsed, ("upload_failed",))
    s3_proxy.pass_through()
    assert _study_rows(settings) == rows
    assert list_keys(direct, "studies/") == keys
    # the abort could not reach S3 either: the worker's janitor removes the orphaned upload
    wait_for(lambda: _multipart_uploads(direct) == [], timeout=60, what="orphaned multipart upload aborted")


def test_hung_s3_does_not_hang_the_api(
    client: httpx.Client, s3_proxy: FaultProxy, settings: Settings, direct: Storage, study_zip: bytes
) -> None:
    rows = _study_rows(settings)
    s3_proxy.blackhole()
    r, elapsed = _timed(
        lambda: client.post("/v1/studies", content=study_zip, headers={"content-type": "application/zip"})
    )
    _unavailable(r, elapsed, ("upload_failed",))
    s3_proxy.slow(latency_s=0.01, bytes_per_s=4 * MiB)  # slow but working: the upload goes through
    r = client.post("/v1/studies", content=study_zip, headers={"content-type": "application/zip"})
    assert r.status_code in (200, 201), r.text
    assert _study_rows(settings) == rows + (r.status_code == 201)
    s3_proxy.pass_through()
    assert direct.exists(f"studies/{r.json()['study_id']}/source.zip")


def test_worker_retries_s3_with_backoff_then_fails_with_a_code(
    client: httpx.Client, worker: Worker, s3_proxy: FaultProxy, settings: Settings, study: str
) -> None:
    # an outage shorter than the budget: the same attempt fetches the study once S3 is back
    s3_proxy.refuse()
    short = _submit(client, study)
    time.sleep(STORAGE_RETRY_S / 2)
    assert client.get(f"/v1/jobs/{short}").json()["state"] == "running"
    s3_proxy.pass_through()
    status = wait_job(client, short)
    assert status["state"] == "succeeded" and status["attempt"] == 1, status

    # longer than the budget: failed with a stable code, its attempts not used up
    s3_proxy.refuse()
    t0 = time.monotonic()
    long = _submit(client, study)
    status = wait_job(client, long)
    elapsed = time.monotonic() - t0
    assert status["state"] == "failed" and status["error"]["code"] == "storage_unavailable", status
    assert status["attempt"] == 1 and elapsed >= STORAGE_RETRY_S, (status, elapsed)
    print(f"measure: job failed storage_unavailable {elapsed:.2f} s after submission")
    s3_proxy.pass_through()
    _all_succeed(client, settings, [_submit(client, study)])  # the worker goes on serving
