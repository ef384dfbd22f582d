"""The seed's training recipe as a Lightning module, driven by a YAML config.

Recipe: lower stages frozen (configurable), focal loss (alpha, gamma), AdamW with
weight decay, ReduceLROnPlateau on validation F1, class-weighted sampling, early
stopping and checkpointing on validation F1, everything seeded. Optionally
stratified k-fold cross-validation (out-of-fold AUC with a bootstrap CI) before
the final fit. After the final fit the run itself: fits a temperature and picks
the operating points on the validation split, evaluates them on the held-out
test set with bootstrap 95% CIs, draws ROC and calibration plots, stores fp16
weights, writes the manifest entry and a model card.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader

from ml import evaluate as ev
from ml.data import (
    CTDataset,
    LesionMapDataset,
    PhantomCorpus,
    StudyRecord,
    TensorCache,
    class_weighted_sampler,
    describe,
    phantom_records,
    read_labels_csv,
    split_train_val,
)
from ml.model import ModelSpec
from ml.model.network import build_model, freeze_stages, set_frozen_bn_eval
from ml.preprocess import PreprocessConfig

log = logging.getLogger(__name__)


#: the metrics a run may select epochs on, and which way is better
MONITOR_MODES = {"val_f1": "max", "val_loss": "min"}
#: the splits a run can fit its calibration temperature on (``TrainConfig.calibrate_on``)
CALIBRATION_SPLITS = ("validation", "tuning")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs (paths relative to the config file's folder)."""

    #: one labels CSV, or several corpora (study ids must be unique across them)
    labels_csv: str | tuple[str, ...] = ()
    #: training/validation corpora of phantoms generated in memory (``PhantomCorpus``
    #: fields: seed, n, rows, cols, pixel_spacing_mm, slice_spacing_mm, difficulty), in
    #: addition to ``labels_csv``; they carry lesion maps for ``lesion_weight`` / ``ig_weight``
    phantom_corpora: tuple[PhantomCorpus, ...] = ()
    test_labels_csv: str | None = None
    #: a held-out corpus (neither trained on nor the test set) on which the operating points
    #: are chosen; None = the validation split (which also picks the best epoch)
    tune_labels_csv: str | None = None
    cache_dir: str = "var/cache"
    output_dir: str = "var/train/run"
    model: ModelSpec = field(default_factory=lambda: ModelSpec(arch="resnet10"))
    preprocess: PreprocessConfig = field(default_factory=lambda: PreprocessConfig(target_size=(96, 96, 96)))
    init_checkpoint: str | None = None
    freeze: tuple[str, ...] = ("stem", "layer1")
    focal_alpha: float = 0.5
    focal_gamma: float = 2.0
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 4
    max_epochs: int = 30
    max_steps: int = -1
    #: stop the fit after this many minutes of wall time (best checkpoint kept); None = no limit
    max_time_minutes: float | None = None
    early_stopping_patience: int = 6
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    val_fraction: float = 0.2
    k_folds: int = 1
    augment: bool = True
    #: largest random translation per axis in model voxels when ``augment`` (0 = none)
    augment_shift: int = 0
    #: weight of the lesion-attention loss (0 = off): on positive studies with a lesion map,
    #: −log of the share of the softmax over the pathology-evidence map (the class-activation
    #: map of the margin, i.e. what Grad-CAM shows at ``layer4``) that falls on lesion voxels
    lesion_weight: float = 0.0
    #: weight of the attribution prior on Integrated Gradients' path (0 = off): on positive
    #: studies with a lesion map, −log of the share of a temperature softmax over
    #: a one-point expected-gradients estimate of the IG map (black baseline) that falls
    #: within one voxel of a lesion (:func:`path_attribution_loss`), in training and
    #: validation batches (part of ``val_loss``)
    ig_weight: float = 0.0
    #: positives per batch that get the IG term (≈ 10 forward passes each)
    ig_studies: int = 2
    #: the softmax's temperature: the map's maximum becomes this logit
    ig_temperature: float = 10.0
    #: what picks the best epoch, drives early stopping and the learning-rate plateau:
    #: ``val_f1`` (maximised) or ``val_loss`` (minimised: the training objective on the
    #: validation studies, focal loss plus ``lesion_weight`` × the lesion-attention loss plus
    #: ``ig_weight`` × the IG term; use it when fine-tuning a model whose validation F1 is
    #: already saturated)
    monitor: str = "val_f1"
    seed: int = 0
    preprocess_workers: int = 2
    #: DataLoader worker processes for training batches (0 = in the training process)
    loader_workers: int = 0
    #: deterministic kernels (reproducible to the bit, slower 3-D convolutions on CUDA);
    #: False lets cuDNN pick the fastest algorithms (``benchmark``)
    deterministic: bool = True
    accelerator: str = "auto"
    #: "auto" = bf16-mixed on a CUDA device with bf16, else 32-true; or a Lightning precision
    #: such as "bf16-mixed" (also on CPUs with AVX-512 BF16) or "32-true"
    precision: str = "auto"
    #: where the calibration temperature is fitted: ``validation`` (the validation split,
    #: which also picks the best epoch) or ``tuning`` (``tune_labels_csv``, where the
    #: operating points are chosen). Use ``tuning`` when the validation studies are not
    #: held out from the weights, e.g. a fine-tune whose validation split was an earlier
    #: step's training data: the fit would then match how the model scores studies it has
    #: learnt, not new ones.
    #: :func:`retune` refits the temperature only with ``tuning``.
    calibrate_on: str = "validation"
    sens_target: float = 0.95
    spec_target: float = 0.95
    n_bootstrap: int = 1000
    #: a progress line in the log (logger ``ml.train``, INFO) every this many training
    #: steps (0 = none), besides the one after each validation
    log_every_n_steps: int = 20
    # what the run publishes
    name: str = "resnet10-demo"
    version: str = "0.1.0"
    weights_path: str | None = None
    manifest_path: str | None = None
    make_default: bool = False
    training_data: str = "synthetic chest-CT phantoms generated by ml.phantom"
    intended_use: str = (
        "Demonstration of the Service4CT pipeline on synthetic phantoms. NOT FOR CLINICAL USE."
    )
    clinical_use: bool = False
    reproduce_command: str = ""
    #: a Markdown file appended to the model card each time the run (or ``retune``)
    #: writes it: how the model was trained, what it reached against its goals
    card_notes: str | None = None

    def __post_init__(self) -> None:
        if self.monitor not in MONITOR_MODES:
            raise ValueError(f"monitor must be one of {sorted(MONITOR_MODES)}, not {self.monitor!r}")
        if self.ig_weight < 0 or self.ig_studies < 1 or self.ig_temperature <= 0:
            raise ValueError("ig_weight must be >= 0, ig_studies >= 1 and ig_temperature > 0")
        if self.log_every_n_steps < 0:
            raise ValueError("log_every_n_steps must be >= 0")
        if self.calibrate_on not in CALIBRATION_SPLITS:
            raise ValueError(
                f"calibrate_on must be one of {list(CALIBRATION_SPLITS)}, not {self.calibrate_on!r}"
            )
        if self.calibrate_on == "tuning" and not self.tune_labels_csv:
            raise ValueError("calibrate_on: tuning needs a tuning corpus (tune_labels_csv)")

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        p = Path(path)
        raw = yaml.safe_load(p.read_text()) or {}
        return cls.from_dict(raw, base=p.parent)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], base: Path | None = None) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown training config keys: {unknown}")
        d = dict(raw)
        if "model" in d:
            d["model"] = ModelSpec.from_dict(d["model"])
        if "preprocess" in d:
            d["preprocess"] = PreprocessConfig.from_dict(d["preprocess"])
        if "freeze" in d:
            d["freeze"] = tuple(d["freeze"] or ())
        if "phantom_corpora" in d:
            d["phantom_corpora"] = tuple(PhantomCorpus.from_dict(c) for c in d["phantom_corpora"] or ())

        def resolve(v: str) -> str:
            return str((base / v).resolve()) if base is not None and not Path(v).is_absolute() else v

        if isinstance(d.get("labels_csv"), list):
            d["labels_csv"] = tuple(resolve(str(v)) for v in d["labels_csv"])
        for k in (
            "labels_csv",
            "test_labels_csv",
            "tune_labels_csv",
            "cache_dir",
            "output_dir",
            "init_checkpoint",
            "weights_path",
            "manifest_path",
            "card_notes",
        ):
            if isinstance(d.get(k), str):
                d[k] = resolve(d[k])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        d["preprocess"] = self.preprocess.to_dict()
        d["freeze"] = list(self.freeze)
        d["phantom_corpora"] = [c.to_dict() for c in self.phantom_corpora]
        if isinstance(self.labels_csv, tuple):
            d["labels_csv"] = list(self.labels_csv)
        return d

    def labels_csvs(self) -> list[str]:
        """The training/validation corpora's labels CSVs."""
        return [self.labels_csv] if isinstance(self.labels_csv, str) else list(self.labels_csv)


