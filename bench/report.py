"""Runs every benchmark of the project and writes the performance report, ``docs/performance.md``.

Usage::

    python bench/report.py                  # every bench at full size, then the report (~70 min)
    python bench/report.py --quick          # tiny parameters everywhere (smoke run, ~7 min)
    python bench/report.py --reuse          # take var/bench/<bench>.json where it exists, run the rest
    python bench/report.py --reuse --no-run # only render what is in var/bench
    python bench/report.py --benches load,service --reuse

Each bench runs as its own subprocess (``python bench/<name>.py ... --json <dir>/<name>.json``,
output in ``<dir>/<name>.log``); beside its JSON the report keeps ``<name>.meta.json``: the exact
command, the date, the wall time, the exit status and the machine (CPU model, cores, RAM, torch,
GPU). The report is one table: measure | ours | peer in the same run | ratio | goal | met? |
machine, then the command and date of every run. A row whose bench did not run (or failed)
says so instead of showing a number. The H100 rows (end-to-end p50 for a 300-slice study,
ResNet-34 @256³ throughput) are measured only where ``torch.cuda.is_available()``; elsewhere
they read "not measured: needs a CUDA GPU". The rows also go to ``<dir>/report.json``.
Commands and paths in the report are relative to the repository root.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import machine_info, machine_label, run_logged, write_json  # noqa: E402

NO_GPU = "not measured: needs a CUDA GPU"
# the hardware the CPU benches' ``Bench.est_full_min`` were timed on (their runs in docs/benchmarks.md)
EST_HARDWARE = "a 2-core x86-64 VM without GPU"
GOAL_H100_E2E_S = 1.0
GOAL_H100_VOLUMES_S = 100.0
FULL_CASCADE = "fc+layer4+layer3+layer2+layer1+stem"


@dataclass(frozen=True)
class Bench:
    """One benchmark script: its arguments at full size and with ``--quick``."""

    name: str
    script: str
    full: str  # command-line arguments, split on white space
    quick: str
    cache_dir: bool = False  # takes --cache-dir (phantom ZIPs are kept beside the results)
    gpu_only: bool = False
    est_full_min: float = 0.0  # minutes at full size on EST_HARDWARE


BENCHES = (
    Bench(
        "preprocess",
        "bench/preprocess.py",
        "",
        "--slices 40 --size 96 --pixel-mm 3.5 --slice-mm 5 --target 64 --repeat 1",
        cache_dir=True,
        est_full_min=2.5,
    ),
    Bench(
        "inference",
        "bench/inference.py",
        "",
        "--skip-prod --demo-size 32 --iters 1 --warmup 0",
        est_full_min=2.0,
    ),
    Bench(
        "inference_cuda",
        "bench/inference.py",
        "--device cuda --prod-batches 1,4,8,16,32",
        "--device cuda --iters 2",
        gpu_only=True,
        est_full_min=1.0,
    ),
    Bench("explain", "bench/explain.py", "", "--quick", est_full_min=26.0),
    Bench(
        "ood",
        "bench/ood.py",
        "",
        "--fit-n 8 --n-id 4 --n-ood 4 --rows 48 --pixel-mm 8 --slice-mm 5 --input-size 32 --no-real "
        "--bootstrap 50",
        cache_dir=True,
        est_full_min=13.0,
    ),
    Bench(
        "service",
        "bench/service.py",
        "",
        "--upload-mib 4 --upload-modes raw --rate 20 --duration 1 --warmup 0.2 --studies 1 --no-real-like",
        cache_dir=True,
        est_full_min=4.5,
    ),
    Bench(
        "load",
        "bench/load.py",
        "",
        "--uploads 2 --upload-mb 2 --rps 20 --seconds 1 --warmup 0.2 --jobs 4 --studies 2",
        cache_dir=True,
        est_full_min=15.0,
    ),
    Bench("e2e", "bench/e2e.py", "", "--quick", cache_dir=True, est_full_min=5.0),
    Bench("gpu", "bench/gpu.py", "", "--quick", gpu_only=True, est_full_min=8.0),
    Bench(
        "e2e_gpu",
        "bench/load.py",
        "--sections e2e --e2e-slices 300 --e2e-runs 7",
        "--sections e2e --e2e-slices 40 --e2e-runs 2",
        cache_dir=True,
        gpu_only=True,
        est_full_min=3.0,
    ),
)
BY_NAME = {b.name: b for b in BENCHES}


# --------------------------------------------------------------------------- running


def _relative(text: str) -> str:
    """``text`` with every path under the repository written relative to its root."""
    return re.sub(rf"{re.escape(str(ROOT))}(/|(?![\w.-]))", lambda m: "" if m[1] else ".", text)


def run_bench(b: Bench, out_dir: Path, quick: bool, timeout_s: float) -> dict[str, Any]:
    """Run one bench as a subprocess; its JSON lands in ``out_dir``; returns (and keeps) its meta."""
    args = (b.quick if quick else b.full).split()
    if b.cache_dir:
        args += ["--cache-dir", str(out_dir)]
    json_path = out_dir / f"{b.name}.json"
    cmd = [sys.executable, b.script, *args, "--json", str(json_path)]
    shown = _relative(" ".join(["python", b.script, *args, "--json", str(json_path)]))
    print(f"\n### {b.name}: {shown}", flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path.unlink(missing_ok=True)
    log = out_dir / f"{b.name}.log"
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    rc = run_logged(cmd, log, timeout_s)
    meta = {
        "bench": b.name,
        "command": shown,
        "date": started.isoformat(timespec="seconds"),
        "wall_s": time.perf_counter() - t0,
        "returncode": rc,
        "quick": quick,
        "machine": machine_info(),
        "log": _relative(str(log)),
    }
    write_json(out_dir / f"{b.name}.meta.json", meta)
    print(f"    {b.name}: exit {rc} in {meta['wall_s']:.0f} s (log {log})", flush=True)
    if rc != 0:
        print(log.read_text(errors="replace")[-3000:], flush=True)
    return meta


def _run_of(name: str, path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """What a bench's JSON says of its run when report.py did not run it (no meta file)."""
    mtime = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC).isoformat(timespec="seconds")
    wall = data.get("wall_s") or (data.get("seconds") or {}).get("total")
    return {
        "bench": name,
        "command": data.get("command", f"(not recorded; result in {path.name})"),
        "date": data.get("date", f"{mtime} (file time)"),
        "wall_s": float(wall) if wall is not None else None,
        "returncode": "?",
    }


