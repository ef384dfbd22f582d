"""Load test of the service on loopback: concurrent uploads, status latency, a burst of jobs.

Usage::

    python bench/load.py                 # full run (2 × 50 × 100 MB uploads, 500 rps × 20 s, 200 jobs)
    python bench/load.py --uploads 2 --upload-mb 2 --rps 20 --seconds 1 --jobs 4   # smoke size, ~1.5 min
    python bench/load.py --sections jobs --jobs 50 --workers 1,2,3
    python bench/load.py --json var/bench/load.json   # (the default path)

Everything runs against the embedded stack (PostgreSQL, Redis, SeaweedFS S3) started in a temp
directory with fsync off, the API as its own uvicorn process and the workers as their own
``python -m app.worker`` processes, with the service's default settings (the helpers of
``bench/service.py``). Every section prints a table, adds its part to the JSON file at once
and states its goals; a peer is measured in the same run wherever one exists.

1. **upload**: ``--uploads`` clients (threads) each ``POST /v1/studies`` a ``--upload-mb`` MB
   ZIP (raw body, Content-Length, 1 MiB writes) at the same time. The ZIPs share their members
   and differ in their 32-byte ZIP comment, so every upload is a new study (a 201, not a 200 for
   bytes seen before) while the client reads one file from the page cache. A 503
   ``server_busy`` (the API's upload gate) is retried after its ``Retry-After`` and counted.
   This runs ``--upload-rounds`` times (default 2; the studies are deleted between rounds).
   Aggregate MB/s = total bytes / wall time from the first byte to the last answer. The API's
   RSS is sampled every 50 ms: before (after a warm-up upload), peak, and after (1 s after the
   last answer) each round; a second round that ends higher than the first is a leak, one that
   ends level is memory the allocator keeps for reuse. Peer: the same bytes, the same number of
   concurrent uploads, straight to the same S3 with boto3's managed upload (same part size,
   same parts in flight per upload), one round.
2. **status**: ``GET /v1/jobs/{id}`` at ``--rps`` for ``--seconds`` in an open loop (latency
   from the scheduled send time), peer ``GET /healthz`` at the same rate, then the capacity of
   both (closed loop): ``bench/service.py``'s latency section, unchanged.
3. **jobs**: ``--studies`` small phantom studies are uploaded first, then for each worker count
   in ``--workers`` (default 1 then 2 CPU worker processes): the workers are started, warmed up
   (each has finished a job), and ``--jobs`` jobs (``--explain``, default none) are submitted at
   once over the studies. jobs/s = jobs / (last ``finished_at`` − first ``created_at``), job
   latency = ``finished_at`` − ``created_at`` (both PostgreSQL's clock), p50/p95; every job is
   then read back through ``GET /v1/jobs/{id}`` and must have succeeded on its first attempt.
   The ratio of the 2-worker to the 1-worker throughput is the scaling on the machine the bench
   runs on (its CPU model and cores are in the JSON's ``machine``).

4. **e2e** (only with ``--sections ...,e2e``; ``bench/report.py`` runs it where there is a GPU):
   one worker on its default device and one ``--e2e-slices``×512² phantom study; ``--e2e-runs``
   jobs one at a time after a cold one: job time p50 (``finished_at`` − ``created_at``) and the
   per-stage medians. The H100 goal is a p50 ≤ 1.0 s for a 300-slice study.

Goals: every upload 201; upload MB/s ≥ 0.7 × boto3 straight to S3; API RSS peak growth ≤ (uploads
streamed at once) × (parts in flight + 1) × part size + 64 MiB, ≤ 64 MiB kept after the uploads,
and ≤ 32 MiB more after the last round than after the first; status p99 ≤ 20 ms at 500 rps without
errors; every job succeeded once. The 2-worker ÷ 1-worker throughput ratio is reported, not judged.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.common import machine_info, percentiles, write_json  # noqa: E402
from bench.service import (  # noqa: E402
    CHUNK,
    GOAL_P99_MS,
    Api,
    Child,
    CpuMeter,
    Env,
    RssSampler,
    _submit,
    _tail,
    _upload,
    api_on,
    bench_setup,
    build_zip,
    phantom,
    report_latency,
    rss_bytes,
    section_latency,
    start_stack,
)

MiB = 1 << 20
MB = 1_000_000
SECTIONS = ("upload", "status", "jobs", "e2e")
TAG_BYTES = 32  # length of the ZIP comment that makes each upload's bytes unique
GOAL_UPLOAD_RATIO = 0.7
GOAL_RSS_SLACK_MIB = 64.0
GOAL_ROUND_GROWTH_MIB = 32.0
BUSY_RETRIES = 50

Goal = tuple[str, bool, str]


# --------------------------------------------------------------------------- 1. concurrent uploads


def build_tagged_zip(path: Path, size: int) -> int:
    """A ``size``-byte ZIP of random stored members whose last ``TAG_BYTES`` bytes are its comment."""
    build_zip(path, max(size - 4 * 1024, 1024), member_size=min(16 * MiB, max(size // 4, 1024)))
    with zipfile.ZipFile(path, "a") as zf:
        zf.comment = b"0" * TAG_BYTES
    return path.stat().st_size


class TaggedZip:
    """The base ZIP with its comment replaced by ``tag``: a file-like object and a chunk iterator."""

    def __init__(self, path: Path, tag: str) -> None:
        self.path = path
        self.tag = tag.encode().rjust(TAG_BYTES, b"0")[:TAG_BYTES]
        self.size = path.stat().st_size
        self._f = path.open("rb")
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all that is left when negative); ``b""`` at the end."""
        body_end = self.size - TAG_BYTES
        n = self.size - self._pos if n < 0 else min(n, self.size - self._pos)
        out = b""
        if self._pos < body_end and n > 0:
            out = self._f.read(min(n, body_end - self._pos))
        if len(out) < n:
            t0 = self._pos + len(out) - body_end
            out += self.tag[t0 : t0 + n - len(out)]
        self._pos += len(out)
        return out

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self.size}[whence]
        self._pos = max(0, min(self.size, base + offset))
        self._f.seek(min(self._pos, self.size - TAG_BYTES))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def chunks(self) -> Iterator[bytes]:
        self.seek(0)
        while chunk := self.read(CHUNK):
            yield chunk

    def close(self) -> None:
        self._f.close()


