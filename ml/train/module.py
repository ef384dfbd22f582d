"""The Lightning module of the recipe: the network, its objective, validation metrics and optimiser.

Recipe: lower stages frozen (configurable), focal loss (alpha, gamma) plus the optional
lesion-attention and IG-path terms, AdamW with weight decay, ReduceLROnPlateau on the
monitored validation metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch

from ml import evaluate as ev
from ml.model import ModelSpec
from ml.model.network import build_model, freeze_stages, set_frozen_bn_eval
from ml.train.config import MONITOR_MODES
from ml.train.losses import FocalLoss, lesion_attention_loss, logit_diff, path_attribution_loss


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
        self._val_z.append(logit_diff(logits).detach().cpu())
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