def _load(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


# --------------------------------------------------------------------------- rows


@dataclass
class Row:
    measure: str
    ours: str
    peer: str = "—"
    ratio: str = "—"
    goal: str = "—"
    met: str = "—"
    machine: str = "—"
    bench: str = ""


Cells = dict[str, str]
Extract = Callable[[dict[str, Any]], Cells]


@dataclass(frozen=True)
class Spec:
    bench: str
    measure: str
    goal: str
    extract: Extract


def yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _goal_entry(data: dict[str, Any], prefix: str) -> dict[str, Any] | None:
    return next((g for g in data.get("goals", []) if str(g.get("goal", "")).startswith(prefix)), None)


def _x(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if b else "—"


# ---- preprocess


def _pre_zip(d: dict[str, Any]) -> Cells:
    p, r = d["pipelines"], d["ratios"]
    shape = "×".join(str(v) for v in d["input"]["series_shape_xyz"][::-1])
    return {
        "measure": f"preprocess: DICOM ZIP ({shape}) → {d['target']}³ tensor, s; peer: MONAI chain",
        "ours": f"{p['ours']['total_s']:.2f} s",
        "peer": f"{p['monai']['total_s']:.2f} s",
        "ratio": f"{r['monai_over_ours']:.2f}× faster",
        "met": yes(r["monai_over_ours"] >= d["goal"]["monai_ratio_min"]),
        "goal": f"≥ {d['goal']['monai_ratio_min']:g}× faster",
    }


def _pre_zip_ref(d: dict[str, Any]) -> Cells:
    p, r = d["pipelines"], d["ratios"]
    goal = d["goal"].get("reference_ratio_min", 3.0)
    best = r.get("reference_over_ours_best_runs")
    return {
        "ours": f"{p['ours']['total_s']:.2f} s",
        "peer": f"{p['reference']['total_s']:.2f} s",
        "ratio": f"{r['reference_over_ours']:.2f}× faster"
        + (f" (best runs {best:.2f}×)" if best is not None else ""),
        "met": yes(r["reference_over_ours"] >= goal),
        "goal": f"≥ {goal:g}× faster",
    }


def _pre_only_monai(d: dict[str, Any]) -> Cells:
    r = d["ratios"]["monai_over_ours_preprocess_only"]
    ours = d["pipelines"]["ours"]["stages_s"]["preprocess"]
    return {
        "ours": f"{ours:.2f} s",
        "peer": f"{ours * r:.2f} s",
        "ratio": f"{r:.2f}× faster",
        "met": yes(r >= 9),
    }


def _pre_only_ref(d: dict[str, Any]) -> Cells:
    r = d["ratios"]["reference_over_ours_preprocess_only"]
    ours = d["pipelines"]["ours"]["stages_s"]["preprocess"]
    ref = d["pipelines"]["reference"]["stages_s"]["reference_preprocess"]
    return {
        "ours": f"{ours:.2f} s",
        "peer": f"{ref:.2f} s",
        "ratio": f"{r:.2f}× faster",
        "met": yes(r >= 2.5),
    }


def _pre_exact(d: dict[str, Any]) -> Cells:
    p = d["pipelines"]
    r = p["ours"]["r_vs_reference"]
    peer = f"MONAI r = {p['monai']['r_vs_reference']:.4f}" if "monai" in p else "—"
    return {"ours": f"r = {r:.9f}", "peer": peer, "met": yes(r >= 0.99999)}


def _pre_mem(d: dict[str, Any]) -> Cells:
    p = d["pipelines"]
    ours, ref = p["ours"]["peak_rss_above_baseline_mib"], p["reference"]["peak_rss_above_baseline_mib"]
    cells = {"ours": f"{ours:.0f} MiB", "peer": f"{ref:.0f} MiB (reference)"}
    cells["ratio"] = f"{_x(ref, ours)} less"
    limit = d["goal"].get("peak_mib_max")
    if limit is not None:
        cells |= {"goal": f"≤ {limit:.0f} MiB (0.6 GB)", "met": yes(ours <= limit)}
    return cells


# ---- inference


def _inf(d: dict[str, Any], arch: str, batch: int | None) -> dict[str, Any]:
    recs = [r for r in d["results"] if r["channels_last_3d"]["arch"] == arch]
    if batch is not None:
        recs = [r for r in recs if r["channels_last_3d"]["batch"] == batch]
    if not recs:
        raise KeyError(f"{arch} not in this run")
    return max(recs, key=lambda r: r["channels_last_3d"]["volumes_per_s"])


def _inf_cells(rec: dict[str, Any], with_batch: bool) -> Cells:
    cl, co = rec["channels_last_3d"], rec["contiguous"]
    out = {
        "ours": f"{cl['volumes_per_s']:.3g} vol/s",
        "peer": f"{co['volumes_per_s']:.3g} vol/s (contiguous)",
        "ratio": _x(cl["volumes_per_s"], co["volumes_per_s"]),
    }
    if with_batch:
        out["ours"] += f" (batch {cl['batch']})"
    return out


def _inf_r34(d: dict[str, Any]) -> Cells:
    return _inf_cells(_inf(d, "resnet34", 1), False)


def _inf_demo(d: dict[str, Any]) -> Cells:
    rec = _inf(d, "resnet10", None)
    out = _inf_cells(rec, True)
    out["measure"] = (
        f"forward ResNet-10 (demo) @{rec['channels_last_3d']['size']}³, best batch, CPU; "
        "peer: contiguous layout"
    )
    return out


def _h100_r34(d: dict[str, Any]) -> Cells:
    rec = _inf(d, "resnet34", None)
    v = rec["channels_last_3d"]["volumes_per_s"]
    out = _inf_cells(rec, True)
    out["met"] = yes(v >= GOAL_H100_VOLUMES_S)
    out["measure"] = (
        f"H100: ResNet-34 @256³ forward, {d['device']['name']}, {d['precision']}; peer: contiguous"
    )
    return out


def _h100_e2e(d: dict[str, Any]) -> Cells:
    e = d["e2e"]
    p50 = e["job_s"]["p50"]
    return {
        "measure": f"H100: end to end p50, {e['slices']}-slice study, POST /v1/jobs → succeeded "
        f"({e['device']}, explain {e['explain']})",
        "ours": f"{p50:.2f} s (n = {e['runs']})",
        "peer": f"upload {e['upload_s']['p50']:.2f} s",
        "met": yes(p50 <= GOAL_H100_E2E_S),
    }


def _h100_explain(key: str, goal_s: float) -> Extract:
    def f(d: dict[str, Any]) -> Cells:
        e = d["explain"]
        v = float(e[key])
        return {
            "ours": f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s",
            "peer": f"{e['forward_s'] * 1000:.1f} ms (one forward)",
            "ratio": _x(v, float(e["forward_s"])),
            "met": yes(v <= goal_s),
        }

    return f


# ---- explain


def _pointing(method: str) -> Extract:
    def f(d: dict[str, Any]) -> Cells:
        hit = d["pointing"][method]["hit"]
        peer = d["peers"]["random_lung"]["mean"]
        g = _goal_entry(d, f"pointing game {method} ")
        return {
            "ours": f"{hit['mean']:.2f} (n = {hit['n']})",
            "peer": f"{peer:.2f} (random point in the lungs)",
            "ratio": _x(hit["mean"], peer),
            "met": yes(bool(g["pass"])) if g else "—",
        }

    return f


def _explain_rand(d: dict[str, Any]) -> Cells:
    r = d["randomisation"]["gradcam"][FULL_CASCADE]
    g = _goal_entry(d, "randomisation gradcam")
    return {"ours": f"{r['mean']:.2f} (n = {r['n']})", "met": yes(bool(g["pass"])) if g else "—"}


def _explain_time(d: dict[str, Any]) -> Cells:
    t = d["timing"]
    g, f = t["gradcam"]["median_s"], t["forward"]["median_s"]
    return {"ours": f"{g:.3f} s", "peer": f"{f:.3f} s (forward)", "ratio": _x(g, f)}


# ---- ood

#: the families whose AUROC has a goal: body regions other than the chest, the QA phantom, the HU fault
OOD_GOAL_FAMILIES = ("abdomen", "head", "water_cylinder", "unit_fault")


def _ood_method(d: dict[str, Any]) -> str:
    """The statistics a row reports: those published with the model if the run had them, else the best."""
    return "shipped" if "shipped" in d["table"]["id"] else str(d["best"])


def _ood_id(d: dict[str, Any]) -> Cells:
    t, best = d["table"]["id"], _ood_method(d)
    g = _goal_entry(d, f"ID flag rate ≤ 5% ({best})") or _goal_entry(d, "ID flag rate ≤")
    return {
        "ours": f"{t[best]['flagged']:.1%} ({best}, n = {t['n']})",
        "peer": f"{t['msp']['flagged']:.1%} (msp)",
        "met": yes(bool(g["pass"])) if g else "—",
    }


def _ood_auroc(d: dict[str, Any]) -> Cells:
    best, table = _ood_method(d), d["table"]
    fams = [f for f in OOD_GOAL_FAMILIES if f in table]
    worst, peer = (min(table[f][m]["auroc"] for f in fams) for m in (best, "msp"))
    return {
        "ours": f"{worst:.3f} ({best}, {len(fams)} families × n = {table[fams[0]]['n']})",
        "peer": f"{peer:.3f} (msp)",
        "ratio": _x(worst, peer),
        "met": yes(worst >= 0.95),
    }


def _ood_real(d: dict[str, Any]) -> Cells:
    best = _ood_method(d)
    real = [g for g in d["goals"] if str(g["goal"]).startswith("real ") and f"({best}" in str(g["goal"])]
    if not real:
        raise KeyError("no real series in this run")
    n = sum(bool(g["pass"]) for g in real)
    return {"ours": f"{n} of {len(real)} ({best} or plausibility)", "met": yes(n == len(real))}


# ---- service


def _svc_upload(d: dict[str, Any]) -> Cells:
    u = d["upload"]
    raw, peer = u["service"]["raw"], u["peers"]["s3_direct"]
    return {
        "measure": f"service: one {u['size_bytes'] / 2**20:.0f} MiB upload, MB/s; "
        "peer: Storage.multipart straight to S3",
        "ours": f"{raw['mb_s']:.1f} MB/s",
        "peer": f"{peer['mb_s']:.1f} MB/s",
        "ratio": _x(raw["mb_s"], peer["mb_s"]),
        "met": yes(raw["mb_s"] >= 150),
    }


def _svc_rss(d: dict[str, Any]) -> Cells:
    raw = d["upload"]["service"]["raw"]
    return {"ours": f"+{raw['rss_growth_mib']:.0f} MiB", "met": yes(raw["rss_growth_mib"] <= 64)}


def _status(lat: dict[str, Any], prefix: str) -> Cells:
    j, h = lat["jobs"], lat["healthz"]
    ok = j["latency_ms"]["p99"] <= 20 and j["error_count"] == 0
    return {
        "measure": f"{prefix}: GET /v1/jobs/{{id}} at {j['rate_target']:g} rps for {j['duration_s']:g} s, "
        "p50 / p99; peer: GET /healthz",
        "ours": f"{j['latency_ms']['p50']:.1f} / {j['latency_ms']['p99']:.1f} ms, {j['error_count']} errors",
        "peer": f"{h['latency_ms']['p50']:.1f} / {h['latency_ms']['p99']:.1f} ms",
        "ratio": f"p99 {_x(j['latency_ms']['p99'], h['latency_ms']['p99'])}",
        "met": yes(ok),
    }


def _svc_e2e(d: dict[str, Any]) -> Cells:
    s = d["e2e"]["sequential"]
    g, n = s["gradcam"]["total_s_median"], s["none"]["total_s_median"]
    return {"ours": f"{g:.2f} s", "peer": f"{n:.2f} s (explain none)", "ratio": _x(g, n)}


def _svc_queued(d: dict[str, Any]) -> Cells:
    e = d["e2e"]
    q, s = e["queued"]["gradcam"], e["sequential"]["gradcam"]
    return {
        "measure": f"service: {q['n']} Grad-CAM jobs queued at once, studies/min; peer: one at a time",
        "ours": f"{q['studies_per_min']:.1f}/min",
        "peer": f"{s['studies_per_min']:.1f}/min",
        "ratio": _x(q["studies_per_min"], s["studies_per_min"]),
    }


# ---- e2e (one study, stage by stage)

E2E_STAGES = ("fetching", "reading", "qc", "decoding", "preprocessing", "inference", "explaining", "saving")


def _e2e_study(d: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    name = "real" if "real" in d["studies"] else "phantom"
    return name, d["studies"][name]


def _e2e_warm(d: dict[str, Any]) -> Cells:
    name, r = _e2e_study(d)
    warm, peer = r["warm"]["median"]["total"], r["peer"]["median"]["total"]  # KeyError: no peer, no row
    g = _goal_entry(d, f"{name}: warm")
    n = len(r["warm"]["runs"])
    return {
        "measure": f"e2e: {name} study upload → result with Grad-CAM, worker time (warm p50 of {n}); "
        "peer: the same stages in-process",
        "ours": f"{warm:.2f} s",
        "peer": f"{peer:.2f} s",
        "ratio": _x(warm, peer),
        "met": yes(bool(g["pass"])) if g else "—",
    }


def _e2e_first(d: dict[str, Any]) -> Cells:
    name, r = _e2e_study(d)
    first, warm = r["first"]["stages"]["total"], r["warm"]["median"]["total"]
    g = _goal_entry(d, f"{name}: first")
    return {
        "measure": f"e2e: {name} study, first job of a fresh worker, worker time; peer: its warm jobs",
        "ours": f"{first:.2f} s",
        "peer": f"{warm:.2f} s",
        "ratio": _x(first, warm),
        "met": yes(bool(g["pass"])) if g else "—",
    }


def _e2e_phantom(d: dict[str, Any]) -> Cells:
    r = d["studies"]["phantom"]
    warm, peer = r["warm"]["median"]["total"], r["peer"]["median"]["total"]
    return {"ours": f"{warm:.2f} s", "peer": f"{peer:.2f} s", "ratio": _x(warm, peer)}


def e2e_stage_lines(d: dict[str, Any]) -> list[str]:
    """The per-stage table of each study of ``bench/e2e.py``: first job, warm p50, peer p50."""
    lines = ["", "## One study, stage by stage (`bench/e2e.py`)", ""]
    for name, r in d["studies"].items():
        if "warm" not in r:
            continue
        first, warm = r["first"]["stages"], r["warm"]["median"]
        peer = r["peer"]["median"] if "peer" in r else {}
        lines += [
            f"{name}: seconds per stage, the job's own `stage_timings` (worker time in `total`); peer: the "
            "same stages in the bench's process.",
            "",
            "| stage | first job | warm p50 | peer p50 | warm ÷ peer |",
            "|---|---|---|---|---|",
        ]
        for k in (*E2E_STAGES, "total"):
            w, p = warm.get(k), peer.get(k)
            cells = [f"{v:.3f}" if v is not None else "—" for v in (first.get(k), w, p)]
            ratio = f"{w / p:.2f}×" if w is not None and p else "—"
            lines.append(f"| {k} | " + " | ".join(cells) + f" | {ratio} |")
        lines.append("")
    return lines


# ---- load


def _load_upload(d: dict[str, Any]) -> Cells:
    u = d["upload"]
    s, p = u["service"], u["peer_boto3"]
    g = _goal_entry(d, "upload MB/s")
    return {
        "measure": f"load: {u['uploads']} concurrent uploads of {u['size_bytes'] / 1e6:.0f} MB, total MB/s; "
        "peer: boto3 straight to S3, same bytes and concurrency",
        "ours": f"{s['mb_s']:.1f} MB/s",
        "peer": f"{p['mb_s']:.1f} MB/s",
        "ratio": f"{u['ratio_service_over_boto3']:.2f}×",
        "met": yes(bool(g["pass"])) if g else "—",
    }


def _load_201(d: dict[str, Any]) -> Cells:
    s = d["upload"]["service"]
    n, rounds = d["upload"]["uploads"], len(s.get("rounds", [None]))
    return {
        "ours": f"{s['statuses'].get('201', 0)}/{n * rounds} 201 ({n} at once × {rounds} round(s); "
        f"retries: {s.get('retries') or 'none'})",
        "met": yes(bool(s["all_201"])),
    }


def _load_rss(d: dict[str, Any]) -> Cells:
    s = d["upload"]["service"]
    goals = [g for g in d.get("goals", []) if str(g["goal"]).startswith("API RSS ")]
    if not goals:
        raise KeyError("no API RSS goals in this run")
    missed = [g["measured"] for g in goals if not g["pass"]]
    rounds = len(s.get("rounds", [None]))
    return {
        "ours": f"{s['rss_before_mib']:.0f} / {s['rss_peak_mib']:.0f} / {s['rss_after_mib']:.0f} MiB "
        f"({rounds} round(s); kept {s['rss_kept_mib']:+.0f} MiB)",
        "goal": "; ".join(str(g["goal"]).removeprefix("API RSS ") for g in goals),
        "met": yes(not missed) + (f" ({', '.join(missed)})" if missed else ""),
    }


def _load_status(d: dict[str, Any]) -> Cells:
    return _status(d["status"], "load")


def _burst(workers: str) -> Extract:
    def f(d: dict[str, Any]) -> Cells:
        j = d["jobs"]
        r = j["runs"][workers]
        ok = r["api_states"] == {"succeeded": r["jobs"]} and r["max_attempt"] == 1
        return {
            "measure": f"load: burst of {j['jobs']} jobs (demo model, explain {j['explain']}), "
            f"{workers} CPU worker process(es): jobs/s, job latency p50 / p95",
            "ours": f"{r['jobs_per_s']:.2f} jobs/s, "
            f"{r['latency_s']['p50']:.1f} / {r['latency_s']['p95']:.1f} s",
            "met": yes(ok),
        }

    return f


def _burst_ratio(d: dict[str, Any]) -> Cells:
    runs = d["jobs"]["runs"]
    ratio = d["jobs"]["ratio_2w_over_1w"]
    return {
        "ours": f"{runs['2']['jobs_per_s']:.2f} jobs/s (2 workers)",
        "peer": f"{runs['1']['jobs_per_s']:.2f} jobs/s (1 worker)",
        "ratio": f"{ratio:.2f}×",
        "met": "—",
    }


SPECS = (
    Spec("preprocess", "preprocess: DICOM ZIP → tensor, s; peer: MONAI chain", "≥ 10× faster", _pre_zip),
    Spec(
        "preprocess", "preprocess: DICOM ZIP → tensor, s; peer: plain reference", "≥ 3× faster", _pre_zip_ref
    ),
    Spec(
        "preprocess",
        "preprocess only (after reading), s; peer: MONAI transforms",
        "≥ 9× faster (docs/architecture.md §7)",
        _pre_only_monai,
    ),
    Spec(
        "preprocess",
        "preprocess only (after reading), s; peer: plain reference",
        "≥ 2.5× faster",
        _pre_only_ref,
    ),
    Spec("preprocess", "preprocess: output vs the plain reference", "r ≥ 0.99999", _pre_exact),
    Spec("preprocess", "preprocess: peak RSS above imports, ZIP → tensor; peer: reference", "—", _pre_mem),
    Spec("inference", "forward ResNet-34 @256³, batch 1, CPU; peer: contiguous layout", "—", _inf_r34),
    Spec("inference", "forward ResNet-10 (demo), best batch, CPU; peer: contiguous layout", "—", _inf_demo),
    Spec(
        "inference_cuda",
        "H100: ResNet-34 @256³ throughput with batching",
        f"≥ {GOAL_H100_VOLUMES_S:g} volumes/s",
        _h100_r34,
    ),
    Spec("e2e_gpu", "H100: end to end p50, 300-slice study", f"≤ {GOAL_H100_E2E_S:g} s", _h100_e2e),
    Spec(
        "gpu",
        "H100: Grad-CAM per study, ResNet-34 @256³ (`make bench-gpu`); peer: one forward",
        "≤ 30 ms",
        _h100_explain("gradcam_s", 0.030),
    ),
    Spec(
        "gpu",
        "H100: Integrated Gradients, 32 steps, per study (`make bench-gpu`); peer: one forward",
        "≤ 1 s",
        _h100_explain("ig_s", 1.0),
    ),
    Spec(
        "explain",
        "explain: Grad-CAM pointing game (hit rate); peer: random point in the lungs",
        "≥ 0.90",
        _pointing("gradcam"),
    ),
    Spec(
        "explain",
        "explain: Integrated Gradients pointing game; peer: random point in the lungs",
        "≥ 0.80",
        _pointing("integrated_gradients"),
    ),
    Spec("explain", "explain: Grad-CAM after randomising all weights, Spearman ρ", "< 0.3", _explain_rand),
    Spec("explain", "explain: Grad-CAM s/study; peer: one forward pass", "—", _explain_time),
    Spec("ood", "ood: in-distribution flag rate, held-out phantoms; peer: msp", "≤ 5 %", _ood_id),
    Spec(
        "ood",
        "ood: lowest AUROC of abdomen, head, water cylinder, unit fault vs held-out phantoms; peer: msp",
        "≥ 0.95",
        _ood_auroc,
    ),
    Spec("ood", "ood: real chest CTs flagged out of distribution", "all", _ood_real),
    Spec(
        "service",
        "service: one large upload, MB/s; peer: Storage.multipart straight to S3",
        "≥ 150 MB/s",
        _svc_upload,
    ),
    Spec("service", "service: API RSS growth during that upload", "≤ 64 MiB", _svc_rss),
    Spec(
        "service",
        "service: GET /v1/jobs/{id} p50 / p99; peer: GET /healthz",
        "p99 ≤ 20 ms, no errors",
        lambda d: _status(d["latency"], "service"),
    ),
    Spec(
        "service",
        "service: small phantom study upload → result with Grad-CAM, s; peer: explain none",
        "—",
        _svc_e2e,
    ),
    Spec("service", "service: jobs queued at once, studies/min; peer: one at a time", "—", _svc_queued),
    Spec(
        "e2e",
        "e2e: real study → result with Grad-CAM, warm worker time; peer: in-process",
        "≤ 2.5 s",
        _e2e_warm,
    ),
    Spec("e2e", "e2e: first job of a fresh worker, worker time; peer: its warm jobs", "≤ 3.5 s", _e2e_first),
    Spec(
        "e2e",
        "e2e: 150×512² JPEG-lossless phantom → result with Grad-CAM, warm worker time; peer: in-process",
        "—",
        _e2e_phantom,
    ),
    Spec("load", "load: concurrent uploads, total MB/s; peer: boto3 straight to S3", "≥ 0.7×", _load_upload),
    Spec("load", "load: concurrent uploads answered 201", "all", _load_201),
    Spec("load", "load: API RSS before / peak / after the concurrent uploads", "bounded, no leak", _load_rss),
    Spec(
        "load",
        "load: GET /v1/jobs/{id} p50 / p99; peer: GET /healthz",
        "p99 ≤ 20 ms, no errors",
        _load_status,
    ),
    Spec(
        "load",
        "load: burst of jobs, 1 CPU worker: jobs/s, latency p50 / p95",
        "all succeeded, once",
        _burst("1"),
    ),
    Spec(
        "load",
        "load: burst of jobs, 2 CPU workers: jobs/s, latency p50 / p95",
        "all succeeded, once",
        _burst("2"),
    ),
    Spec("load", "load: throughput 2 workers ÷ 1 worker (2 CPUs)", "—", _burst_ratio),
)


def _machine_of(data: dict[str, Any], meta: dict[str, Any] | None) -> str:
    """The machine a result was measured on: the run's meta, else what the bench's JSON says."""
    if meta and meta.get("machine"):
        return machine_label(meta["machine"])
    m = dict(data.get("machine") or {})
    if not m:
        return "unknown"
    dev = data.get("device") or {}
    return machine_label(
        {
            "cpu_model": m.get("cpu_model") or m.get("cpu") or m.get("processor"),
            "cores": m.get("cores") or m.get("cpus"),
            "ram_gib": m.get("ram_gib", "?"),
            "torch": m.get("torch") or data.get("torch"),
            "gpu": m.get("gpu") or (dev.get("name") if dev.get("type") == "cuda" else None),
        }
    )


def build_rows(results: dict[str, tuple[dict[str, Any] | None, dict[str, Any] | None, str]]) -> list[Row]:
    """One row per spec: the bench's numbers, or why there are none.

    ``results[bench] = (data, meta, why)``: the bench's JSON (None when missing), its run record,
    and the reason shown when the data is missing.
    """
    rows: list[Row] = []
    for spec in SPECS:
        data, meta, why = results.get(spec.bench, (None, None, "not run"))
        row = Row(measure=spec.measure, ours=why, goal=spec.goal, met="n/a", bench=spec.bench)
        if data is not None:
            try:
                cells = spec.extract(data)
            except (KeyError, IndexError, TypeError, ZeroDivisionError) as e:
                row.ours = f"not measured in this run ({type(e).__name__}: {e})"
            else:
                row = Row(**{**asdict(row), "met": "—", **cells})
                row.machine = _machine_of(data, meta)
        rows.append(row)
    return rows


def render(
    rows: list[Row],
    runs: list[dict[str, Any]],
    command: str,
    quick: bool,
    results_dir: Path,
    e2e: dict[str, Any] | None = None,
) -> str:
    shown_dir = _relative(str(results_dir.resolve()))
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Performance report",
        "",
        f"Generated on {now} by `{command}` (machine of the report: {machine_label(machine_info())}).",
        "",
    ]
    if quick:
        lines += [
            "> **--quick**: every bench ran with tiny parameters (a smoke run). The numbers show that",
            "> the benches work, not how fast the service is.",
            "",
        ]
    lines += [
        "Every figure comes with its peer measured in the same run of the same bench (the same",
        "machine, the same minute): a reference implementation, the layer below, or the other",
        "configuration. `met?` compares ours with the goal; `—`: no goal, `n/a`: not measured.",
        "The machine is the one each bench ran on (CPU model, cores, RAM, torch, GPU).",
        "",
        "| measure | ours | peer in the same run | ratio | goal | met? | machine |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [r.measure, r.ours, r.peer, r.ratio, r.goal, r.met, r.machine]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if e2e is not None:
        lines += e2e_stage_lines(e2e)
    lines += ["", "## Runs", "", "| bench | command | date (UTC) | wall | exit |", "|---|---|---|---|---|"]
    for m in runs:
        wall = f"{m['wall_s'] / 60:.1f} min" if isinstance(m.get("wall_s"), float) else "?"
        command_shown = _relative(str(m["command"]))
        lines.append(f"| {m['bench']} | `{command_shown}` | {m['date']} | {wall} | {m['returncode']} |")
    lines += [
        "",
        "Each bench run by this script leaves its output (every table, per-stage times, CPU use) in",
        f"`{shown_dir}/<bench>.log` and its numbers in `{shown_dir}/<bench>.json`; the methods are",
        "described in the docstring at the top of each `bench/*.py`. The H100 rows need a GPU host:",
        "`python bench/report.py --reuse` there (with these results in place) runs only the GPU benches.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    names = [b.name for b in BENCHES]
    p.add_argument("--benches", default=",".join(names), help=f"comma list of {','.join(names)}")
    p.add_argument("--quick", action="store_true", help="tiny parameters for every bench")
    p.add_argument("--reuse", action="store_true", help="take existing <dir>/<bench>.json, run the rest")
    p.add_argument("--no-run", action="store_true", help="run nothing: report what is in <dir>")
    p.add_argument("--results-dir", default=str(ROOT / "var" / "bench"), help="bench JSON files")
    p.add_argument("--out", default=str(ROOT / "docs" / "performance.md"), help="the Markdown report")
    p.add_argument("--timeout-min", type=float, default=60.0, help="limit per bench in minutes")
    args = p.parse_args(argv)
    chosen = [n.strip() for n in args.benches.split(",") if n.strip()]
    if bad := [n for n in chosen if n not in BY_NAME]:
        p.error(f"unknown benches {bad}")
    out_dir = Path(args.results_dir)
    gpu = machine_info()["gpu"] is not None
    command = _relative(" ".join(["python", "bench/report.py", *(sys.argv[1:] if argv is None else argv)]))

    results: dict[str, tuple[dict[str, Any] | None, dict[str, Any] | None, str]] = {}
    runs: list[dict[str, Any]] = []
    if not args.quick and not args.no_run:
        est = sum(BY_NAME[n].est_full_min for n in chosen if gpu or not BY_NAME[n].gpu_only)
        print(
            f"full-size run: up to ~{est:.0f} min as timed on {EST_HARDWARE}, idle (less with --reuse);"
            f" running on {machine_label(machine_info())}",
            flush=True,
        )
    for name in chosen:
        b = BY_NAME[name]
        json_path = out_dir / f"{name}.json"
        meta = _load(out_dir / f"{name}.meta.json")
        if b.gpu_only and not gpu and not (args.reuse and json_path.is_file()):
            results[name] = (None, None, NO_GPU)
            continue
        if not ((args.reuse or args.no_run) and json_path.is_file()) and not args.no_run:
            meta = run_bench(b, out_dir, args.quick, args.timeout_min * 60)
        data = _load(json_path)
        if data is None:
            why = (
                "not measured: no result"
                if args.no_run
                else f"not measured: bench failed (exit {meta and meta['returncode']})"
            )
            results[name] = (None, meta, why)
        else:
            results[name] = (data, meta, "")
        if meta is not None:
            runs.append(meta)
        elif data is not None:  # a result from before report.py kept run records
            runs.append(_run_of(name, json_path, data))
    for b in BENCHES:
        if b.name not in results:
            results[b.name] = (
                None,
                None,
                NO_GPU if b.gpu_only and not gpu else "not measured: left out of this report",
            )

    rows = build_rows(results)
    md = render(rows, runs, command, args.quick, out_dir, results.get("e2e", (None, None, ""))[0])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    write_json(
        out_dir / "report.json",
        {"command": command, "quick": args.quick, "rows": [asdict(r) for r in rows], "runs": runs},
    )
    print(md)
    print(f"wrote {out} and {out_dir / 'report.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