def _post_tagged(url: str, key: str, path: Path, tag: str) -> dict[str, Any]:
    """One upload, retried as a client would after a 503 (``Retry-After``) or a connection the
    server closed while refusing: final status, seconds, and the reasons of the retries."""
    body = TaggedZip(path, tag)
    headers = {
        "Authorization": f"Bearer {key}",
        "content-type": "application/zip",
        "content-length": str(body.size),
    }
    t0 = time.perf_counter()
    retried: Counter[str] = Counter()
    status: int | str = "not sent"
    out: dict[str, Any] = {}
    try:
        with httpx.Client(timeout=900.0) as c:
            for _ in range(BUSY_RETRIES + 1):
                try:
                    r = c.post(url, content=body.chunks(), headers=headers)
                except httpx.TransportError as e:
                    status = type(e).__name__
                    retried[status] += 1
                    time.sleep(1.0)
                    continue
                status = r.status_code
                if status != 503:
                    break
                retried["http_503"] += 1
                time.sleep(float(r.headers.get("retry-after", "1")))
            if isinstance(status, int):
                out = {"study_id": r.json()["study_id"]} if status in (200, 201) else {"body": r.text[:300]}
    finally:
        body.close()
    last = f"http_{status}" if isinstance(status, int) else status
    if retried and retried[last]:  # the last try is the outcome, not a retry
        retried[last] -= 1
    retries = {k: v for k, v in retried.items() if v}
    return {"status": status, "seconds": time.perf_counter() - t0, "retries": retries, **out}


def _boto3_tagged(storage: Any, key: str, path: Path, tag: str, part: int, in_flight: int) -> dict[str, Any]:
    """The same bytes straight to S3: boto3's managed upload, ``in_flight`` parts at once."""
    from boto3.s3.transfer import TransferConfig

    cfg = TransferConfig(multipart_threshold=part, multipart_chunksize=part, max_concurrency=in_flight)
    body = TaggedZip(path, tag)
    t0 = time.perf_counter()
    try:
        storage.client.upload_fileobj(body, storage.bucket, key, Config=cfg)
    finally:
        body.close()
    return {"status": "ok", "seconds": time.perf_counter() - t0}


