"""One Lightning fit and stratified k-fold cross-validation, with progress lines for log files.

A fit: frozen BatchNorm statistics estimated from data (without an initial checkpoint),
class-weighted sampling, early stopping and checkpointing on the monitored validation
metric, everything seeded; the module comes back restored to its best checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ml import evaluate as ev
from ml.data import CTDataset, LesionMapDataset, StudyRecord, TensorCache, class_weighted_sampler
from ml.train.config import MONITOR_MODES, TrainConfig
from ml.train.module import LitClassifier
from ml.train.scoring import predict_logodds, scoring_device

log = logging.getLogger("ml.train")  # the logger the docs name for training progress


class ProgressLog(L.Callback):
    """Log lines (logger ``ml.train``, INFO) that show a fit's progress in a log file.

    Lightning's progress bar redraws one terminal line, so a run whose output goes to a
    file shows nothing until the fit ends. This logs, every ``every_n_steps`` training
    steps, the step, the mean training loss of the epoch so far and the seconds per step,
    and after each validation the epoch's mean training loss, every ``val_*`` metric, the
    learning rate and the best ``monitor`` value so far.
    """

    def __init__(self, monitor: str, every_n_steps: int = 20) -> None:
        super().__init__()
        self.monitor, self.every = monitor, every_n_steps
        self.t0 = time.perf_counter()
        self.best: float | None = None
        self._sum, self._n = 0.0, 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.t0 = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sum, self._n = 0.0, 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor):
            self._sum, self._n = self._sum + float(loss.detach()), self._n + 1
        step = int(trainer.global_step)
        if self.every > 0 and step % self.every == 0 and self._n:
            took = time.perf_counter() - self.t0
            log.info(
                "epoch %d step %d: train_loss %.4f (epoch mean), %.2f s/step, %.0f s",
                trainer.current_epoch + 1,
                step,
                self._sum / self._n,
                took / max(step, 1),
                took,
            )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if k.startswith("val_")}
        value = metrics.get(self.monitor)
        if value is not None and (
            self.best is None
            or (value > self.best if MONITOR_MODES[self.monitor] == "max" else value < self.best)
        ):
            self.best = value
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        log.info(
            "epoch %d/%d done (step %d, %.0f s): train_loss %s, %s; lr %.2e; best %s %s",
            trainer.current_epoch + 1,
            trainer.max_epochs or 0,
            trainer.global_step,
            time.perf_counter() - self.t0,
            f"{self._sum / self._n:.4f}" if self._n else "n/a",
            ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
            lr,
            self.monitor,
            "n/a" if self.best is None else f"{self.best:.4f}",
        )


def _precision(accelerator: str, precision: str = "auto") -> str:
    if precision != "auto":
        return precision
    cuda = scoring_device(accelerator).type == "cuda"
    return "bf16-mixed" if cuda and torch.cuda.is_bf16_supported() else "32-true"


def calibrate_frozen_bn(model: nn.Module, loader: DataLoader[Any], n_batches: int = 8) -> None:
    """Estimate running statistics of frozen BatchNorm layers from data (cumulative average).

    Without pretrained weights, frozen stages would otherwise keep BatchNorm's
    initial statistics (mean 0, variance 1) and pass badly scaled activations on.
    """
    frozen_bn = [
        m
        for m in model.modules()
        if isinstance(m, nn.BatchNorm3d) and not any(p.requires_grad for p in m.parameters())
    ]
    if not frozen_bn:
        return
    saved = [m.momentum for m in frozen_bn]
    model.eval()
    for m in frozen_bn:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        for i, (x, _) in enumerate(loader):
            if i >= n_batches:
                break
            model(x)
    model.train()
    for m, mom in zip(frozen_bn, saved, strict=True):
        m.momentum = mom
        m.eval()


def fit_once(
    cfg: TrainConfig,
    train_recs: Sequence[StudyRecord],
    val_recs: Sequence[StudyRecord],
    cache: TensorCache,
    out_dir: Path,
) -> tuple[LitClassifier, dict[str, Any]]:
    """One Lightning fit; returns the module restored to its best-val-F1 checkpoint."""
    L.seed_everything(cfg.seed, workers=True)
    lit = LitClassifier(
        cfg.model.to_dict(),
        cfg.freeze,
        cfg.focal_alpha,
        cfg.focal_gamma,
        cfg.lr,
        cfg.weight_decay,
        cfg.plateau_factor,
        cfg.plateau_patience,
        cfg.lesion_weight,
        cfg.monitor,
        cfg.ig_weight,
        cfg.ig_studies,
        cfg.ig_temperature,
    )
    if cfg.init_checkpoint:
        from ml.model.checkpoint import load_checkpoint

        load_checkpoint(lit.model, Path(cfg.init_checkpoint), strict=True)
    train_ds = CTDataset(train_recs, cache, augment=cfg.augment, shift=cfg.augment_shift)
    val_ds = CTDataset(val_recs, cache, augment=False)
    sampler = class_weighted_sampler(train_ds.labels, cfg.seed)
    if cfg.freeze and not cfg.init_checkpoint:
        calibrate_frozen_bn(
            lit.model,
            DataLoader(
                CTDataset(train_recs, cache),
                batch_size=cfg.batch_size,
                shuffle=True,
                generator=torch.Generator().manual_seed(cfg.seed),
            ),
        )
    mode = MONITOR_MODES[cfg.monitor]
    ckpt = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=out_dir / "checkpoints",
        monitor=cfg.monitor,
        mode=mode,
        save_top_k=1,
        filename="best-{epoch}-{val_f1:.3f}-{val_loss:.4f}",
    )
    stop = L.pytorch.callbacks.EarlyStopping(
        monitor=cfg.monitor, mode=mode, patience=cfg.early_stopping_patience
    )
    trainer = L.Trainer(
        max_epochs=cfg.max_epochs,
        max_steps=cfg.max_steps,
        accelerator=cfg.accelerator,
        devices=1,
        precision=_precision(cfg.accelerator, cfg.precision),  # type: ignore[arg-type]
        max_time=None if cfg.max_time_minutes is None else timedelta(minutes=cfg.max_time_minutes),
        callbacks=[ckpt, stop, ProgressLog(cfg.monitor, cfg.log_every_n_steps)],
        default_root_dir=str(out_dir),
        deterministic="warn" if cfg.deterministic else False,
        # the IG term takes gradients in validation too (under no_grad, not inference mode)
        inference_mode=cfg.ig_weight == 0,
        benchmark=not cfg.deterministic,
        logger=False,
        enable_model_summary=False,
        log_every_n_steps=10,
        num_sanity_val_steps=0,
    )
    t0 = time.perf_counter()
    workers = {
        "num_workers": cfg.loader_workers,
        "persistent_workers": cfg.loader_workers > 0,
        "pin_memory": torch.cuda.is_available(),
    }
    maps = cfg.lesion_weight > 0 or cfg.ig_weight > 0  # batches carry the lesion maps
    trainer.fit(
        lit,
        DataLoader(
            LesionMapDataset(train_ds) if maps else train_ds,
            batch_size=cfg.batch_size,
            sampler=sampler,
            drop_last=len(train_ds) > cfg.batch_size,
            **workers,  # type: ignore[arg-type]
        ),
        DataLoader(
            LesionMapDataset(val_ds) if maps else val_ds,
            batch_size=cfg.batch_size,
            **workers,  # type: ignore[arg-type]
        ),
    )
    info = {
        "epochs": int(trainer.current_epoch),
        "global_step": int(trainer.global_step),
        "fit_seconds": round(time.perf_counter() - t0, 1),
        "monitor": cfg.monitor,
        "best_score": float(ckpt.best_model_score) if ckpt.best_model_score is not None else None,
        "best_checkpoint": ckpt.best_model_path or None,
        "last_epoch_metrics": {k: round(float(v), 5) for k, v in sorted(trainer.callback_metrics.items())},
    }
    if ckpt.best_model_path:
        state = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=False)["state_dict"]
        lit.load_state_dict(state)
    lit.model.cpu().eval()
    return lit, info


def cross_validate(
    cfg: TrainConfig, records: Sequence[StudyRecord], cache: TensorCache, out_dir: Path
) -> dict[str, Any]:
    """Stratified k-fold: out-of-fold log-odds → AUC with a bootstrap 95% CI."""
    labels = np.asarray([r.label for r in records])
    oof = np.full(len(records), np.nan)
    folds = []
    for k, (tr, va) in enumerate(ev.stratified_kfold(labels, cfg.k_folds, cfg.seed)):
        lit, info = fit_once(
            cfg, [records[i] for i in tr], [records[i] for i in va], cache, out_dir / f"fold{k}"
        )
        z = predict_logodds(
            lit.model.to(scoring_device(cfg.accelerator)), CTDataset([records[i] for i in va], cache)
        )
        oof[va] = z
        folds.append({"fold": k, "auc": ev.roc_auc(labels[va], z), **info})
    lo, hi = ev.bootstrap_ci(labels, oof, ev.roc_auc, n=cfg.n_bootstrap, seed=cfg.seed)
    return {"k": cfg.k_folds, "oof_auc": ev.roc_auc(labels, oof), "oof_auc_ci95": [lo, hi], "folds": folds}
