"""Grad-CAM in the prediction's own forward pass (:func:`forward_with_gradcam`).

The prediction runs the network once for the logits and the pooled features (OOD score);
Grad-CAM of ``layer4`` needs the same network's ``layer4`` output and the gradient of the
explained score with respect to it. Run once for both: the convolutional part without a
graph, its output made the graph's leaf, then the pooling and the linear layer with a
graph, and one backward through those two. The maps are Captum's ``LayerGradCam`` of
``layer4`` with ``relu_attributions=True`` (gradients averaged over each channel's voxels,
channel-weighted sum of the activations, ReLU) upsampled trilinearly to the input size,
equal to :func:`ml.explain.methods.explain`'s ``gradcam`` before the body mask, at the cost
of one forward pass instead of two. Each volume's score depends on its own input only, so
the gradient of the batch's summed scores is every volume's own gradient.

Float32 without autocast, so only where the prediction runs the same way
(:attr:`~ml.inference.Predictor.uses_amp` False: the CPU); architecture rule 8 as in
:mod:`ml.explain.methods` (parameters frozen meanwhile, nothing refers to the graph after).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ml.explain.methods import _gradient_scope

if TYPE_CHECKING:
    from ml.inference import Predictor

__all__ = ["FusedForward", "can_fuse", "forward_with_gradcam"]


@dataclass(frozen=True)
class FusedForward:
    """What one fused pass gives: the prediction's inputs and the raw Grad-CAM maps.

    Attributes:
        logits: float32 CPU [B, K]; features: float32 CPU [B, C] (pooled ``layer4``).
        maps: float32 CPU [B, D, H, W], Grad-CAM of ``layer4`` for the logit margin, not masked.
        seconds: wall time of the pass.
    """

    logits: torch.Tensor
    features: torch.Tensor
    maps: torch.Tensor
    seconds: float


def can_fuse(predictor: Predictor, method: str, params: dict[str, Any]) -> bool:
    """True when ``method``/``params`` are default Grad-CAM and the prediction runs in float32."""
    extra = set(params) - {"target", "layer", "nifti"}
    return (
        method == "gradcam"
        and not predictor.uses_amp
        and not extra
        and params.get("target", "margin") == "margin"
        and params.get("layer", "layer4") == "layer4"
    )


def forward_with_gradcam(predictor: Predictor, batch: torch.Tensor) -> FusedForward:
    """Logits, pooled features and Grad-CAM maps of ``batch`` [B, 1, D, H, W] in one forward pass."""
    predictor.check_batch(batch)
    model = predictor.model
    t0 = time.perf_counter()
    x = batch.to(predictor.device, dtype=torch.float32).contiguous(memory_format=torch.channels_last_3d)
    with _gradient_scope(model):
        with torch.no_grad():
            acts = model.features(x)
        leaf = acts.detach().requires_grad_(True)
        pooled = torch.flatten(model.avgpool(leaf), 1)
        logits = model.fc(pooled)
        score = logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0]
        (grads,) = torch.autograd.grad(score.sum(), leaf)
        weights = grads.mean(dim=(2, 3, 4), keepdim=True)
        cam = F.relu((weights * leaf.detach()).sum(dim=1, keepdim=True))
        up = F.interpolate(cam.float(), size=tuple(x.shape[2:]), mode="trilinear", align_corners=False)
        out = FusedForward(
            logits=logits.detach().float().cpu(),
            features=pooled.detach().float().cpu(),
            maps=up[:, 0].contiguous().cpu(),
            seconds=0.0,
        )
        del acts, leaf, pooled, logits, score, grads, weights, cam, up
    return FusedForward(out.logits, out.features, out.maps, time.perf_counter() - t0)