def _upload_settings(env: Env) -> dict[str, int]:
    """Part size, parts in flight and concurrent-upload limit of the API (defaults where unset)."""
    s = env.settings
    return {
        "part_bytes": int(s.upload_part_bytes),
        "parts_in_flight": int(getattr(s, "upload_parts_in_flight", 1)),
        "max_concurrent_uploads": int(getattr(s, "max_concurrent_uploads", 0)),  # 0: no gate
    }


def _many(fn: Any, args: list[tuple[Any, ...]]) -> tuple[list[dict[str, Any]], float]:
    """Run ``fn(*a)`` for every ``a`` at once on its own thread: results and wall seconds."""
    barrier = threading.Barrier(len(args) + 1)

    def go(a: tuple[Any, ...]) -> dict[str, Any]:
        barrier.wait()
        result: dict[str, Any] = fn(*a)
        return result

    with ThreadPoolExecutor(max_workers=len(args)) as ex:
        futs = [ex.submit(go, a) for a in args]
        barrier.wait()
        t0 = time.perf_counter()
        out = [f.result() for f in futs]
        return out, time.perf_counter() - t0


def _upload_round(env: Env, api: Api, base: Path, n: int) -> dict[str, Any]:
    """``n`` uploads at once (each its own tag) with the API's RSS sampled; the studies are
    deleted afterwards (after the "after" RSS, 1 s after the last answer)."""
    url = f"{api.base}/v1/studies"
    tags = [uuid.uuid4().hex for _ in range(n)]
    pids = {"client": None, "api": api.pid, "s3": env.s3_pid}
    with RssSampler(api.pid) as rss, CpuMeter(pids) as cpu:
        runs, wall = _many(_post_tagged, [(url, env.key, base, t) for t in tags])
    time.sleep(1.0)
    after = rss_bytes(api.pid)
    with api.service_client() as c:
        for r in runs:
            if "study_id" in r:
                c.delete_study(r["study_id"])
    return {
        "wall_s": wall,
        "statuses": dict(Counter(str(r["status"]) for r in runs)),
        "retries": dict(sum((Counter(r["retries"]) for r in runs), Counter())),
        "seconds": percentiles([r["seconds"] for r in runs], (0.5, 1.0)),
        "cpu_s": cpu.used,
        "rss_before_mib": rss.baseline / MiB,
        "rss_peak_mib": rss.peak / MiB,
        "rss_after_mib": after / MiB,
        "rss_samples": rss.samples,
        "failures": [r for r in runs if r["status"] != 201][:5],
    }


