"""Out-of-distribution detection with the demo model: phantom families against fresh in-distribution phantoms.

Usage::

    python bench/ood.py                       # fit 240, held-out 40, 15 per family: 370 studies,
                                              # ≈ 13 min on a 2-core Intel Xeon VM, seconds when cached
    python bench/ood.py --save-stats var/ood  # also write the fitted statistics, one file per method
    python bench/ood.py --fit-n 8 --n-id 4 --n-ood 4 --rows 48 --pixel-mm 8 --slice-mm 5 \\
        --input-size 32 --no-real             # smoke run (< 1 min; the features mean nothing then)

Studies, all generated in memory from seeds the demo model never saw (the seeds of every
corpus named in ``weights/resnet10-demo*.yaml`` and ``var/demo-data/*/labels.csv`` are
refused):

* **fit set**: ``--fit-n`` phantoms of the demo corpus (128² pixels of 3 mm, 2.5 mm slices,
  balanced labels, difficulty 0.3–1.0), corpus seed ``--fit-seed``. Each method of
  :data:`ml.ood.OOD_METHODS` is fitted on it with :func:`ml.ood.fit_ood` (labels as classes;
  the threshold keeps 95 % of a seeded 30 % of it held out inside the fit). With 60 the
  Mahalanobis threshold rests on 18 studies (it is their largest score) and flagged 15 % of
  fresh in-distribution phantoms on the demo model; with 240 (72 held out), none of 40;
* **held-out in-distribution set**: ``--n-id`` more, corpus seed ``--id-seed``: the
  in-distribution flag rate, and the negatives (0) of every AUROC;
* **families**: ``--n-ood`` studies of each family of :data:`ml.phantom.OOD_FAMILIES`
  (:func:`ml.phantom.make_family` on the same grid; the chest-based ones alternate labels),
  phantom seeds of corpus ``--ood-seed``: the positives (1) of the AUROC of that family;
* **real series** (optional): every ``*.zip`` in ``--real-dir`` (by default the workspace's
  real chest CTs beside the repository; skipped when absent), read like the worker does
  (:func:`ml.io.read_study`).

Per study, one forward pass of the model gives the logits and the pooled penultimate
features (:func:`ml.ood.features.logits_and_features`), and the pixel plausibility check
(:func:`ml.ood.plausibility.check_plausibility`) runs on the same model input. Both are cached per study
in ``--cache-dir`` (``.npz``, keyed by the study, the grid, the model's sha256, the
preprocessing and the generator's source), so reruns cost seconds.

Reported: per family × method the AUROC (ID = 0, OOD = 1, :func:`ml.evaluate.roc_auc`,
stratified bootstrap 95 % CI) and the share flagged (score > threshold); the in-distribution
flag rate on the held-out set; the share flagged by plausibility alone and by "plausibility
OR method", with the plausibility reasons per family; each real series' scores and flags;
the fitted thresholds; goals (ID flag rate ≤ 5 %; AUROC ≥ 0.95 for abdomen, head, water
cylinder and unit fault; real series flagged). The best method has the highest mean AUROC
over the families (ties: the higher smallest AUROC). ``--json`` (default
``var/bench/ood.json``) holds every per-study score.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [] if str(ROOT) in sys.path else [str(ROOT)]  # run as a script: import ml and bench

import torch  # noqa: E402

from bench.common import heldout_seeds, machine_info, machine_label, phantom_spec, used_seeds, write_json  # noqa: E402
from ml import phantom  # noqa: E402
from ml.evaluate import bootstrap_ci, roc_auc  # noqa: E402
from ml.geometry import CTVolume  # noqa: E402
from ml.inference import Predictor  # noqa: E402
from ml.io import read_study, sha256_file  # noqa: E402
from ml.ood import OOD_METHODS, OODStats, fit_ood  # noqa: E402
from ml.ood.features import logits_and_features  # noqa: E402
from ml.ood.plausibility import check_plausibility  # noqa: E402
from ml.preprocess import PreprocessConfig, preprocess  # noqa: E402

MANIFEST = ROOT / "weights" / "manifest.json"
REAL_DIR = ROOT.parent / "shared" / "data" / "real-ct"
GOAL_ID_FLAG_RATE = 0.05
SHIPPED = "shipped"  # the column of the statistics published with the model
GOAL_AUROC = 0.95
GOAL_FAMILIES = ("abdomen", "head", "water_cylinder", "unit_fault")

F64 = npt.NDArray[np.float64]

#: numeric options: flag, type, default, help
OPTIONS: tuple[tuple[str, type, Any, str], ...] = (
    ("--fit-n", int, 240, "in-distribution phantoms to fit on"),
    ("--n-id", int, 40, "held-out in-distribution phantoms"),
    ("--n-ood", int, 15, "studies per family"),
    ("--fit-seed", int, 870, "corpus seed of the fit set"),
    ("--id-seed", int, 871, "corpus seed of the held-out set"),
    ("--ood-seed", int, 872, "corpus seed of the families"),
    ("--rows", int, 128, "phantom matrix (the demo corpus's)"),
    ("--pixel-mm", float, 3.0, "phantom pixel spacing, mm"),
    ("--slice-mm", float, 2.5, "phantom slice spacing, mm"),
    ("--input-size", int, None, "model input edge, for smoke runs only (the model's)"),
    ("--temperature", float, 1.0, "logit temperature of msp and energy"),
    ("--keep", float, 0.95, "share of held-out in-distribution studies a threshold keeps"),
    ("--bootstrap", int, 1000, "bootstrap resamples of the AUROC CI"),
    ("--threads", int, None, "torch CPU threads (torch's choice)"),
)


@dataclass
class Study:
    """One study's model outputs and plausibility (``label`` -1 where there is none)."""

    group: str  # "fit", "id", a family name or "real"
    name: str
    label: int
    logits: F64
    features: F64
    plausibility: dict[str, Any]
    seconds: float = 0.0
    cached: bool = False
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def implausible(self) -> bool:
        return bool(self.plausibility["reasons"])

    def describe(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "name": self.name,
            "label": self.label,
            "logits": self.logits.round(4).tolist(),
            "plausibility": self.plausibility,
            "scores": self.scores,
            "seconds": round(self.seconds, 2),
        }


