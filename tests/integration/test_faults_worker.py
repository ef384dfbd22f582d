"""Worker process faults, for real: ``kill -9`` mid-job under a stream of jobs, and SIGTERM.

The worker runs as ``python -m app.worker`` subprocesses (:mod:`procs`) on a
fresh database, bucket and stream of the shared embedded stack; jobs come in
through a real API. What happened is read back from PostgreSQL, S3 and a
webhook receiver, never from the worker's own word. Both fault tests are
``slow``; the settings hand-over to a child worker is checked in the default suite.
"""

from __future__ import annotations

import os
import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import LiveApi, Receiver, list_keys, new_key, storage_of, wait_for  # type: ignore[import-not-found, unused-ignore]
from procs import WorkerProcess  # type: ignore[import-not-found, unused-ignore]

from app.config import Settings, load_settings
from app.db import Conn, connect
from app.devstack.serve import worker_env
from app.queue import JobQueue
from ml.phantom import make_study

#: stages a kill aims at (read from the job's ``stage`` in PostgreSQL)
STAGES = ("fetching", "reading", "preprocessing", "inference", "explaining", "saving")
KILLS = 20
JOBS = 30
#: short leases and claim times: a killed attempt is taken over within seconds
FAST_RECOVERY: dict[str, Any] = {
    "lease_s": 4.0,
    "heartbeat_s": 0.5,
    "claim_idle_s": 2.0,
    "reconcile_s": 1.0,
    "max_batch": 2,
    "prefetch": 1,
    "max_wait_ms": 50,
}


# --------------------------------------------------------------------------- helpers


def _upload_studies(client: httpx.Client, tmp: Path, n: int) -> list[str]:
    """``n`` small phantom studies (64² × ~60 slices), uploaded; their ids."""
    ids = []
    for seed in range(n):
        zp = tmp / f"study-{seed}.zip"
        make_study(zp, seed=800 + seed)
        r = client.post("/v1/studies", content=zp.read_bytes(), headers={"content-type": "application/zip"})
        assert r.status_code in (200, 201), r.text
        ids.append(str(r.json()["study_id"]))
    return ids


def _submit(client: httpx.Client, study_id: str, explain: str, callback_url: str | None = None) -> str:
    body: dict[str, Any] = {"study_id": study_id, "explain": explain}
    if callback_url:
        body["callback_url"] = callback_url
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    return str(r.json()["job_id"])


def _jobs(conn: Conn) -> dict[str, dict[str, Any]]:
    rows = conn.execute("SELECT id, state, attempt, max_attempts, error_code, explain FROM jobs").fetchall()
    return {str(r["id"]): r for r in rows}


def _unfinished(db_url: str) -> int:
    with connect(db_url) as conn:
        row = conn.execute("SELECT count(*) AS n FROM jobs WHERE state IN ('queued', 'running')").fetchone()
    assert row is not None
    return int(row["n"])


def _keys_in(value: Any) -> Iterator[str]:
    """Every string in a JSON value that looks like one of our S3 object keys."""
    if isinstance(value, str):
        if value.startswith("jobs/"):
            yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _keys_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from _keys_in(v)


def _referenced_keys(conn: Conn) -> dict[str, list[str]]:
    """S3 keys referenced by results, explanations and DICOM results, by the job whose attempt wrote them."""
    refs: dict[str, list[str]] = {}
    for r in conn.execute("SELECT job_id, body FROM results").fetchall():
        refs.setdefault(str(r["job_id"]), []).extend(_keys_in(r["body"]))
    for r in conn.execute("SELECT produced_by, blobs FROM explanations").fetchall():
        refs.setdefault(str(r["produced_by"]), []).extend(_keys_in(r["blobs"]))
    for r in conn.execute("SELECT job_id, objects FROM dicom_outputs").fetchall():
        refs.setdefault(str(r["job_id"]), []).extend(_keys_in(r["objects"]))
    return refs


