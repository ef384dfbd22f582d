"""Train one or more variants of a training config side by side on one GPU machine, inside
a wall-time budget, and score each on in-memory phantom corpora.

Made for a GPU host rented for a fixed time with nothing prepared on it (docs/models.md,
Training): the config's ``phantom_corpora`` are generated there (no ZIPs to carry), every
variant trains in its own process against one shared tensor cache, and each publishes into
its own copy of the manifest. The DICOM tuning/test corpora are not there, so ``tune_labels_csv`` and
``test_labels_csv`` are dropped: run ``service4ct retune`` on the published entry
afterwards, where those corpora are, to pick and report the operating points.

    python scripts/train_on_gpu.py weights/resnet10-demo.train.yaml --out OUT \\
        --deadline-s 520 --variant plain:lesion_weight=0 --variant lesion:lesion_weight=0.1 \\
        --score 950:240 --score 901:240

Each variant leaves ``OUT/<name>.tar.gz`` (weights, manifest, card, plots, summary,
scores, log) and ``OUT/report.json`` sums them up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: seconds kept after the fit for predicting, calibrating, publishing and scoring
POST_FIT_S = 90.0
#: seconds between the deadline and the stop of a variant still running (then its best
#: checkpoint is packed as float16 weights instead of the published model)
GRACE_S = 30.0


def _parse_assignment(text: str) -> tuple[str, Any]:
    key, _, value = text.partition("=")
    if not key or not _:
        raise SystemExit(f"expected KEY=YAML, got {text!r}")
    return key, yaml.safe_load(value)


def _child(spec_path: Path) -> None:
    """Train one variant (a JSON spec written by the parent), then score it."""
    import numpy as np

    from ml import evaluate as ev
    from ml.data import PhantomCorpus, TensorCache, phantom_records
    from ml.model.checkpoint import load_checkpoint
    from ml.model.network import build_model
    from ml.train import TrainConfig, score_records, scoring_device, train

    spec = json.loads(spec_path.read_text())
    cfg = TrainConfig.from_dict(spec["config"])
    t0 = time.perf_counter()
    summary = train(cfg)
    fit_s = time.perf_counter() - t0
    assert cfg.weights_path is not None
    model = build_model(cfg.model)
    load_checkpoint(model, cfg.weights_path, strict=True)
    model = model.float().eval().to(scoring_device(cfg.accelerator))
    cache = TensorCache(cfg.cache_dir, cfg.preprocess)
    temperature = float(summary["calibration"]["temperature"])
    thresholds = {k: float(v["threshold"]) for k, v in summary["operating_points"].items()}
    scores: dict[str, Any] = {"train_seconds": round(fit_s, 1), "fit": summary["fit"]}
    for seed, n in spec["score"]:
        recs = phantom_records(PhantomCorpus.from_dict({**spec["corpus_sizes"], "seed": seed, "n": n}))
        y, p = score_records(model, recs, cache, temperature)
        row: dict[str, Any] = {"n": len(y), "auc": float(ev.roc_auc(y, p))}
        for name, thr in thresholds.items():
            pos = p >= thr
            row[name] = {
                "threshold": thr,
                "sensitivity": float(np.mean(pos[y == 1])),
                "specificity": float(np.mean(~pos[y == 0])),
            }
        scores[f"seed{seed}"] = row
    Path(spec["scores_path"]).write_text(json.dumps(scores, indent=2))


def _pack(name: str, vdir: Path, rc: int, out: Path) -> dict[str, Any]:
    """``out/<name>.tar.gz`` of what the variant left; its scores (or the checkpoint it reached)."""
    scores_path = vdir / "scores.json"
    result: dict[str, Any] = {
        "rc": rc,
        **(json.loads(scores_path.read_text()) if scores_path.is_file() else {}),
    }
    files = [*sorted((vdir / "weights").iterdir()), vdir / "run" / "summary.json", scores_path]
    if not scores_path.is_file():  # stopped or failed: keep the best checkpoint's network
        ckpts = sorted((vdir / "run").glob("final/checkpoints/*.ckpt"))
        if ckpts:
            import torch

            state = torch.load(ckpts[-1], map_location="cpu", weights_only=False)["state_dict"]
            net = {
                k.removeprefix("model."): v.half() if v.is_floating_point() else v for k, v in state.items()
            }
            torch.save(net, vdir / "best-checkpoint.fp16.pt")
            files.append(vdir / "best-checkpoint.fp16.pt")
            result["checkpoint"] = ckpts[-1].name
    with tarfile.open(out / f"{name}.tar.gz", "w:gz") as tar:
        for f in [*files, vdir / "spec.json", vdir / "train.log"]:
            if f.is_file():
                tar.add(f, arcname=f.name)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/s4ct-train"))
    ap.add_argument("--deadline-s", type=float, required=True, help="everything done this many s from start")
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=YAML", help="override for all variants"
    )
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=YAML[,KEY=YAML]")
    ap.add_argument(
        "--score", action="append", default=[], metavar="SEED:N", help="in-memory corpus to score"
    )
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child)
        return
    start = time.monotonic()
    from ml.data import PhantomCorpus, TensorCache, phantom_records
    from ml.train import TrainConfig, fill_cache_with_progress

    base = TrainConfig.from_yaml(args.config).to_dict()
    base.update(dict(_parse_assignment(s) for s in args.set))
    base.update(tune_labels_csv=None, test_labels_csv=None)
    work = args.work
    base.update(cache_dir=str(work / "cache"))
    args.out.mkdir(parents=True, exist_ok=True)
    corpora = [PhantomCorpus.from_dict(c) for c in base["phantom_corpora"]]
    sizes = {k: v for k, v in corpora[0].to_dict().items() if k not in ("seed", "n")}
    score = [tuple(int(v) for v in s.split(":")) for s in args.score]
    cfg = TrainConfig.from_dict(base)
    records = [r for c in corpora for r in phantom_records(c)]
    records += [
        r
        for seed, n in score
        for r in phantom_records(PhantomCorpus.from_dict({**sizes, "seed": seed, "n": n}))
    ]
    t = time.monotonic()
    failed = fill_cache_with_progress(
        TensorCache(cfg.cache_dir, cfg.preprocess), records, cfg.preprocess_workers
    )
    report: dict[str, Any] = {
        "studies_prepared": len(records),
        "prepare_seconds": round(time.monotonic() - t, 1),
        "failed": failed,
        "variants": {},
    }
    print(json.dumps(report), flush=True)
    budget_min = (args.deadline_s - (time.monotonic() - start) - POST_FIT_S) / 60.0
    if budget_min < 0.5:
        raise SystemExit(f"no time left to train ({budget_min:.2f} min)")
    procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    for v in args.variant or ["run:"]:
        name, _, assigns = v.partition(":")
        vdir = work / name
        shutil.rmtree(vdir, ignore_errors=True)
        (vdir / "weights").mkdir(parents=True)
        shutil.copy(ROOT / "weights" / "manifest.json", vdir / "weights" / "manifest.json")
        conf = {
            **base,
            **dict(_parse_assignment(a) for a in assigns.split(",") if a),
            "output_dir": str(vdir / "run"),
            "weights_path": str(vdir / "weights" / Path(str(base.get("weights_path") or "model.pt")).name),
            "manifest_path": str(vdir / "weights" / "manifest.json"),
            "max_time_minutes": round(budget_min, 2),
        }
        spec = {
            "config": conf,
            "score": score,
            "corpus_sizes": sizes,
            "scores_path": str(vdir / "scores.json"),
        }
        (vdir / "spec.json").write_text(json.dumps(spec, indent=2))
        log = (vdir / "train.log").open("wb")
        cmd = [sys.executable, str(Path(__file__).resolve()), str(args.config), "--out", str(args.out)]
        cmd += ["--deadline-s", "0", "--child", str(vdir / "spec.json")]
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ), vdir)
    while procs:
        time.sleep(2.0)
        late = time.monotonic() - start > args.deadline_s + GRACE_S
        for name, (proc, vdir) in list(procs.items()):
            if proc.poll() is None and not late:
                continue
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            del procs[name]
            report["variants"][name] = _pack(name, vdir, proc.returncode, args.out)
            (args.out / "report.json").write_text(json.dumps(report, indent=2))
    report["total_seconds"] = round(time.monotonic() - start, 1)
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