class Runner:
    """Computes (or reads from the cache) the outputs of one study at a time."""

    def __init__(self, predictor: Predictor, cfg: PreprocessConfig, cache_dir: Path | None) -> None:
        self.predictor = predictor
        self.cfg = cfg
        self.cache_dir = cache_dir
        sources = sorted((ROOT / "ml" / "phantom").glob("*.py"))
        self.salt = [
            predictor.entry.sha256,
            cfg.to_dict(),
            hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest(),
        ]
        self.seconds = {"volume": 0.0, "preprocess": 0.0, "forward": 0.0, "plausibility": 0.0}

    def study(self, group: str, name: str, label: int, key: Any, volume: Callable[[], CTVolume]) -> Study:
        digest = hashlib.sha256(json.dumps([*self.salt, key], default=str).encode()).hexdigest()[:32]
        path = self.cache_dir / f"{digest}.npz" if self.cache_dir else None
        if path is not None and path.is_file():
            with np.load(path, allow_pickle=False) as z:
                plaus = json.loads(str(z["plausibility"]))
                return Study(group, name, label, z["logits"], z["features"], plaus, cached=True)
        t0 = time.perf_counter()
        vol = volume()
        t1 = time.perf_counter()
        res = preprocess(vol, self.cfg)
        t2 = time.perf_counter()
        with torch.inference_mode():
            z_t, f_t = logits_and_features(self.predictor.model, res.tensor.to(self.predictor.device))
        logits, feats = z_t[0].double().cpu().numpy(), f_t[0].double().cpu().numpy()
        t3 = time.perf_counter()
        vox = res.geometry.model_voxel_mm()
        rep = check_plausibility(res.tensor.numpy(), vox, self.cfg.hu_window).to_dict()
        t4 = time.perf_counter()
        for k, dt in zip(self.seconds, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            self.seconds[k] += dt
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, logits=logits, features=feats, plausibility=np.array(json.dumps(rep)))
            tmp.replace(path)
        return Study(group, name, label, logits, feats, rep, seconds=t4 - t0)


def family_volume(family: str, seed: int, label: int, grid: dict[str, Any]) -> CTVolume:
    return phantom.make_family(family, seed, label=label, **grid).volume()


def real_volume(zip_path: Path) -> CTVolume:
    volume = read_study(zip_path).volume
    assert volume is not None
    return volume