def section_upload(env: Env, api: Api, tmp: Path, n: int, size_mb: float, rounds: int) -> dict[str, Any]:
    print(f"\n== 1. {n} concurrent uploads of {size_mb:g} MB ZIPs, {rounds} round(s) ==", flush=True)
    base = tmp / "load-base.zip"
    t0 = time.perf_counter()
    size = build_tagged_zip(base, int(size_mb * MB))
    print(f"built the base ZIP ({size / MB:.1f} MB) in {time.perf_counter() - t0:.1f} s", flush=True)
    up = _upload_settings(env)
    res: dict[str, Any] = {"uploads": n, "size_bytes": size, "settings": up}

    # warm-up (imports, pools, first S3 connection), then the rounds of concurrent uploads
    w = _post_tagged(f"{api.base}/v1/studies", env.key, base, "warmup")
    if w["status"] != 201:
        raise RuntimeError(f"warm-up upload answered {w}")
    with api.service_client() as c:
        c.delete_study(w["study_id"])
    rs = [_upload_round(env, api, base, n) for _ in range(rounds)]
    wall = sum(r["wall_s"] for r in rs)
    statuses = sum((Counter(r["statuses"]) for r in rs), Counter())
    first, last = rs[0], rs[-1]
    peak = max(r["rss_peak_mib"] for r in rs)
    res["service"] = {
        "wall_s": wall,
        "mb_s": rounds * n * size / wall / MB,
        "statuses": dict(statuses),
        "all_201": statuses == Counter({"201": rounds * n}),
        "retries": dict(sum((Counter(r["retries"]) for r in rs), Counter())),
        "cpu_s": {k: sum(r["cpu_s"][k] for r in rs) for k in first["cpu_s"]},
        "rss_before_mib": first["rss_before_mib"],
        "rss_peak_mib": peak,
        "rss_after_mib": last["rss_after_mib"],
        "rss_growth_mib": peak - first["rss_before_mib"],
        "rss_kept_mib": last["rss_after_mib"] - first["rss_before_mib"],
        "rss_growth_over_rounds_mib": last["rss_after_mib"] - first["rss_after_mib"],
        "rounds": rs,
    }

    # peer: the same bytes with boto3 straight to S3, as many at once (one round)
    storage = env.storage(max_pool_connections=max(10, n * up["parts_in_flight"] + 4))
    tags = [uuid.uuid4().hex for _ in range(n)]
    keys = [f"bench/load-{t}.zip" for t in tags]
    args = [
        (storage, k, base, t, up["part_bytes"], up["parts_in_flight"])
        for k, t in zip(keys, tags, strict=True)
    ]
    with CpuMeter({"client": None, "s3": env.s3_pid}) as cpu:
        _, wall = _many(_boto3_tagged, args)
    res["peer_boto3"] = {"wall_s": wall, "mb_s": n * size / wall / MB, "cpu_s": cpu.used}
    for k in keys:
        storage.delete(k)
    res["ratio_service_over_boto3"] = res["service"]["mb_s"] / res["peer_boto3"]["mb_s"]
    base.unlink()
    return res


def rss_goal_mib(res: dict[str, Any]) -> float:
    """The RSS growth the API may show: uploads streamed at once × their buffers + slack."""
    up = res["settings"]
    at_once = min(int(res["uploads"]), int(up["max_concurrent_uploads"]) or int(res["uploads"]))
    return at_once * (int(up["parts_in_flight"]) + 1) * int(up["part_bytes"]) / MiB + GOAL_RSS_SLACK_MIB


def report_upload(res: dict[str, Any]) -> list[Goal]:
    s, p = res["service"], res["peer_boto3"]
    up = res["settings"]
    print(
        f"\n{res['uploads']} uploads at once of {res['size_bytes'] / MB:.1f} MB; API: part "
        f"{up['part_bytes'] / MiB:g} MiB, {up['parts_in_flight']} part(s) in flight, "
        f"{up['max_concurrent_uploads'] or 'unbounded'} upload(s) streamed at once"
    )
    hdr = (
        f"{'path':<34} {'wall s':>7} {'MB/s':>7} {'cpu api':>7} {'cpu s3':>7} {'cpu cli':>7} {'statuses':>14}"
    )
    print(hdr)
    print("-" * len(hdr))
    for name, r in (("POST /v1/studies (the service)", s), ("peer: boto3 straight to S3", p)):
        cpu = r["cpu_s"]
        st = ",".join(f"{k}×{v}" for k, v in r.get("statuses", {}).items()) or "-"
        print(
            f"{name:<34} {r['wall_s']:>7.2f} {r['mb_s']:>7.1f} {cpu.get('api', float('nan')):>7.2f} "
            f"{cpu['s3']:>7.2f} {cpu['client']:>7.2f} {st:>14}"
        )
    ratio = res["ratio_service_over_boto3"]
    print(f"service ÷ boto3 = {ratio:.2f}; retried uploads: {s['retries'] or 'none'}")
    print(
        "API RSS per round (MiB): "
        + "; ".join(
            f"before {r['rss_before_mib']:.0f}, peak {r['rss_peak_mib']:.0f}, after {r['rss_after_mib']:.0f}"
            for r in s["rounds"]
        )
    )
    print(
        f"API RSS: peak growth +{s['rss_growth_mib']:.0f} MiB, kept after the last round "
        f"{s['rss_kept_mib']:+.0f} MiB, after the last round vs after the first "
        f"{s['rss_growth_over_rounds_mib']:+.0f} MiB"
    )
    bound = rss_goal_mib(res)
    n = res["uploads"]
    goals: list[Goal] = [
        (f"{n} concurrent uploads × {len(s['rounds'])} round(s): all 201", s["all_201"], str(s["statuses"])),
        (
            f"upload MB/s ≥ {GOAL_UPLOAD_RATIO:g} × boto3 straight to S3",
            ratio >= GOAL_UPLOAD_RATIO,
            f"{s['mb_s']:.1f} vs {p['mb_s']:.1f} MB/s = {ratio:.2f}",
        ),
        (
            f"API RSS peak growth ≤ {bound:.0f} MiB",
            s["rss_growth_mib"] <= bound,
            f"+{s['rss_growth_mib']:.0f} MiB",
        ),
        (
            f"API RSS kept after the uploads ≤ {GOAL_RSS_SLACK_MIB:.0f} MiB",
            s["rss_kept_mib"] <= GOAL_RSS_SLACK_MIB,
            f"{s['rss_kept_mib']:+.0f} MiB",
        ),
    ]
    if len(s["rounds"]) > 1:
        goals.append(
            (
                f"API RSS after the last round ≤ after the first + {GOAL_ROUND_GROWTH_MIB:.0f} MiB (no leak)",
                s["rss_growth_over_rounds_mib"] <= GOAL_ROUND_GROWTH_MIB,
                f"{s['rss_growth_over_rounds_mib']:+.0f} MiB",
            )
        )
    return goals