def _poll(worker: WorkerProcess, predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` while ``worker`` lives, for up to ``timeout`` s (not an error if it never holds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and worker.alive():
        if predicate():
            return True
        time.sleep(0.02)
    return False


def _succeeded_by(conn: Conn, worker_id: str | None) -> int:
    row = conn.execute(
        "SELECT count(*) AS n FROM jobs WHERE state = 'succeeded' AND worker_id = %s", (worker_id,)
    ).fetchone()
    return 0 if row is None else int(row["n"])


def _kill_at(worker: WorkerProcess, conn: Conn, target: str, rng: random.Random) -> dict[str, Any]:
    """Let ``worker`` finish 0-1 job, wait for one of its jobs at ``target``, maybe a bit more, kill -9.

    A ``saving`` kill waits for a job with saliency (its blobs are being written) and is not
    delayed. What the worker held at the kill (read from PostgreSQL just before) is returned.
    """

    def at_target() -> bool:
        held = worker.held(conn)
        return any(h["stage"] == target and (target != "saving" or h["explain"] != "none") for h in held)

    first = rng.randint(0, 1)
    _poll(worker, lambda: _succeeded_by(conn, worker.worker_id) >= first, timeout=60)
    seen = _poll(worker, at_target, timeout=30)
    if target != "saving" and rng.random() < 0.5:
        time.sleep(rng.uniform(0.0, 1.0))
    assert worker.alive(), worker.log_tail()  # a worker never dies by itself here
    held = worker.held(conn)
    worker.kill()
    return {"target": target, "seen": seen, "stages": sorted(str(h["stage"]) for h in held)}


class _Submitter(threading.Thread):
    """Submits jobs through the API at a steady pace (a stream, not a burst)."""

    def __init__(self, submit: Callable[[int], str], n: int, first: int, every_s: float) -> None:
        super().__init__(daemon=True)
        self.submit, self.n, self.first, self.every_s = submit, n, first, every_s
        self.job_ids: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for i in range(self.n):
                self.job_ids.append(self.submit(i))
                if i >= self.first - 1:
                    time.sleep(self.every_s)
        except BaseException as e:
            self.error = e


# --------------------------------------------------------------------------- the worker's settings


def test_a_worker_process_gets_every_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The fault tests rely on it: a child worker runs with its parent's lease, queue and batch settings."""
    parent = Settings(
        stream="s4ct:faults", lease_s=4.5, max_attempts=7, log_json=True, work_dir=tmp_path / "w"
    ).with_services(
        database_url="postgresql://u@127.0.0.1:5/db",
        redis_url="redis://127.0.0.1:6/0",
        s3_endpoint="http://127.0.0.1:7",
        s3_access_key="ak",
        s3_secret_key="sk",
    )
    monkeypatch.setenv("S4CT_MAX_BATCH", "9")  # the parent's value wins over a stray variable
    env = worker_env(parent)
    for k in [k for k in os.environ if k.startswith("S4CT_")]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        if k.startswith("S4CT_"):
            monkeypatch.setenv(k, v)
    assert load_settings() == parent


# --------------------------------------------------------------------------- kill -9


@pytest.mark.slow
def test_kill_9_at_random_stages_loses_nothing_and_writes_once(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    rng = random.Random(8)
    settings = make_settings(max_attempts=4, **FAST_RECOVERY)
    assert settings.database_url
    db_url = settings.database_url
    key = new_key(settings, "site-faults")
    log = tmp_path / "workers.log"
    kills: list[dict[str, Any]] = []
    lingering = 0
    ready_s: list[float] = []
    t_start = time.monotonic()

    with LiveApi(settings) as api, api.client(key) as client, Receiver() as hook:
        studies = _upload_studies(client, tmp_path, 6)

        def submit(i: int) -> str:
            explain = "gradcam" if i % 3 == 0 else "none"
            return _submit(client, studies[i % len(studies)], explain, hook.url)

        submitter = _Submitter(submit, JOBS, first=6, every_s=5.0)
        submitter.start()
        with connect(db_url) as conn:
            targets = list(STAGES * (KILLS // len(STAGES) + 1))[:KILLS]
            rng.shuffle(targets)
            for target in targets:
                t0 = time.monotonic()
                w = WorkerProcess(settings, log).start()
                try:
                    w.wait_ready()
                    ready_s.append(time.monotonic() - t0)
                    kills.append(_kill_at(w, conn, target, rng))
                    lingering += len(w.lingering)
                finally:
                    w.close()
        t_kills = time.monotonic() - t_start

        submitter.join(timeout=300)
        assert submitter.error is None, submitter.error
        job_ids = set(submitter.job_ids)
        assert len(job_ids) == JOBS

        # one worker left alive: everything must end, and every webhook go out
        with WorkerProcess(settings, log) as final:
            final.wait_ready()
            wait_for(lambda: _unfinished(db_url) == 0, timeout=420, interval=0.5, what="all jobs finished")

            def delivered() -> bool:
                with connect(db_url) as c:
                    row = c.execute(
                        "SELECT count(*) AS n FROM webhook_outbox "
                        "WHERE delivered_at IS NULL AND dead_at IS NULL"
                    ).fetchone()
                return (
                    row is not None and row["n"] == 0 and len({p["job_id"] for p in hook.payloads()}) >= JOBS
                )

            wait_for(delivered, timeout=120, interval=0.5, what="every webhook delivered")
            jobs_q = JobQueue.from_url(str(settings.redis_url), settings.stream, settings.group)
            try:  # entries of killed consumers are taken over and acknowledged: the stream empties
                wait_for(lambda: jobs_q.depth() == 0, timeout=60, interval=0.5, what="an empty stream")
            finally:
                jobs_q.close()
        t_total = time.monotonic() - t_start

    # ------------------------------------------------------------------ the audit, from PG and S3
    with connect(db_url) as conn:
        jobs = _jobs(conn)
        results = {
            str(r["job_id"]): r for r in conn.execute("SELECT job_id, attempt FROM results").fetchall()
        }
        result_rows = Counter(str(r["job_id"]) for r in conn.execute("SELECT job_id FROM results").fetchall())
        expl = conn.execute("SELECT job_id, method, produced_by, attempt, blobs FROM explanations").fetchall()
        outbox = conn.execute("SELECT job_id, event, delivered_at FROM webhook_outbox").fetchall()
        refs = _referenced_keys(conn)
    assert set(jobs) == job_ids

    states = Counter(j["state"] for j in jobs.values())
    assert set(states) <= {"succeeded", "failed"}, states
    for jid, j in jobs.items():
        if j["state"] == "succeeded":
            assert result_rows[jid] == 1, (jid, result_rows[jid])
            assert results[jid]["attempt"] == j["attempt"] <= j["max_attempts"], (j, results[jid])
        else:
            assert j["error_code"] == "worker_crashed", j
            assert j["attempt"] == j["max_attempts"], j
            assert result_rows[jid] == 0, jid

    # explanations: one per gradcam job that succeeded, written by its succeeding attempt
    by_job = Counter(str(e["job_id"]) for e in expl)
    for e in expl:
        j = jobs[str(e["job_id"])]
        assert j["state"] == "succeeded" and j["explain"] == e["method"] == "gradcam", (e, j)
        assert str(e["produced_by"]) == str(e["job_id"]) and e["attempt"] == j["attempt"], (e, j)
    for jid, j in jobs.items():
        wanted = 1 if j["state"] == "succeeded" and j["explain"] == "gradcam" else 0
        assert by_job[jid] == wanted, (jid, j)

    # every referenced object exists and lies under the succeeding attempt's prefix
    storage = storage_of(settings)
    stored = set(list_keys(storage, "jobs/"))
    referenced: set[str] = set()
    for jid, keys in refs.items():
        prefix = f"jobs/{jid}/attempt-{jobs[jid]['attempt']}/"
        for k in keys:
            assert k.startswith(prefix), (k, prefix)
            assert k in stored, k
            referenced.add(k)
    assert referenced, "no saliency was referenced: the gradcam jobs proved nothing"
    orphans = stored - referenced
    for k in orphans:  # left by killed attempts: never under a succeeding attempt's prefix
        jid, attempt = k.split("/")[1], k.split("/")[2]
        j = jobs[jid]
        assert j["state"] == "failed" or attempt != f"attempt-{j['attempt']}", k

    # one terminal event per job in the outbox, delivered; the receiver saw every job
    terminal = Counter(str(o["job_id"]) for o in outbox if o["event"] in ("job.succeeded", "job.failed"))
    assert all(terminal[jid] == 1 for jid in jobs), {jid: terminal[jid] for jid in jobs if terminal[jid] != 1}
    for o in outbox:
        assert o["event"] == f"job.{jobs[str(o['job_id'])]['state']}" and o["delivered_at"] is not None, o
    deliveries = Counter(p["job_id"] for p in hook.payloads())
    assert set(deliveries) == job_ids

    # the kills really hit work in flight, at many stages
    hit = [k for k in kills if k["stages"]]
    stages_hit = Counter(s for k in kills for s in k["stages"])
    attempts = Counter(j["attempt"] for j in jobs.values())
    print(
        f"\nkill -9 x{len(kills)}: {len(hit)} hit held jobs; stages at kill {dict(stages_hit)}; "
        f"targets seen {sum(k['seen'] for k in kills)}/{len(kills)}\n"
        f"jobs {dict(states)}; attempts {dict(sorted(attempts.items()))}; "
        f"objects: {len(referenced)} referenced, {len(orphans)} orphans of killed attempts; "
        f"webhook deliveries {sum(deliveries.values())} for {len(deliveries)} jobs "
        f"({sum(1 for v in deliveries.values() if v > 1)} delivered more than once); "
        f"pool processes lingering after a kill: {lingering}; "
        f"worker start to ready: median {statistics.median(ready_s):.1f} s, max {max(ready_s):.1f} s; "
        f"kill phase {t_kills:.0f} s, total {t_total:.0f} s"
    )
    assert len(hit) >= KILLS * 3 // 4, kills
    assert lingering == 0, "preprocessing processes outlived their killed worker"
    assert len(stages_hit) >= 4, stages_hit
    assert states["succeeded"] >= JOBS // 2, states


# --------------------------------------------------------------------------- SIGTERM


@pytest.mark.slow
@pytest.mark.parametrize("drain_s", [30.0, 0.0], ids=["drain", "release"])
def test_sigterm_finishes_or_releases_and_a_new_worker_completes(
    make_settings: Callable[..., Settings], tmp_path: Path, drain_s: float
) -> None:
    """drain: held jobs finish within drain_s; release (drain_s=0): they are given back uncharged."""
    settings = make_settings(**{**FAST_RECOVERY, "lease_s": 5.0, "prefetch": 2, "drain_s": drain_s})
    assert settings.database_url
    db_url = settings.database_url
    key = new_key(settings, "site-sigterm")
    log1, log2 = tmp_path / "w1.log", tmp_path / "w2.log"
    with LiveApi(settings) as api, api.client(key) as client:
        studies = _upload_studies(client, tmp_path, 4)
        job_ids = [_submit(client, studies[i % 4], "gradcam" if i % 2 else "none") for i in range(8)]
        with WorkerProcess(settings, log1) as w1, connect(db_url) as conn:
            w1.wait_ready()

            def busy() -> list[dict[str, Any]] | None:
                held = w1.held(conn)
                deep = [h for h in held if h["stage"] in ("preprocessing", "inference", "explaining")]
                return held if len(held) >= 2 and deep else None

            held = wait_for(busy, timeout=120, interval=0.02, what="a worker with jobs in flight")
            # a rolling restart: the next worker starts while the first one drains
            w2 = WorkerProcess(settings, log2).start()
            rc, took = w1.terminate(timeout=120)
            assert rc == 0, (rc, w1.log_tail())
            after = _jobs(conn)
            w1_log = w1.log_tail(100_000)
        try:
            assert "stopped after" in w1_log, w1_log[-3000:]
            assert "lost its lease" not in w1_log, w1_log[-3000:]
            # nothing w1 held is left running under its name: finished or given back
            for h in held:
                j = after[str(h["id"])]
                assert j["state"] in ("succeeded", "queued", "running"), j
            with connect(db_url) as c:
                stuck = c.execute(
                    "SELECT id FROM jobs WHERE state = 'running' AND worker_id = %s", (w1.worker_id,)
                ).fetchall()
            assert stuck == [], stuck
            w2.wait_ready()
            wait_for(lambda: _unfinished(db_url) == 0, timeout=300, interval=0.5, what="all jobs finished")
        finally:
            w2.close()
    with connect(db_url) as conn:
        final = _jobs(conn)
        n_results = conn.execute("SELECT count(*) AS n FROM results").fetchone()
    assert n_results is not None and n_results["n"] == len(job_ids)
    assert all(final[j]["state"] == "succeeded" for j in job_ids), final
    finished_by_w1 = [h for h in held if after[str(h["id"])]["state"] == "succeeded"]
    released = [h for h in held if after[str(h["id"])]["state"] != "succeeded"]
    for h in finished_by_w1:
        assert final[str(h["id"])]["attempt"] == 1
    if drain_s == 0:
        assert released, "drain_s=0 must give the held jobs back"
    for h in released:  # given back by the stop, not lost to a lease expiry: the attempt is refunded
        j = final[str(h["id"])]
        assert j["attempt"] >= 2 and j["max_attempts"] == settings.max_attempts + 1, j
    print(
        f"\nSIGTERM: exit 0 after {took:.1f} s; held {len(held)} "
        f"(stages {sorted(str(h['stage']) for h in held)}): {len(finished_by_w1)} finished by the draining "
        f"worker, {len(released)} given back; attempts {Counter(j['attempt'] for j in final.values())}"
    )