def auroc(id_scores: F64, ood_scores: F64, n_boot: int) -> dict[str, Any]:
    y = np.r_[np.zeros(len(id_scores)), np.ones(len(ood_scores))]
    s = np.r_[id_scores, ood_scores]
    lo, hi = bootstrap_ci(y, s, roc_auc, n=n_boot, seed=0) if n_boot else (float("nan"), float("nan"))
    return {"auroc": roc_auc(y, s), "ci95": [lo, hi]}


def pct(x: float) -> str:
    return f"{100 * x:5.1f}%"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for flag, kind, default, text in OPTIONS:
        ap.add_argument(flag, type=kind, default=default, help=f"{text} (default {default})")
    ap.add_argument("--families", default=",".join(phantom.OOD_FAMILIES), help="comma-separated names")
    ap.add_argument("--real-dir", type=Path, default=REAL_DIR, help="folder of real chest-CT ZIPs")
    ap.add_argument("--no-real", action="store_true", help="skip the real series")
    ap.add_argument("--cache-dir", type=Path, default=ROOT / "var" / "cache" / "ood", help="feature cache")
    ap.add_argument("--save-stats", type=Path, default=None, help="folder for the fitted statistics")
    ap.add_argument("--json", type=Path, default=ROOT / "var" / "bench" / "ood.json")
    args = ap.parse_args(argv)
    families = [f for f in args.families.split(",") if f]
    if unknown := sorted(set(families) - set(phantom.OOD_FAMILIES)):
        raise SystemExit(f"unknown families {unknown}; choose from {phantom.OOD_FAMILIES}")
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    predictor = Predictor.from_manifest(MANIFEST, device="cpu")
    entry = predictor.entry
    cfg = predictor.preprocess_config
    if args.input_size:
        cfg = PreprocessConfig.from_dict({**cfg.to_dict(), "target_size": [args.input_size] * 3})
    runner = Runner(predictor, cfg, args.cache_dir)
    used: set[int] = set()
    for yml in sorted((ROOT / "weights").glob(f"{entry.name}*.yaml")):
        used |= used_seeds(yml)
    grid = {"rows": args.rows, "pixel_spacing_mm": args.pixel_mm, "slice_spacing_mm": args.slice_mm}
    fam_grid = {"rows": args.rows, "cols": args.rows, **{k: v for k, v in grid.items() if k != "rows"}}
    print(
        f"model {entry.name} {entry.version}, input {cfg.target_size}; phantoms {args.rows}² × "
        f"{args.pixel_mm} mm, {args.slice_mm} mm slices; {machine_label(machine_info())}",
        flush=True,
    )

    studies: list[Study] = []

    def add(st: Study) -> None:
        studies.append(st)
        top = ",".join(st.plausibility["reasons"]) or "plausible"
        how = "cached" if st.cached else f"{st.seconds:.1f} s"
        print(f"  {st.group:<15} {st.name:<12} {how:>7}  {top}", flush=True)

    for group, corpus_seed, n in (("fit", args.fit_seed, args.fit_n), ("id", args.id_seed, args.n_id)):
        heldout_seeds(corpus_seed, n, used)  # exits when a seed of the plan was used in training
        for _, seed, label in phantom.corpus_plan(n, corpus_seed):
            spec = phantom_spec(seed, label, **grid)
            add(
                runner.study(
                    group,
                    str(seed),
                    label,
                    ["id", spec],
                    lambda s=spec: phantom.phantom_volume(phantom.generate_phantom(s)),
                )
            )
    ood_seeds = heldout_seeds(args.ood_seed, args.n_ood, used)
    for fam in families:
        for i, seed in enumerate(ood_seeds):
            label = i % 2 if fam in phantom.CHEST_FAMILIES else 0
            key = ["family", fam, seed, label, fam_grid]
            add(
                runner.study(
                    fam,
                    str(seed),
                    label,
                    key,
                    lambda f=fam, s=seed, y=label: family_volume(f, s, y, fam_grid),
                )
            )
    reals = [] if args.no_real or not args.real_dir.is_dir() else sorted(args.real_dir.glob("*.zip"))
    for zp in reals:
        add(runner.study("real", zp.stem, -1, ["real", sha256_file(zp)], lambda p=zp: real_volume(p)))
    t_compute = time.perf_counter() - t_start

    # ---- fit every method on the fit set, score everything
    def stack(group: str) -> tuple[F64, F64, list[Study]]:
        sel = [s for s in studies if s.group == group]
        return np.stack([s.features for s in sel]), np.stack([s.logits for s in sel]), sel

    f_fit, z_fit, fit = stack("fit")
    y_fit = np.array([s.label for s in fit])
    fitted_on = (
        f"{len(fit)} in-distribution phantoms ({args.rows}² × {args.pixel_mm} mm, "
        f"{args.slice_mm} mm slices), corpus seed {args.fit_seed}, held out from training"
    )
    stats: dict[str, OODStats] = {}
    for m in OOD_METHODS:
        stats[m] = fit_ood(
            f_fit, z_fit, y_fit, method=m, fitted_on=fitted_on, keep=args.keep, temperature=args.temperature
        )
        for s in studies:
            s.scores[m] = float(stats[m].scores(s.features[None], s.logits[None])[0])

    shipped = predictor.ood  # the statistics published with the model (manifest ``ood``), if any
    if shipped is not None:
        stats[SHIPPED] = shipped
        for s in studies:
            s.scores[SHIPPED] = float(shipped.scores(s.features[None], s.logits[None])[0])
    methods = [*OOD_METHODS, *([SHIPPED] if shipped is not None else [])]

    def scores(group: str, m: str) -> F64:
        return np.array([s.scores[m] for s in studies if s.group == group])

    def plaus(group: str) -> npt.NDArray[np.bool_]:
        return np.array([s.implausible for s in studies if s.group == group])

    table: dict[str, Any] = {}
    rows = ["id", *families]
    for g in rows:
        p = plaus(g)
        reasons = Counter(r for s in studies if s.group == g for r in s.plausibility["reasons"])
        rec: dict[str, Any] = {
            "n": int(p.size),
            "plausibility_flagged": float(p.mean()),
            "reasons": dict(reasons),
        }
        for m in methods:
            sc = scores(g, m)
            flags = stats[m].flags(sc)
            r = {"flagged": float(flags.mean()), "flagged_or_plausibility": float((flags | p).mean())}
            if g != "id":
                r.update(auroc(scores("id", m), sc, args.bootstrap))
            rec[m] = r
        table[g] = rec
    mean_auc = {m: float(np.mean([table[f][m]["auroc"] for f in families])) for m in methods}
    min_auc = {m: float(np.min([table[f][m]["auroc"] for f in families])) for m in methods}
    best = max(OOD_METHODS, key=lambda m: (mean_auc[m], min_auc[m]))

    # ---- print
    width = 26
    head = f"{'':<16}{'n':>4} {'plaus.':>7} | " + " | ".join(f"{m:<{width}}" for m in methods)
    sub = f"{'':<16}{'':>4} {'flag':>7} | " + " | ".join(
        f"{'AUROC':>6} {'flag':>6} {'+plaus':>6}".ljust(width) for _ in methods
    )
    print(f"\nOOD detection: AUROC (ID = held-out phantoms) and share flagged per family; {best} is best")
    print(head)
    print(sub)
    print("-" * len(head))
    for g in rows:
        rec = table[g]
        cells = []
        for m in methods:
            a = "   —  " if g == "id" else f"{rec[m]['auroc']:6.3f}"
            cells.append(
                f"{a} {pct(rec[m]['flagged'])} {pct(rec[m]['flagged_or_plausibility'])}".ljust(width)
            )
        label = "in-distribution" if g == "id" else g
        print(f"{label:<16}{rec['n']:>4} {pct(rec['plausibility_flagged']):>7} | " + " | ".join(cells))
    print(f"{'mean AUROC':<28} | " + " | ".join(f"{mean_auc[m]:6.3f}".ljust(width) for m in methods))
    if shipped is not None:
        print(f"{SHIPPED}: the model's own statistics ({shipped.method}, fitted on the {shipped.fitted_on})")
    print("\nAUROC 95% CI (stratified bootstrap) and plausibility reasons per family")
    for f in families:
        ci = "  ".join(f"{m} {table[f][m]['ci95'][0]:.3f}–{table[f][m]['ci95'][1]:.3f}" for m in OOD_METHODS)
        rs = ", ".join(f"{k} {v}" for k, v in sorted(table[f]["reasons"].items())) or "none"
        print(f"  {f:<15} {ci}   reasons: {rs}")
    rs = ", ".join(f"{k} {v}" for k, v in sorted(table["id"]["reasons"].items())) or "none"
    print(f"  {'in-distribution':<15} plausibility reasons: {rs}")

    print(f"\nthresholds (keep {args.keep:.0%} of the fit set's own held-out part)")
    for m in methods:
        st = stats[m]
        extra = f", shrinkage {st.gaussian.shrinkage:.3f}" if st.gaussian is not None else ""
        print(
            f"  {m:<12} threshold {st.threshold:.4g}  (n {st.n}, kept {pct(st.in_distribution_rate)}{extra})"
        )

    real = [s for s in studies if s.group == "real"]
    if real:
        print("\nreal series")
        for s in real:
            margin = float(predictor.margins(torch.from_numpy(s.logits[None]))[0])
            flags = "  ".join(
                f"{m} {s.scores[m]:.4g} {'FLAG' if s.scores[m] > stats[m].threshold else 'ok'}"
                for m in methods
            )
            reasons = ",".join(s.plausibility["reasons"]) or "plausible"
            print(f"  {s.name:<16} p={predictor.calibrate(margin):.3f}  {reasons:<26} {flags}")

    def method_goals(m: str) -> list[tuple[str, bool, str]]:
        """The goals of one set of statistics: ID flag rate, AUROC per goal family, real series flagged."""
        rate = table["id"][m]["flagged"]
        out = [(f"ID flag rate ≤ {GOAL_ID_FLAG_RATE:.0%} ({m})", rate <= GOAL_ID_FLAG_RATE, pct(rate))]
        out += [
            (
                f"AUROC {f} ≥ {GOAL_AUROC} ({m})",
                table[f][m]["auroc"] >= GOAL_AUROC,
                f"{table[f][m]['auroc']:.3f}",
            )
            for f in GOAL_FAMILIES
            if f in table
        ]
        for s in real:
            flagged = s.scores[m] > stats[m].threshold or s.implausible
            out.append((f"real {s.name} flagged ({m} or plausibility)", flagged, f"score {s.scores[m]:.4g}"))
        return out

    goals = method_goals(best)
    comb = table["id"][best]["flagged_or_plausibility"]
    goals.insert(
        1, (f"ID flag rate with plausibility ≤ {GOAL_ID_FLAG_RATE:.0%}", comb <= GOAL_ID_FLAG_RATE, pct(comb))
    )
    if shipped is not None:
        goals += method_goals(SHIPPED)
    print("\ngoals")
    for g, ok, meas in goals:
        print(f"  {'PASS' if ok else 'MISS'}  {g:<52} {meas}")

    saved: dict[str, Any] = {}
    if args.save_stats:
        args.save_stats.mkdir(parents=True, exist_ok=True)
        for m in OOD_METHODS:
            st = stats[m]
            path = args.save_stats / f"{entry.name}.ood-{m}.npz"
            saved[m] = {"path": str(path), "sha256": st.save(path), **st.meta()}
            print(f"wrote {path} (sha256 {saved[m]['sha256'][:16]}…)")
    total = time.perf_counter() - t_start
    n_new = sum(not s.cached for s in studies)
    print(
        f"\ntotal {total:.0f} s: {len(studies)} studies ({n_new} computed, {len(studies) - n_new} cached) in "
        f"{t_compute:.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in runner.seconds.items()) + ")"
    )
    report = {
        "command": " ".join(["python", "bench/ood.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine_info(),
        "model": {"name": entry.name, "version": entry.version, "input_size": list(cfg.target_size)},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "families": families,
        "table": table,
        "mean_auroc": mean_auc,
        "min_auroc": min_auc,
        "best": best,
        "stats": {m: {**st.meta(), "temperature": st.temperature} for m, st in stats.items()},
        "shipped": None if shipped is None else shipped.meta(),
        "saved_stats": saved,
        "real": [s.describe() for s in real],
        "goals": [{"goal": g, "pass": ok, "measured": meas} for g, ok, meas in goals],
        "seconds": {"total": total, "compute": t_compute, **runner.seconds},
        "studies": [s.describe() for s in studies if s.group != "real"],
    }
    write_json(args.json, report)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