# --------------------------------------------------------------------------- 3. burst of jobs


def _poll_db(env: Env, sql: str, params: tuple[Any, ...], done: Any, timeout: float, what: str) -> Any:
    """Run ``sql`` every 0.25 s on one connection until ``done(rows)`` returns something."""
    from app.db import connect

    deadline = time.monotonic() + timeout
    with connect(str(env.settings.database_url)) as conn:
        while True:
            rows = list(conn.execute(sql, params).fetchall())
            if (result := done(rows)) is not None:
                return result
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} after {timeout:.0f} s: {rows[:3]}...")
            time.sleep(0.25)


def _wait_workers(env: Env, workers: list[Child], timeout: float = 300.0) -> float:
    """Seconds until every worker has registered (after its model load and pool start)."""
    t0 = time.perf_counter()
    want = {str(w.pid) for w in workers}

    def ready(rows: list[dict[str, Any]]) -> float | None:
        for w in workers:
            if w.proc.poll() is not None:
                raise RuntimeError(f"{w.name} exited with {w.proc.returncode}\n{_tail(w.log)}")
        return time.perf_counter() - t0 if want <= {r["pid"] for r in rows} else None

    sql = "SELECT info->>'pid' AS pid FROM workers"
    seconds: float = _poll_db(env, sql, (), ready, timeout, "workers not registered")
    return seconds


