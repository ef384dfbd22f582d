"""Work on a model already published in a manifest: evaluate it on a labelled corpus at its own
operating points (``service4ct evaluate``), re-choose its operating points on a tuning corpus
(``service4ct retune``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ml import evaluate as ev
from ml.data import StudyRecord, TensorCache, describe, read_labels_csv, split_train_val
from ml.train.config import TrainConfig
from ml.train.corpora import fill_cache_with_progress, refuse_repeated_studies, training_records
from ml.train.ood import fit_run_ood
from ml.train.publish import publish_entry
from ml.train.scoring import (
    calibration_record,
    choose_operating_points,
    score_records,
    score_splits,
    scoring_device,
)


def retune(cfg: TrainConfig, *, keep_calibration: bool = False) -> dict[str, Any]:
    """Re-choose the operating points of an already published model on ``cfg.tune_labels_csv``.

    Loads the manifest entry ``cfg.name`` (its weights are verified and left as they are),
    scores the tuning corpus and the test corpus with the entry's preprocessing and
    calibration, picks the thresholds on the tuning corpus, measures them on the test
    corpus, and rewrites the manifest entry (operating points, metrics), ROC/calibration
    plots and model card. The training-time validation metrics are kept from the entry.
    With ``cfg.calibrate_on == "tuning"`` the temperature is refitted on the tuning corpus
    first, and the run's validation split (re-drawn from the config's training corpora and
    seed) is re-scored with it instead, unless ``keep_calibration`` (the published
    temperature is kept, and the validation metrics with it).
    The OOD statistics (``cfg.ood_method``) are refitted on the tuning corpus and published
    beside the weights.
    Writes ``output_dir/retune.json`` and returns it.
    """
    from ml.model import Manifest, resolve_weights
    from ml.model.checkpoint import load_model

    if not (cfg.tune_labels_csv and cfg.manifest_path and cfg.weights_path):
        raise ValueError("retune needs tune_labels_csv, manifest_path and weights_path in the config")
    mpath = Path(cfg.manifest_path)
    entry = Manifest.load(mpath).get(cfg.name)
    if entry.spec != cfg.model or entry.preprocess != cfg.preprocess:
        raise ValueError(
            f"the config does not describe the published model {cfg.name!r} (model or preprocess differ)"
        )
    if not entry.sha256:
        raise ValueError(f"manifest entry {cfg.name!r} has no sha256")
    model = load_model(entry, resolve_weights(entry, mpath.parent), scoring_device(cfg.accelerator))
    refit = cfg.calibrate_on == "tuning" and not keep_calibration
    tune = read_labels_csv(cfg.tune_labels_csv)
    test = read_labels_csv(cfg.test_labels_csv) if cfg.test_labels_csv else []
    # a new temperature changes the validation metrics at p >= 0.5 too: re-score the run's
    # validation split (the same seeded split of the config's training corpora)
    val: list[StudyRecord] = []
    if refit:
        records = training_records(cfg)
        val = split_train_val(records, cfg.val_fraction, cfg.seed)[1] if records else []
    refuse_repeated_studies([*val, *tune, *test], "the validation, tuning and test corpora")
    cache = TensorCache(cfg.cache_dir, cfg.preprocess)
    failed = fill_cache_with_progress(cache, [*val, *tune, *test], cfg.preprocess_workers)
    splits = {
        k: [r for r in v if r.study_id not in failed]
        for k, v in (("validation", val), ("tuning", tune), ("test", test))
    }
    temperature, scored, outputs = score_splits(
        model, splits, cache, None if refit else float(entry.calibration.get("temperature", 1.0)), "tuning"
    )
    data = dict(entry.metrics.get("data", {}))
    for split, key in (("validation", "val"), ("tuning", "tune"), ("test", "test")):
        if split in scored:
            data[key] = describe(splits[split])
    data["failed_studies"] = {**data.get("failed_studies", {}), **failed}
    out_dir = Path(cfg.output_dir)
    kept = [k for k in ("validation", "cross_validation", "test") if k not in scored]
    summary: dict[str, Any] = {k: v for k, v in entry.metrics.items() if k in kept}
    summary.update(data=data)
    summary["calibration"] = calibration_record(temperature, "tuning") if refit else dict(entry.calibration)
    summary.update(choose_operating_points(cfg, scored, out_dir))
    ood = fit_run_ood(cfg, splits, outputs, out_dir)
    if ood is not None:
        summary["ood"] = ood
    summary["published"] = publish_entry(cfg, summary, entry.sha256)
    (out_dir / "retune.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


def evaluate_model(
    manifest_path: str | Path,
    labels_csv: str | Path,
    out_dir: str | Path,
    *,
    name: str | None = None,
    cache_dir: str | Path = "var/cache",
    n_bootstrap: int = 1000,
    seed: int = 0,
    allow_unverified: bool = False,
    workers: int = 2,
) -> dict[str, Any]:
    """Evaluate a manifest model on a labelled corpus at its own operating points.

    Uses the entry's preprocessing and calibration; writes ``metrics.json``,
    ``predictions.csv`` (study_id, label, calibrated probability), ``roc.png`` and
    ``calibration.png`` into ``out_dir``.
    """
    from ml.model import Manifest, resolve_weights
    from ml.model.checkpoint import load_model

    mpath = Path(manifest_path)
    entry = Manifest.load(mpath).get(name)
    model = load_model(entry, resolve_weights(entry, mpath.parent, allow_unverified=allow_unverified), "cpu")
    records = read_labels_csv(labels_csv)
    cache = TensorCache(cache_dir, entry.preprocess)
    failed = fill_cache_with_progress(cache, records, workers)
    records = [r for r in records if r.study_id not in failed]
    y, p = score_records(model, records, cache, float(entry.calibration.get("temperature", 1.0)))
    thresholds = {n: op.threshold for n, op in entry.operating_points.items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "model": {"name": entry.name, "version": entry.version, "sha256": entry.sha256},
        "data": {**describe(records), "failed_studies": failed},
        "summary": ev.summarize(y, p, n_boot=n_bootstrap, seed=seed),
        "operating_points": ev.evaluate_operating_points(y, p, thresholds, n_boot=n_bootstrap, seed=seed),
    }
    with (out / "predictions.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["study_id", "label", "probability"])
        w.writerows((r.study_id, r.label, f"{float(pi):.6g}") for r, pi in zip(records, p, strict=True))
    ev.plot_roc({entry.name: (y, p)}, out / "roc.png", title=f"{entry.name} ROC")
    ev.plot_calibration(y, p, out / "calibration.png")
    (out / "metrics.json").write_text(json.dumps(result, indent=2, default=float))
    return result
