"""Benchmark of one study through the service, stage by stage, next to the same stages in-process.

Usage::

    python bench/e2e.py              # 150×512² JPEG-lossless phantom + the real sample, 5 warm jobs each
    python bench/e2e.py --quick      # a small JPEG-lossless phantom, 2 warm jobs, no real sample
    python bench/e2e.py --peer-only  # only the in-process peer (no stack, no worker)
    python bench/e2e.py --zip A.zip --zip B.zip --jobs 7 --json var/bench/e2e.json

For each study a fresh worker process (``python -m app.worker``, demo model, CPU) runs on the
embedded stack (PostgreSQL, Redis, SeaweedFS S3 on loopback, started by ``bench/service.py``'s
helpers) with its own API process. Once ``/readyz`` answers 200 (the worker is warm: its
preprocessing process has started, Captum is imported), the study is uploaded and jobs with
``explain: gradcam`` are posted one at a time: the first job of the worker, then ``--jobs``
warm ones. The stages are the job's own ``stage_timings`` (fetching, reading, qc, decoding,
preprocessing, inference, explaining, saving; ``total``: the worker's time from claiming the
job to finishing it). The peer runs the same stages with the same functions in this process,
one job after the other without the queue, the database or the pool: the ZIP fetched from the
same S3 (``Storage.get_to_file``), :func:`app.worker.pipeline.prepare_study`, the model's
forward with Grad-CAM fused (:func:`ml.explain.fused.forward_with_gradcam`,
:meth:`ml.inference.Predictor.predict`), :func:`app.worker.explaining.saliency_files`
and :func:`app.worker.explaining.upload_files` back to the same S3; one unrecorded warm-up run,
then ``--jobs`` timed runs. Per stage the medians; service ÷ peer is the service's overhead.
Each service job also records the CPU-seconds the worker and its pool processes spent on it
(``cpu_s``, from ``/proc``: user + system time from the POST to the job's success), a figure
that other processes on the machine disturb far less than the wall times.

Studies: a generated 150-slice 512² JPEG-lossless phantom (``ml.phantom.make_study``, variant
``real_like``, cached under ``--cache-dir``) and the real sample ``../shared/data/real-ct/
cap002.zip`` when it is present (``--no-real`` leaves it out). Goals, for the real sample (or
the phantom without it): the warm job's worker time ≤ 2.5 s, the first job's ≤ 3.5 s.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import machine_info, write_json  # noqa: E402
from bench.service import (  # noqa: E402
    STAGES,
    _stage_medians,
    _submit,
    _upload,
    _wait_jobs,
    api_on,
    bench_setup,
    phantom,
    start_stack,
    start_worker,
)

REAL_ZIP = ROOT.parent / "shared" / "data" / "real-ct" / "cap002.zip"
GOAL_WARM_S = 2.5
GOAL_FIRST_S = 3.5
JOB_STAGES = tuple(s for s in STAGES if s != "total")


# --------------------------------------------------------------------------- the peer


class Peer:
    """The worker's stages in this process, with the worker's own functions."""

    def __init__(self, storage: Any | None, workdir: Path) -> None:
        import torch

        from ml.inference import Predictor

        torch.set_num_threads(max(1, os.cpu_count() or 1))  # what a worker with one pool process uses
        self.predictor = Predictor.from_manifest(ROOT / "weights" / "manifest.json", None, device="cpu")
        self.storage = storage
        self.workdir = workdir

    def run(self, zip_path: Path, key: str | None) -> dict[str, float]:
        """One job's stages in seconds (``fetching``/``saving`` 0 without an object store)."""
        import torch

        from app.worker.explaining import saliency_files, upload_files
        from app.worker.pipeline import prepare_study
        from ml.explain.fused import can_fuse, forward_with_gradcam

        work = Path(tempfile.mkdtemp(prefix="peer-", dir=self.workdir))
        t: dict[str, float] = {}
        t_start = time.perf_counter()
        local = work / "study.zip"
        if self.storage is not None and key is not None:
            self.storage.get_to_file(key, local)
        else:
            local.write_bytes(zip_path.read_bytes())
        t["fetching"] = time.perf_counter() - t_start
        p = self.predictor
        prep = prepare_study(uuid.uuid4(), 1, str(local), None, p.preprocess_config, True)
        t.update(prep.timings)
        t0 = time.perf_counter()
        batch, voxel_mm = torch.from_numpy(prep.tensor), [prep.geometry.model_voxel_mm()]
        fused = forward_with_gradcam(p, batch) if can_fuse(p, "gradcam", {}) else None  # as the worker
        with torch.inference_mode():
            p.predict(batch, voxel_mm, forward=None if fused is None else (fused.logits, fused.features))
        t["inference"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        raw = None if fused is None else fused.maps[0]
        _, written, _ = saliency_files(p, prep, "gradcam", {}, work / "saliency", raw)
        t["explaining"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if self.storage is not None:
            prefix = f"peer/{uuid.uuid4().hex}"
            named = {r: (f"{prefix}/{path.name}", path, ct) for r, (path, ct) in written.named().items()}
            upload_files(named, self.storage, retry_s=30.0, stop=threading.Event())
        t["saving"] = time.perf_counter() - t0
        t["total"] = time.perf_counter() - t_start
        for path in sorted(work.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        work.rmdir()
        return t


def peer_section(peer: Peer, zip_path: Path, key: str | None, n: int) -> dict[str, Any]:
    peer.run(zip_path, key)  # imports, first allocations: not recorded
    runs = [peer.run(zip_path, key) for _ in range(n)]
    return {"runs": runs, "median": _stage_medians(runs), "min_total_s": min(r["total"] for r in runs)}


# --------------------------------------------------------------------------- the service


def service_section(
    stack: Any, tmp: Path, name: str, zip_path: Path, n: int, peer: Peer | None
) -> dict[str, Any]:
    """A fresh API and worker on ``stack``: the first job and ``n`` warm ones; then the peer."""
    with api_on(stack, tmp, name) as (env, api):
        res: dict[str, Any] = {}
        worker, res["worker_ready_s"] = start_worker(env, api)
        try:
            with api.service_client() as c:
                t0 = time.perf_counter()
                study_id = _upload(c, zip_path)
                res["upload_s"] = time.perf_counter() - t0
                jobs = []
                for _ in range(n + 1):
                    t0, cpu0 = time.perf_counter(), tree_cpu_s(worker.proc.pid)
                    jid = _submit(c, study_id, "gradcam")
                    body = _wait_jobs(c, [jid])[jid]
                    jobs.append(
                        {
                            "job_s": body["observed_at"] - t0,
                            "cpu_s": tree_cpu_s(worker.proc.pid) - cpu0,
                            "stages": body.get("stage_timings") or {},
                        }
                    )
        finally:
            worker.stop(timeout=40)
        res["first"] = jobs[0]
        res["warm"] = {"runs": jobs[1:], "median": _stage_medians([j["stages"] for j in jobs[1:]])}
        res["warm"]["job_s_median"] = statistics.median(j["job_s"] for j in jobs[1:])
        res["warm"]["cpu_s_median"] = statistics.median(j["cpu_s"] for j in jobs[1:])
        if peer is None:
            return res
        peer.storage = env.storage()  # the same S3 and bucket, the same study object
        try:
            res["peer"] = peer_section(peer, zip_path, f"studies/{study_id}/source.zip", n)
        finally:
            peer.storage = None
    return res


# --------------------------------------------------------------------------- report


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and all its live descendants (Linux /proc; 0 elsewhere).

    The worker's preprocessing runs in its pool processes: a job's CPU is that of the tree.
    """
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for d in Path("/proc").glob("[0-9]*"):
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        p = int(d.name)
        children.setdefault(int(fields[1]), []).append(p)
        cpu[p] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += cpu.get(p, 0.0)
        todo.extend(children.get(p, []))
    return total


def _cell(v: float | None) -> str:
    return f"{v:>10.3f}" if v is not None else f"{'-':>10}"


def report_study(name: str, r: dict[str, Any]) -> None:
    first = r.get("first", {}).get("stages", {})
    warm = r.get("warm", {}).get("median", {})
    peer = r["peer"]["median"] if "peer" in r else {}
    print(f"\n{name}: seconds per stage (service: the job's stage_timings; peer: same stages in-process)")
    print(f"{'stage':<16}{'first':>10}{'warm p50':>10}{'peer p50':>10}{'warm/peer':>11}")
    for k in STAGES:
        w, p = warm.get(k), peer.get(k)
        ratio = f"{w / p:>10.2f}×" if w is not None and p else f"{'-':>11}"
        label = "total (worker)" if k == "total" else k
        print(f"{label:<16}{_cell(first.get(k))}{_cell(w)}{_cell(p)}{ratio}")
    if "warm" in r:
        print(
            f"worker ready {r['worker_ready_s']:.1f} s after its start; POST → succeeded (client side): "
            f"first {r['first']['job_s']:.2f} s, warm p50 {r['warm']['job_s_median']:.2f} s"
        )
        print(
            f"CPU-seconds of the worker and its processes per job: first {r['first']['cpu_s']:.2f}, "
            f"warm p50 {r['warm']['cpu_s_median']:.2f}"
        )


def goals(res: dict[str, Any]) -> list[dict[str, Any]]:
    name = "real" if "real" in res["studies"] else "phantom"
    r = res["studies"].get(name, {})
    out = []
    if "warm" in r:
        warm, first = r["warm"]["median"].get("total"), r["first"]["stages"].get("total")
        for goal, v, lim in (
            (f"{name}: warm job worker time ≤ {GOAL_WARM_S:g} s", warm, GOAL_WARM_S),
            (f"{name}: first job worker time ≤ {GOAL_FIRST_S:g} s", first, GOAL_FIRST_S),
        ):
            out.append({"goal": goal, "pass": v is not None and v <= lim, "measured": f"{v:.2f} s"})
    return out


# --------------------------------------------------------------------------- driver


def studies(args: argparse.Namespace) -> dict[str, Path]:
    cache = Path(args.cache_dir)
    if args.zip:
        return {Path(z).stem: Path(z) for z in args.zip}
    out = {"phantom": phantom(cache, 0, "jpeg_lossless" if args.quick else "real_like")}
    if not args.quick and not args.no_real and REAL_ZIP.is_file():
        out["real"] = REAL_ZIP
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small phantom, 2 warm jobs, no real sample")
    p.add_argument("--jobs", type=int, default=None, help="warm jobs per study (default 5, quick 2)")
    p.add_argument("--zip", action="append", help="study ZIP(s) instead of the phantom and the sample")
    p.add_argument("--no-real", action="store_true", help="leave the real sample out")
    p.add_argument("--peer-only", action="store_true", help="only the in-process peer (no stack)")
    p.add_argument("--no-peer", action="store_true", help="only the service (no in-process peer)")
    p.add_argument("--cache-dir", default=str(ROOT / "var" / "bench"), help="phantom ZIP cache")
    p.add_argument("--json", default=str(ROOT / "var" / "bench" / "e2e.json"), help="'' = none")
    args = p.parse_args(argv)
    n = args.jobs or (2 if args.quick else 5)
    if args.peer_only and args.no_peer:
        p.error("--peer-only and --no-peer leave nothing to measure")
    t_start = time.perf_counter()
    res: dict[str, Any] = {
        "machine": machine_info(),
        "params": {"jobs": n, "quick": args.quick, "peer_only": args.peer_only, "explain": "gradcam"},
        "studies": {},
    }
    res["machine"]["background_cores_busy_before"] = bench_setup()
    chosen = studies(args)
    with tempfile.TemporaryDirectory(prefix="s4ct-bench-e2e-") as td, contextlib.ExitStack() as es:
        tmp = Path(td)
        peer = None if args.no_peer else Peer(None, tmp)
        stack = None if args.peer_only else start_stack(es, tmp / "stack")
        for name, path in chosen.items():
            print(f"\n== {name}: {path.name} ({path.stat().st_size / 1e6:.1f} MB) ==", flush=True)
            if stack is None:
                assert peer is not None
                res["studies"][name] = {"peer": peer_section(peer, path, None, n)}
            else:
                res["studies"][name] = service_section(stack, tmp, name, path, n, peer)
            report_study(name, res["studies"][name])
    res["goals"] = goals(res)
    res["wall_s"] = time.perf_counter() - t_start
    for g in res["goals"]:
        print(f"  {'PASS' if g['pass'] else 'MISS'}  {g['goal']:<44} {g['measured']}")
    print(f"bench wall time {res['wall_s']:.0f} s")
    if args.json:
        write_json(Path(args.json), res)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
