"""Logits and pooled penultimate features from one forward pass (torch).

The OOD scores of :mod:`ml.ood.scores` need the network's logits and, for
``mahalanobis``, the globally average-pooled output of the last convolutional
stage (the input of the final linear layer), so the worker computes both in the
same forward pass it already runs for the prediction.
"""

from __future__ import annotations

import torch

from ml.model.network import ResNet3D

__all__ = ["logits_and_features"]


def logits_and_features(model: ResNet3D, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [B, K], pooled features [B, C]) for input [B, 1, D, H, W], in one forward pass.

    Equal to ``model(x)`` for the logits: the same modules in the same order.
    """
    pooled = torch.flatten(model.avgpool(model.features(x)), 1)
    logits: torch.Tensor = model.fc(pooled)
    return logits, pooled