def _wait_done(env: Env, job_ids: list[str], timeout: float) -> list[dict[str, Any]]:
    """Poll PostgreSQL (not the API under test) until every job is terminal; the job rows."""
    sql = (
        "SELECT id::text AS id, state, error_code, attempt, worker_id, created_at, started_at, "
        "finished_at, stage_timings FROM jobs WHERE id = ANY(%s::uuid[])"
    )

    def done(rows: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        finished = sum(r["state"] in ("succeeded", "failed") for r in rows)
        return rows if finished == len(job_ids) else None

    rows: list[dict[str, Any]] = _poll_db(env, sql, (job_ids,), done, timeout, "jobs not finished")
    return rows


def _warm_up(env: Env, api: Api, workers: list[Child], study_id: str, explain: str) -> int:
    """Jobs until every worker has finished one (its first job is cold); at most 5 rounds."""
    pids = {str(w.pid) for w in workers}
    n = 0
    with api.service_client() as c:
        for _ in range(5):
            ids = [_submit(c, study_id, explain) for _ in range(2 * len(workers))]
            n += len(ids)
            rows = _wait_done(env, ids, timeout=600.0)
            pids -= {p for r in rows for p in pids if f"-{p}-" in (r["worker_id"] or "")}
            if not pids:
                break
    return n


def burst(env: Env, api: Api, study_ids: list[str], workers: int, jobs: int, explain: str) -> dict[str, Any]:
    """Start ``workers`` worker processes, warm them, submit ``jobs`` at once, measure, stop them."""
    procs = [
        Child(
            f"worker{workers}-{i}",
            [sys.executable, "-m", "app.worker"],
            env.child_env(),
            env.dir / f"worker{workers}-{i}.log",
        )
        for i in range(workers)
    ]
    try:
        ready_s = _wait_workers(env, procs)
        warm = _warm_up(env, api, procs, study_ids[0], explain)
        with api.service_client() as c, CpuMeter({"api": api.pid}) as cpu:
            t0 = time.perf_counter()
            ids = [_submit(c, study_ids[i % len(study_ids)], explain) for i in range(jobs)]
            submit_s = time.perf_counter() - t0
            rows = _wait_done(env, ids, timeout=600.0 + 30.0 * jobs)
            wall = time.perf_counter() - t0
            api_states = Counter(c.get_job(j)["state"] for j in ids)
    finally:
        for p in procs:
            p.stop(timeout=60)
    created = min(r["created_at"] for r in rows)
    finished = max(r["finished_at"] for r in rows if r["finished_at"] is not None)
    span = (finished - created).total_seconds()
    latency = [(r["finished_at"] - r["created_at"]).total_seconds() for r in rows if r["finished_at"]]
    waited = [(r["started_at"] - r["created_at"]).total_seconds() for r in rows if r["started_at"]]
    by_worker = Counter(
        next((str(p.pid) for p in procs if f"-{p.pid}-" in (r["worker_id"] or "")), "?") for r in rows
    )
    return {
        "workers": workers,
        "jobs": jobs,
        "explain": explain,
        "ready_s": ready_s,
        "warmup_jobs": warm,
        "submit_s": submit_s,
        "wall_s": wall,
        "span_s": span,
        "jobs_per_s": jobs / span,
        "latency_s": percentiles(latency, (0.5, 0.95)),
        "queue_wait_s": percentiles(waited, (0.5, 0.95)),
        "states": dict(Counter(r["state"] for r in rows)),
        "api_states": dict(api_states),
        "errors": dict(Counter(r["error_code"] for r in rows if r["error_code"])),
        "max_attempt": max(r["attempt"] for r in rows),
        "jobs_by_worker_pid": dict(by_worker),
        "api_cpu_s": cpu.used["api"],
    }


def section_jobs(
    env: Env, api: Api, jobs: int, workers: list[int], studies: int, explain: str, cache: Path
) -> dict[str, Any]:
    print(f"\n== 3. a burst of {jobs} jobs (explain {explain}) with {workers} CPU worker process(es) ==")
    t0 = time.perf_counter()
    paths = [phantom(cache, 2000 + i) for i in range(max(1, min(studies, jobs)))]
    with api.service_client() as c:
        sids = [_upload(c, p) for p in paths]
    print(f"{len(sids)} phantom studies uploaded in {time.perf_counter() - t0:.1f} s", flush=True)
    res: dict[str, Any] = {"jobs": jobs, "studies": len(sids), "explain": explain, "runs": {}}
    for w in workers:
        r = burst(env, api, sids, w, jobs, explain)
        res["runs"][str(w)] = r
        print(
            f"  {w} worker(s): {r['jobs_per_s']:.2f} jobs/s, latency p50 {r['latency_s']['p50']:.1f} s "
            f"p95 {r['latency_s']['p95']:.1f} s, states {r['api_states']}",
            flush=True,
        )
    runs = res["runs"]
    if "1" in runs and "2" in runs:
        res["ratio_2w_over_1w"] = runs["2"]["jobs_per_s"] / runs["1"]["jobs_per_s"]
    return res


def report_jobs(res: dict[str, Any]) -> list[Goal]:
    print(
        f"\nburst of {res['jobs']} jobs over {res['studies']} small phantom studies, explain "
        f"{res['explain']}; latency = finished_at − created_at"
    )
    hdr = (
        f"{'workers':>7} {'jobs/s':>7} {'span s':>7} {'lat p50':>8} {'lat p95':>8} {'wait p50':>9} "
        f"{'ready s':>8} {'states':>16} {'per worker':>16}"
    )
    print(hdr)
    print("-" * len(hdr))
    goals: list[Goal] = []
    for w, r in res["runs"].items():
        states = ",".join(f"{k}×{v}" for k, v in r["api_states"].items())
        per = "/".join(str(v) for v in r["jobs_by_worker_pid"].values())
        print(
            f"{w:>7} {r['jobs_per_s']:>7.2f} {r['span_s']:>7.1f} {r['latency_s']['p50']:>8.2f} "
            f"{r['latency_s']['p95']:>8.2f} {r['queue_wait_s']['p50']:>9.2f} {r['ready_s']:>8.1f} "
            f"{states:>16} {per:>16}"
        )
        ok = r["api_states"] == {"succeeded": r["jobs"]} and r["max_attempt"] == 1
        goals.append((f"{w} worker(s): every job succeeded on its first attempt", ok, f"{r['api_states']}"))
    if "ratio_2w_over_1w" in res:
        ratio = res["ratio_2w_over_1w"]
        # no pass/fail: on 2 CPUs one worker already keeps ~1.5 cores busy (its preprocessing
        # process and inference overlap), so a second one can add little; reported, not judged
        print(f"throughput 2 workers ÷ 1 worker = {ratio:.2f} on {os.cpu_count()} CPUs")
    return goals


# --------------------------------------------------------------------------- 4. end to end, one large study


def section_e2e(env: Env, api: Api, slices: int, runs: int, explain: str, cache: Path) -> dict[str, Any]:
    """One worker on its default device (``auto``: the GPU where torch sees one) and a ``slices``×512² study
    (0.7 mm pixels, 1 mm slices): one cold job, then ``runs`` jobs one at a time."""
    from bench.preprocess import phantom_zip

    print(f"\n== 4. end to end: {slices}×512² phantom study, {runs} jobs one at a time ==", flush=True)
    spec = argparse.Namespace(
        variant="standard", seed=0, slices=slices, size=512, pixel_mm=0.7, slice_mm=1.0, cache_dir=str(cache)
    )
    path = phantom_zip(spec)
    child_env = env.child_env()
    child_env["S4CT_DEVICE"] = "auto"
    worker = Child("worker-e2e", [sys.executable, "-m", "app.worker"], child_env, env.dir / "worker-e2e.log")
    try:
        _wait_workers(env, [worker])
        with api.service_client() as c:
            t0 = time.perf_counter()
            sid = _upload(c, path)
            upload_s = time.perf_counter() - t0
            rows = []
            for _ in range(runs + 1):
                jid = _submit(c, sid, explain)
                rows += _wait_done(env, [jid], timeout=900.0)
    finally:
        worker.stop(timeout=60)
    if any(r["state"] != "succeeded" for r in rows):
        raise RuntimeError(f"e2e jobs failed: {[r['error_code'] for r in rows]}")
    job_s = [(r["finished_at"] - r["created_at"]).total_seconds() for r in rows]
    timings = rows[1:]  # the cold first job left out
    stages = {
        k: statistics.median(float(t["stage_timings"][k]) for t in timings if k in t["stage_timings"])
        for k in sorted({k for t in timings for k in t["stage_timings"]})
    }
    return {
        "slices": slices,
        "runs": runs,
        "explain": explain,
        "zip_mb": path.stat().st_size / MB,
        "device": f"cuda ({gpu})" if (gpu := machine_info()["gpu"]) else "cpu",
        "upload_s": {"p50": upload_s},
        "cold_job_s": job_s[0],
        "job_s": percentiles(job_s[1:], (0.5, 0.95)),
        "stages_median_s": stages,
    }


def report_e2e(res: dict[str, Any]) -> list[Goal]:
    j = res["job_s"]
    print(
        f"\n{res['slices']}×512² study ({res['zip_mb']:.0f} MB ZIP), explain {res['explain']}, worker device "
        f"{res['device']}: upload {res['upload_s']['p50']:.2f} s; job (POST /v1/jobs → succeeded) p50 "
        f"{j['p50']:.2f} s, p95 {j['p95']:.2f} s over {res['runs']}; cold first job {res['cold_job_s']:.2f} s"
    )
    print("  stage medians: " + ", ".join(f"{k} {v:.2f} s" for k, v in res["stages_median_s"].items()))
    return []


# --------------------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument(
        "--sections",
        default="upload,status,jobs",
        help="comma list of upload,status,jobs,e2e (default: not e2e)",
    )
    p.add_argument("--uploads", type=int, default=50, help="concurrent uploads (default 50)")
    p.add_argument("--upload-mb", type=float, default=100.0, help="ZIP size in MB = 10^6 B (default 100)")
    p.add_argument(
        "--upload-rounds", type=int, default=2, help="rounds of concurrent uploads (default 2: a leak shows)"
    )
    p.add_argument("--rps", type=float, default=500.0, help="GET /v1/jobs/{id} rate (default 500)")
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds at that rate (default 20)")
    p.add_argument("--warmup", type=float, default=2.0, help="unrecorded seconds first (default 2)")
    p.add_argument("--jobs", type=int, default=200, help="jobs in the burst (default 200)")
    p.add_argument("--workers", default="1,2", help="worker process counts, one burst each (default 1,2)")
    p.add_argument("--studies", type=int, default=8, help="distinct phantom studies the jobs use (default 8)")
    p.add_argument("--explain", default="none", help="explain method of the burst's jobs (default none)")
    p.add_argument("--e2e-slices", type=int, default=300, help="slices of the e2e study (default 300)")
    p.add_argument("--e2e-runs", type=int, default=7, help="timed e2e jobs, one at a time (default 7)")
    p.add_argument(
        "--e2e-explain", default="gradcam", help="explain method of the e2e jobs (default gradcam)"
    )
    p.add_argument("--cache-dir", default=str(ROOT / "var" / "bench"), help="phantom ZIP cache")
    p.add_argument("--json", default=str(ROOT / "var" / "bench" / "load.json"), help="'' = none")
    args = p.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if bad := [s for s in sections if s not in SECTIONS]:
        p.error(f"unknown sections {bad}")
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    if not workers or min(args.uploads, args.upload_rounds, args.jobs, *workers) < 1:
        p.error("--uploads, --upload-rounds, --jobs and --workers must be ≥ 1")

    t_start = time.perf_counter()
    report: dict[str, Any] = {
        "command": " ".join(["python", "bench/load.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "params": {k: v for k, v in vars(args).items() if k not in ("json", "cache_dir")},
    }
    out = Path(args.json) if args.json else None
    goals: list[Goal] = []

    def save() -> None:
        report["goals"] = [{"goal": g, "pass": ok, "measured": m} for g, ok, m in goals]
        report["wall_s"] = time.perf_counter() - t_start
        if out is not None:
            write_json(out, report)

    report["machine"]["background_cores_busy_before"] = bench_setup()
    with tempfile.TemporaryDirectory(prefix="s4ct-bench-load-") as td, contextlib.ExitStack() as es:
        tmp = Path(td)
        stack = start_stack(es, tmp / "stack")
        cache = Path(args.cache_dir)
        if "upload" in sections or "status" in sections:
            with api_on(stack, tmp, "l") as (env, api):
                # status first: after the uploads (10 GB by default) SeaweedFS keeps a core busy
                # for minutes (measured 71 % of a core as "other"), which is not the API's latency
                if "status" in sections:
                    pg = stack.postgres.pid
                    report["status"] = section_latency(env, api, args.rps, args.seconds, args.warmup, pg)
                    goals += report_latency(report["status"])
                    save()
                if "upload" in sections:
                    report["upload"] = section_upload(
                        env, api, tmp, args.uploads, args.upload_mb, args.upload_rounds
                    )
                    goals += report_upload(report["upload"])
                    save()
        if "jobs" in sections:
            with api_on(stack, tmp, "j") as (env, api):
                report["jobs"] = section_jobs(env, api, args.jobs, workers, args.studies, args.explain, cache)
                goals += report_jobs(report["jobs"])
                save()
        if "e2e" in sections:
            with api_on(stack, tmp, "e") as (env, api):
                report["e2e"] = section_e2e(env, api, args.e2e_slices, args.e2e_runs, args.e2e_explain, cache)
                goals += report_e2e(report["e2e"])
                save()

    save()
    print("\ngoals")
    for g, ok, m in goals:
        print(f"  {'PASS' if ok else 'MISS'}  {g:<60} {m}")
    print(f"\nbench wall time {report['wall_s']:.0f} s (status p99 goal {GOAL_P99_MS:g} ms)")
    if out is not None:
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