class FocalLoss(nn.Module):
    """Binary focal loss on 2-class logits (Lin et al. 2017).

    ``alpha`` weights the pathology class (1 − alpha the normal class);
    ``gamma`` down-weights easy examples. gamma = 0, alpha = 0.5 is half the
    cross-entropy.
    """

    def __init__(self, alpha: float = 0.5, gamma: float = 2.0) -> None:
        super().__init__()
        if not 0.0 < alpha < 1.0 or gamma < 0:
            raise ValueError("focal loss needs 0 < alpha < 1 and gamma >= 0")
        self.alpha = alpha
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)
        logp_t = logp.gather(1, target.view(-1, 1)).squeeze(1)
        p_t = logp_t.exp()
        a_t = torch.where(target == 1, self.alpha, 1.0 - self.alpha)
        loss = -a_t * (1.0 - p_t).pow(self.gamma) * logp_t
        return loss.mean()


def _near_lesion(lesions: torch.Tensor) -> torch.Tensor:
    """Float map [B, 1, D, H, W]: 1 within one voxel (26-neighbourhood) of a lesion voxel, else 0."""
    return F.max_pool3d(lesions.float(), kernel_size=3, stride=1, padding=1)


def _share_nll(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over rows of −log of the share of ``softmax(logits)`` [N, K] on ``mask`` (bool [N, K])."""
    on_mask = torch.logsumexp(logits.masked_fill(~mask, float("-inf")), dim=1)
    return (torch.logsumexp(logits, dim=1) - on_mask).mean()


def lesion_cells(lesions: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """The cells of a feature grid (d, h, w) where a peak of the evidence map counts as on a lesion.

    Grad-CAM upsamples the feature map trilinearly (``align_corners=False``), so a cell's
    evidence peaks at the cell's centre in input voxels; a peak there is on the lesion when
    a lesion voxel lies within one voxel of the eight input voxels around that centre
    (≈ 5 mm at the demo's ≈ 3 mm model voxels, the pointing game's tolerance). A study
    whose lesions reach no cell centre (a nodule smaller than a cell) falls back to every
    cell that holds a lesion voxel. ``lesions``: bool [B, 1, D, H, W] on the input grid;
    returns bool [B, d·h·w].
    """
    size = tuple(int(n) for n in grid)
    centre = F.interpolate(_near_lesion(lesions), size=size, mode="trilinear", align_corners=False)
    centre = centre.flatten(1) > 0
    anywhere = F.adaptive_max_pool3d(lesions.float(), size).flatten(1) > 0
    return torch.where(centre.any(1, keepdim=True), centre, anywhere)


def lesion_attention_loss(
    features: torch.Tensor, fc_weight: torch.Tensor, lesions: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor | None:
    """−log of the share of ``softmax(M)`` on lesion cells, averaged over positive studies.

    ``M = Σ_c (W₁c − W₀c)·A_c`` is the evidence map of the pathology margin over the last
    feature map ``A`` [B, C, d, h, w] (with global average pooling the margin is M's mean
    plus a bias, and Grad-CAM at that layer is ReLU(M)/(d·h·w)). ``lesions`` (bool
    [B, 1, D, H, W] on the input grid) selects the cells by :func:`lesion_cells`. Shifting
    M by a constant leaves the loss unchanged, so it moves where the evidence sits, not how
    much there is. None when no study of the batch is positive with a non-empty map.
    """
    w = (fc_weight[1] - fc_weight[0]).to(features.dtype)
    m = torch.einsum("bcdhw,c->bdhw", features, w).float().flatten(1)
    cells = lesion_cells(lesions, features.shape[-3:])
    use = cells.any(1) & (labels == 1)
    if not bool(use.any()):
        return None
    return _share_nll(m[use], cells[use])


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode inside the block; every module's own mode restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def path_attribution_loss(
    model: nn.Module,
    x: torch.Tensor,
    lesions: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 10.0,
    max_studies: int | None = None,
    alpha: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Attribution prior on Integrated Gradients' path: −log of the peak's share on the lesion.

    An expected-gradients term (Erion et al. 2021) for the black baseline (−1 = air, as
    ``ml.explain``'s default IG): for each positive study with a lesion map, one point of
    the straight path from the baseline to the input, ``z = −1 + α·(x + 1)`` with
    ``α ~ U(0, 1)`` (or ``alpha`` [B]), and its attribution ``(x + 1)·∂margin/∂z`` (the
    margin ``logit1 − logit0``, taken with ``create_graph`` so the loss trains on it): a
    one-point estimate of the IG map, whose mean over α is IG. Its positive part (evidence
    for pathology, what the explanation shows), scaled so that its maximum is
    ``temperature``, is a softmax over the voxels; the loss is −log of the softmax's share
    within one voxel of a lesion voxel (where the pointing game counts a peak as a hit,
    ≈ 5 mm at the demo's ≈ 3 mm model voxels). A higher ``temperature`` weighs the peak more
    than the total mass. The path runs with the model in eval mode (BatchNorm on its
    running statistics, as at explanation time; the dimmed path volumes never reach them).
    ``max_studies`` bounds the cost (each study costs about ten forward passes: a forward,
    its backward with a graph, and the backward of both): the first positives of the batch.
    ``x`` [B, 1, D, H, W] in [-1, 1]; ``lesions`` bool, same shape. None when no study of
    the batch is positive with a non-empty map.
    """
    use = (labels == 1) & lesions.flatten(1).any(1)
    idx = use.nonzero().flatten()
    if max_studies is not None:
        idx = idx[:max_studies]
    if len(idx) == 0:
        return None
    xs, ls = x[idx].detach().float(), lesions[idx]
    a = torch.rand(len(idx), device=x.device) if alpha is None else alpha.to(x.device)[idx].float()
    z = (-1.0 + a.view(-1, 1, 1, 1, 1) * (xs + 1.0)).requires_grad_(True)
    with _eval_mode(model), torch.enable_grad():
        logits = model(z).float()
        (grad,) = torch.autograd.grad(_logit_diff(logits).sum(), z, create_graph=True)
    attr = ((xs + 1.0) * grad).clamp_min(0.0).flatten(1)
    m = attr / (attr.amax(1, keepdim=True).detach() + 1e-12) * temperature
    return _share_nll(m, _near_lesion(ls).flatten(1) > 0)


def _logit_diff(logits: torch.Tensor) -> torch.Tensor:
    """log-odds of pathology from 2-class logits."""
    return (logits[:, 1] - logits[:, 0]).float()


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


class LitClassifier(L.LightningModule):
    """Lightning wrapper; the network lives in ``self.model`` (checkpoint keys ``model.*``)."""

    def __init__(
        self,
        spec: dict[str, Any],
        freeze: Sequence[str] = (),
        focal_alpha: float = 0.5,
        focal_gamma: float = 2.0,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        plateau_factor: float = 0.5,
        plateau_patience: int = 2,
        lesion_weight: float = 0.0,
        monitor: str = "val_f1",
        ig_weight: float = 0.0,
        ig_studies: int = 2,
        ig_temperature: float = 10.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = build_model(ModelSpec.from_dict(spec))
        self.frozen = freeze_stages(self.model, list(freeze))
        self.loss_fn = FocalLoss(focal_alpha, focal_gamma)
        self._val_z: list[torch.Tensor] = []
        self._val_y: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out

    def on_train_epoch_start(self) -> None:
        set_frozen_bn_eval(self.model)

    def _objective(
        self, batch: Sequence[torch.Tensor], stage: str, batch_idx: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, loss) of a batch: focal loss; with a lesion map in the batch (x, y, lesions)
        and ``lesion_weight`` > 0, plus ``lesion_weight`` × :func:`lesion_attention_loss`;
        with ``ig_weight`` > 0, plus ``ig_weight`` × :func:`path_attribution_loss` (its path
        points α: random in training; in validation drawn from a generator seeded with
        ``batch_idx``, so every epoch scores the same points and the global RNG is untouched).
        Logs ``<stage>_focal``, ``<stage>_lesion`` and ``<stage>_ig`` (when there is one)
        and ``<stage>_loss``."""
        x, y = batch[0], batch[1]
        feats = self.model.features(x)
        logits = self.model.fc(torch.flatten(self.model.avgpool(feats), 1))
        loss: torch.Tensor = self.loss_fn(logits, y)
        self.log(f"{stage}_focal", loss, on_step=False, on_epoch=True, batch_size=len(y))
        weight = float(self.hparams.get("lesion_weight", 0.0))
        if weight > 0 and len(batch) > 2:
            att = lesion_attention_loss(feats, self.model.fc.weight, batch[2], y)
            if att is not None:
                self.log(f"{stage}_lesion", att, on_step=False, on_epoch=True, batch_size=len(y))
                loss = loss + weight * att
        train = stage == "train"
        ig_weight = float(self.hparams.get("ig_weight", 0.0))
        if ig_weight > 0 and len(batch) > 2:
            ig = path_attribution_loss(
                self.model,
                x,
                batch[2],
                y,
                float(self.hparams.get("ig_temperature", 10.0)),
                int(self.hparams.get("ig_studies", 2)),
                None if train else torch.rand(len(y), generator=torch.Generator().manual_seed(batch_idx)),
            )
            if ig is not None:
                self.log(f"{stage}_ig", ig, on_step=False, on_epoch=True, batch_size=len(y))
                loss = loss + ig_weight * ig
        self.log(f"{stage}_loss", loss, prog_bar=train, on_step=train, on_epoch=True, batch_size=len(y))
        return logits, loss

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        """The training objective (:meth:`_objective`) of one batch."""
        return self._objective(batch, "train", batch_idx)[1]

    def validation_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        logits, _ = self._objective(batch, "val", batch_idx)
        y = batch[1]
        self._val_z.append(_logit_diff(logits).detach().cpu())
        self._val_y.append(y.detach().cpu())

    def on_validation_epoch_end(self) -> None:
        if not self._val_z:
            return
        z = torch.cat(self._val_z).numpy()
        y = torch.cat(self._val_y).numpy()
        self._val_z.clear()
        self._val_y.clear()
        f1 = ev.f1(y, z, 0.0)  # log-odds >= 0 <=> p >= 0.5
        auc = ev.roc_auc(y, z)
        self.log("val_f1", float(0.0 if np.isnan(f1) else f1), prog_bar=True)
        self.log("val_auc", float(0.5 if np.isnan(auc) else auc), prog_bar=True)

    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"])
        monitor = str(self.hparams.get("monitor", "val_f1"))
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt,
            mode=MONITOR_MODES[monitor],  # type: ignore[arg-type]
            factor=self.hparams["plateau_factor"],
            patience=self.hparams["plateau_patience"],
        )
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": sched, "monitor": monitor, "interval": "epoch"},
        }


def scoring_device(accelerator: str) -> torch.device:
    """Where a trained model scores studies: the CUDA device when training may use one.

    Scoring the validation/tuning/test studies on the CPU after a GPU fit took 4 min for
    336 studies at 128³ on one thread, longer than the fit itself.
    """
    cuda = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    return torch.device("cuda" if cuda else "cpu")


def _precision(accelerator: str, precision: str = "auto") -> str:
    if precision != "auto":
        return precision
    cuda = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    return "bf16-mixed" if cuda and torch.cuda.is_bf16_supported() else "32-true"


def predict_logodds(model: nn.Module, ds: CTDataset, batch_size: int = 4) -> npt.NDArray[np.float64]:
    """Log-odds of pathology for every item of ``ds`` (eval mode, no augmentation)."""
    dev = next(model.parameters()).device
    model.eval()
    out: list[torch.Tensor] = []
    plain = CTDataset(ds.records, ds.cache, augment=False)
    with torch.inference_mode():
        for x, _ in DataLoader(plain, batch_size=batch_size, shuffle=False):
            out.append(_logit_diff(model(x.to(dev))).cpu())
    return torch.cat(out).double().numpy() if out else np.zeros(0)


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


def fill_cache_with_progress(
    cache: TensorCache, records: Sequence[StudyRecord], workers: int
) -> dict[str, str]:
    """Preprocess uncached studies with a progress bar on stderr; returns failures by study id."""
    from tqdm import tqdm

    bar: Any = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc="preprocessing", unit="study")
        bar.update(done - bar.n)

    try:
        return cache.fill(records, workers=workers, progress=progress)
    finally:
        if bar is not None:
            bar.close()


def refuse_repeated_studies(records: Sequence[StudyRecord], where: str) -> None:
    """Raise ``ValueError`` when a study id occurs more than once in ``records`` (``where`` names them)."""
    dup = sorted(k for k, v in Counter(r.study_id for r in records).items() if v > 1)
    if dup:
        raise ValueError(f"study ids repeat across {where}: {dup[:5]}")


def training_records(cfg: TrainConfig) -> list[StudyRecord]:
    """The training/validation studies of ``cfg``: its labels CSVs, then its phantom corpora."""
    records = [r for csv_path in cfg.labels_csvs() for r in read_labels_csv(csv_path)]
    return records + [r for corpus in cfg.phantom_corpora for r in phantom_records(corpus)]


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
    temperature, scored = score_splits(lit.model, splits, cache, fit_on=cfg.calibrate_on)
    summary["calibration"] = calibration_record(temperature, cfg.calibrate_on)
    summary.update(choose_operating_points(cfg, scored, out_dir))
    if cfg.weights_path:
        summary["published"] = publish(cfg, lit.model, summary)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


def labelled_logodds(
    model: nn.Module, records: Sequence[StudyRecord], cache: TensorCache
) -> tuple[npt.NDArray[Any], npt.NDArray[np.float64]]:
    """(labels, uncalibrated log-odds of pathology) of cached studies."""
    return np.asarray([r.label for r in records]), predict_logodds(model, CTDataset(records, cache))


def score_records(
    model: nn.Module, records: Sequence[StudyRecord], cache: TensorCache, temperature: float
) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """(labels, temperature-calibrated probabilities of pathology) of cached studies."""
    y, z = labelled_logodds(model, records, cache)
    return y, ev.apply_temperature(z, temperature)


def score_splits(
    model: nn.Module,
    splits: Mapping[str, Sequence[StudyRecord]],
    cache: TensorCache,
    temperature: float | None = None,
    fit_on: str = "validation",
) -> tuple[float, dict[str, tuple[npt.NDArray[Any], npt.NDArray[Any]]]]:
    """Score each non-empty split (keys of :data:`SPLIT_TITLES`) of cached studies.

    Returns the temperature and, per split, (labels, calibrated probabilities of
    pathology). ``temperature`` None: fitted (:func:`ml.evaluate.fit_temperature`) on the
    log-odds of the split ``fit_on``, which must hold studies.
    """
    raw = {k: labelled_logodds(model, recs, cache) for k, recs in splits.items() if recs}
    if temperature is None:
        if fit_on not in raw:
            raise ValueError(f"no {SPLIT_TITLES[fit_on]} studies to fit the calibration temperature on")
        temperature = ev.fit_temperature(raw[fit_on][1], raw[fit_on][0])
    t = float(temperature)
    return t, {k: (y, ev.apply_temperature(z, t)) for k, (y, z) in raw.items()}


def calibration_record(temperature: float, fitted_on: str) -> dict[str, Any]:
    """The manifest's ``calibration`` of a temperature fitted on the split ``fitted_on``."""
    return {"method": "temperature", "temperature": temperature, "fitted_on": SPLIT_TITLES[fitted_on]}


#: what each scored split is called in summaries, model cards and ROC legends
SPLIT_TITLES = {"validation": "validation", "tuning": "tuning corpus", "test": "held-out test"}


def choose_operating_points(
    cfg: TrainConfig,
    scored: dict[str, tuple[npt.NDArray[Any], npt.NDArray[Any]]],
    out_dir: Path,
) -> dict[str, Any]:
    """Pick the named thresholds on one split and measure them on another; plot ROC and calibration.

    ``scored`` maps ``"validation"`` / ``"tuning"`` / ``"test"`` to (labels, calibrated
    probabilities). The thresholds come from the tuning corpus when there is one, else
    from validation; they are evaluated on the test corpus when there is one, else on the
    split they were chosen on. Returns the summary keys ``<split>`` (AUC, rates at 0.5
    with CIs), ``operating_points``, ``operating_points_selected_on``,
    ``operating_points_evaluated_on`` and ``artifacts`` (``roc.png``, ``calibration.png``
    in ``out_dir``).
    """
    out: dict[str, Any] = {
        split: ev.summarize(y, p, n_boot=cfg.n_bootstrap, seed=cfg.seed) for split, (y, p) in scored.items()
    }
    sel = "tuning" if "tuning" in scored else "validation"
    evl = "test" if "test" in scored else sel
    thresholds = ev.select_operating_points(
        *scored[sel], sens_target=cfg.sens_target, spec_target=cfg.spec_target
    )
    ops = ev.evaluate_operating_points(*scored[evl], thresholds, n_boot=cfg.n_bootstrap, seed=cfg.seed)
    out["operating_points"] = ops
    out["operating_points_selected_on"] = SPLIT_TITLES[sel]
    out["operating_points_evaluated_on"] = SPLIT_TITLES[evl]
    out_dir.mkdir(parents=True, exist_ok=True)
    roc_png, cal_png = out_dir / "roc.png", out_dir / "calibration.png"
    op_marks = {n: (1.0 - v["specificity"], v["sensitivity"]) for n, v in ops.items()}
    curves = {SPLIT_TITLES[k]: v for k, v in scored.items()}
    ev.plot_roc(curves, roc_png, title=f"{cfg.name} ROC", operating_points=op_marks)
    ev.plot_calibration(*scored[evl], cal_png)
    out["artifacts"] = {"roc_png": str(roc_png), "calibration_png": str(cal_png)}
    return out


def write_card(cfg: TrainConfig, summary: dict[str, Any], card: Path, roc_name: str, cal_name: str) -> None:
    """Write the Markdown model card of a run from its summary (also usable on a saved summary.json)."""
    card_metrics: dict[str, Any] = {}
    for split in ("validation", "tuning", "test"):
        for k in ("auc", "sensitivity", "specificity", "f1"):
            if split in summary:
                label = f"{split} {k}{' at p>=0.5' if k != 'auc' else ''}"
                card_metrics[label] = summary[split][k]
                card_metrics[f"{label}_ci95"] = summary[split][f"{k}_ci95"]
    if "cross_validation" in summary:
        cv = summary["cross_validation"]
        card_metrics[f"{cv['k']}-fold out-of-fold auc"] = cv["oof_auc"]
        card_metrics[f"{cv['k']}-fold out-of-fold auc_ci95"] = cv["oof_auc_ci95"]
    d = summary["data"]
    card_metrics["studies (train / validation / tuning / test)"] = (
        f"{d['train']['n']} / {d['val']['n']} / {d.get('tune', {}).get('n', 0)} / {d['test']['n']}, "
        f"balanced; failed: {len(d['failed_studies'])}"
    )
    card_metrics["calibration temperature"] = summary["calibration"]["temperature"]
    card_metrics["calibration fitted on"] = summary["calibration"].get("fitted_on", "validation")
    card_metrics["operating points selected on"] = summary.get("operating_points_selected_on", "validation")
    card_metrics["operating points evaluated on"] = summary["operating_points_evaluated_on"]
    ev.write_model_card(
        card,
        name=cfg.name,
        version=cfg.version,
        arch_text=f"3-D {cfg.model.arch} (MedicalNet layout, shortcut {cfg.model.shortcut_type}), "
        f"frozen stages: {', '.join(cfg.freeze) or 'none'}",
        input_size=cfg.preprocess.target_size,
        metrics=card_metrics,
        operating_points=summary["operating_points"],
        training_data=cfg.training_data,
        intended_use=cfg.intended_use,
        limitations=[
            "Trained and evaluated on synthetic phantoms only; says nothing about real patients.",
            "Phantom lesions are idealised shapes; real pathology is far more varied.",
            f"Input {cfg.preprocess.target_size} voxels, coarser than the production 256³.",
        ],
        reproduce_command=cfg.reproduce_command,
        roc_png=roc_name,
        calibration_png=cal_name,
        clinical_use=cfg.clinical_use,
        notes=Path(cfg.card_notes).read_text(encoding="utf-8") if cfg.card_notes else "",
    )


def publish(cfg: TrainConfig, model: nn.Module, summary: dict[str, Any]) -> dict[str, str]:
    """Write fp16 weights, then the manifest entry, plots and model card (:func:`publish_entry`)."""
    from ml.model.checkpoint import save_weights

    assert cfg.weights_path is not None
    wpath = Path(cfg.weights_path)
    wpath.parent.mkdir(parents=True, exist_ok=True)
    sha = save_weights(model, wpath, dtype="float16")
    return publish_entry(cfg, summary, sha)


def publish_entry(cfg: TrainConfig, summary: dict[str, Any], sha256: str) -> dict[str, str]:
    """Write the manifest entry, ROC/calibration plots and model card beside ``cfg.weights_path``.

    ``summary`` is a run's (or :func:`retune`'s) summary; ``sha256`` that of the weights
    file, which this does not touch.
    """
    import shutil

    from ml.model import Manifest, ModelEntry, OperatingPoint

    assert cfg.weights_path is not None
    wpath = Path(cfg.weights_path)
    stem = wpath.name.split(".")[0]
    roc_dst = wpath.parent / f"{stem}.roc.png"
    cal_dst = wpath.parent / f"{stem}.calibration.png"
    card = wpath.parent / f"{stem}.md"
    shutil.copyfile(summary["artifacts"]["roc_png"], roc_dst)
    shutil.copyfile(summary["artifacts"]["calibration_png"], cal_dst)
    metrics: dict[str, Any] = {
        k: summary[k] for k in ("validation", "tuning", "test", "cross_validation") if k in summary
    }
    for k in ("operating_points_selected_on", "operating_points_evaluated_on", "data"):
        metrics[k] = summary[k]
    write_card(cfg, summary, card, roc_dst.name, cal_dst.name)
    if cfg.manifest_path:
        mpath = Path(cfg.manifest_path)
        manifest = Manifest.load(mpath)

        def rel(p: Path) -> str:
            return str(p.resolve().relative_to(mpath.parent.resolve()))

        entry = ModelEntry(
            name=cfg.name,
            version=cfg.version,
            spec=cfg.model,
            input_size=cfg.preprocess.target_size,
            preprocess=cfg.preprocess,
            operating_points={
                n: OperatingPoint(
                    threshold=float(v["threshold"]),
                    sensitivity=float(v["sensitivity"]),
                    specificity=float(v["specificity"]),
                    sensitivity_ci95=(float(v["sensitivity_ci95"][0]), float(v["sensitivity_ci95"][1])),
                    specificity_ci95=(float(v["specificity_ci95"][0]), float(v["specificity_ci95"][1])),
                )
                for n, v in summary["operating_points"].items()
            },
            default_operating_point="balanced",
            calibration=dict(summary["calibration"]),
            metrics=json.loads(json.dumps(metrics, default=float)),
            training_data=cfg.training_data,
            intended_use=cfg.intended_use,
            clinical_use=cfg.clinical_use,
            sha256=sha256,
            uri=rel(wpath),
            stored_dtype="float16",
            model_card=rel(card),
        )
        manifest.upsert(entry)
        if cfg.make_default:
            manifest.default = cfg.name
        manifest.save(mpath)
    return {"weights": str(wpath), "sha256": sha256, "model_card": str(card), "roc_png": str(roc_dst)}


def retune(cfg: TrainConfig) -> dict[str, Any]:
    """Re-choose the operating points of an already published model on ``cfg.tune_labels_csv``.

    Loads the manifest entry ``cfg.name`` (its weights are verified and left as they are),
    scores the tuning corpus and the test corpus with the entry's preprocessing and
    calibration, picks the thresholds on the tuning corpus, measures them on the test
    corpus, and rewrites the manifest entry (operating points, metrics), ROC/calibration
    plots and model card. The training-time validation metrics are kept from the entry.
    With ``cfg.calibrate_on == "tuning"`` the temperature is refitted on the tuning corpus
    first, and the run's validation split (re-drawn from the config's training corpora and
    seed) is re-scored with it instead.
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
    refit = cfg.calibrate_on == "tuning"
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
    temperature, scored = score_splits(
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
