"""The whole training recipe for one config: :func:`train`.

Optionally stratified k-fold cross-validation (out-of-fold AUC with a bootstrap CI)
before the final fit. After the final fit the run itself: fits a temperature and picks
the operating points on the validation split (or the tuning corpus), evaluates them on
the held-out test set with bootstrap 95% CIs, draws ROC and calibration plots, stores
fp16 weights, writes the manifest entry and a model card.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L

from ml.data import TensorCache, describe, read_labels_csv, split_train_val
from ml.train.config import TrainConfig
from ml.train.corpora import fill_cache_with_progress, refuse_repeated_studies, training_records
from ml.train.fit import cross_validate, fit_once
from ml.train.ood import fit_run_ood
from ml.train.publish import publish
from ml.train.scoring import calibration_record, choose_operating_points, score_splits, scoring_device


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run the whole recipe; returns a JSON-able summary (also written to ``output_dir/summary.json``)."""
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    L.seed_everything(cfg.seed, workers=True)
    records = training_records(cfg)
    if not records:
        raise ValueError("no training data: set labels_csv and/or phantom_corpora")
    refuse_repeated_studies(records, "the training corpora")
    test = read_labels_csv(cfg.test_labels_csv) if cfg.test_labels_csv else []
    tune = read_labels_csv(cfg.tune_labels_csv) if cfg.tune_labels_csv else []
    refuse_repeated_studies([*records, *test, *tune], "the train/tuning/test corpora")
    cache = TensorCache(cfg.cache_dir, cfg.preprocess)
    t0 = time.perf_counter()
    failed = fill_cache_with_progress(cache, [*records, *test, *tune], cfg.preprocess_workers)
    records, test, tune = ([r for r in rs if r.study_id not in failed] for rs in (records, test, tune))
    summary: dict[str, Any] = {
        "data": {
            "train_val": describe(records),
            "test": describe(test),
            "failed_studies": failed,
            "preprocess_seconds": round(time.perf_counter() - t0, 1),
        },
    }
    if tune:
        summary["data"]["tune"] = describe(tune)
    if cfg.k_folds > 1:
        summary["cross_validation"] = cross_validate(cfg, records, cache, out_dir / "cv")
    train_recs, val_recs = split_train_val(records, cfg.val_fraction, cfg.seed)
    summary["data"]["train"] = describe(train_recs)
    summary["data"]["val"] = describe(val_recs)
    lit, info = fit_once(cfg, train_recs, val_recs, cache, out_dir / "final")
    summary["fit"] = info
    lit.model.to(scoring_device(cfg.accelerator))
    splits = {"validation": val_recs, "tuning": tune, "test": test}
    temperature, scored, outputs = score_splits(lit.model, splits, cache, fit_on=cfg.calibrate_on)
    summary["calibration"] = calibration_record(temperature, cfg.calibrate_on)
    summary.update(choose_operating_points(cfg, scored, out_dir))
    ood = fit_run_ood(cfg, splits, outputs, out_dir)
    if ood is not None:
        summary["ood"] = ood
    if cfg.weights_path:
        summary["published"] = publish(cfg, lit.model, summary)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary
