"""The training objective's terms: focal loss, the lesion-attention loss on the class-activation
map, and the attribution prior on Integrated Gradients' path; with the helpers they share."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn


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
        (grad,) = torch.autograd.grad(logit_diff(logits).sum(), z, create_graph=True)
    attr = ((xs + 1.0) * grad).clamp_min(0.0).flatten(1)
    m = attr / (attr.amax(1, keepdim=True).detach() + 1e-12) * temperature
    return _share_nll(m, _near_lesion(ls).flatten(1) > 0)


def logit_diff(logits: torch.Tensor) -> torch.Tensor:
    """log-odds of pathology from 2-class logits."""
    return (logits[:, 1] - logits[:, 0]).float()
