"""Model-space saliency of one preprocessed volume with Captum (:func:`explain`).

:func:`explain` computes a map, float32 [D, H, W] on the CPU, for one
preprocessed volume [1, 1, D, H, W] with one of the methods of
:data:`ml.explain.METHODS` (parameters and their limits: :mod:`ml.explain.params`):

``gradcam``
    Grad-CAM (Captum ``LayerGradCam``) of ``model.layer4`` (or ``layer3``),
    ReLU-ed, trilinear upsampling (``align_corners=False``) to the input size.
``integrated_gradients``
    Captum ``IntegratedGradients`` from a baseline: ``"black"`` (-1.0 = air,
    the low end of the scaled HU window) or ``"body_mean"`` (the body, i.e.
    voxels above -1 + 1e-3, set to its mean value; air stays -1). ``steps``
    points on the path, evaluated ``internal_batch_size`` volumes at a time
    (bounds memory).
``saliency``
    absolute input gradient (Captum ``Saliency``).
``occlusion``
    Captum ``Occlusion`` with cubic 3-D patches: ``window`` and ``stride`` in
    model voxels (default: 1/8 of the input size per axis, non-overlapping),
    patches filled with ``baseline`` (-1.0 = air).

Both voxel-level gradient maps (IG, saliency) can be smoothed by a Gaussian of
``smooth_voxels`` σ (model voxels; ≈ 2.7 mm per voxel at 128³ and ≈ 1.4 mm at
256³ for a ~350 mm chest crop), IG's signed map before ``sign`` so that speckle
of both signs cancels. IG smooths by default (σ 3); saliency does not (0). Raw
IG maps are speckled at the voxel scale (strided convolutions), so the single
hottest voxel often sits on noise far from where the attribution concentrates.
The blur keeps the map's sum only away from the volume's edges (they are
replicated), so IG's completeness holds exactly with ``smooth_voxels`` 0. On 24
held-out positive phantoms (seed 555, IG-8, demo model 0.5.0) the peak hit a
lesion (≤ 1.7 voxels) in 5 raw, 14 at σ 2, 18 at σ 3 to 4 and 19 at 5 to 6 (9
at σ 2 to 3 when the positive part is blurred instead); saliency 7 raw, 14 at σ
2 and 16 at σ 3. σ 3 is the largest before an IG-trained step (21 of 24 at 2.5
to 3) loses hits (20 at 4, 15 at 6). On the bench's 60 held-out positives (seed
777) IG-8 hit 51 smoothed against 26 raw, and its randomisation ρ stayed 0.01;
saliency hit 35 either way while σ 3 raised its ρ from 0.10 to 0.30, so it stays
raw by default.

The explained score (``target``) is by default the logit margin
``logit1 - logit0`` (the probability of pathology is a monotone function of
it); ``"pathology"`` explains the raw pathology logit (index 1, or 0 for a
1-logit head). IG and occlusion maps are signed; ``sign`` picks what is kept:
``"positive"`` (default: evidence *for* pathology, like Grad-CAM's ReLU),
``"absolute"`` or ``"signed"``.

architecture rule 8: the model stays in eval mode; gradients are enabled only inside
the call (also under an outer ``torch.inference_mode()``), parameters are
excluded from autograd meanwhile (only input/layer gradients are taken), and
``model.zero_grad(set_to_none=True)`` runs afterwards. Nothing refers to the
graph once the call returns. The forward runs in float32 (no autocast).

Cost (ResNet-10 at 96³, 2 CPU threads; one forward ≈ 0.13–0.2 s): gradcam
≈ 0.15 s (backward only down to the layer), saliency ≈ 0.6 s (one full
backward), integrated_gradients ≈ ``steps`` × 0.6 s (≈ 20 s at 32 steps),
occlusion ≈ evaluations × one forward (≈ 100 s for the default 8³ patches);
see :func:`ml.explain.params.occlusion_evaluations` and the ``max_evaluations`` guard.

Body mask. Every map of :func:`explain` is masked to the patient's body before
anything downstream sees it (source grid, peak, regions, PNG layers, NIfTI):
voxels outside :func:`body_mask` are set to 0. The body is derived from the
pixels the model saw (:mod:`ml.body`): HU recovered from the input with the
model's HU window, the largest 3-D connected component denser than −500 HU,
with the holes of each axial slice filled, so the lungs and airways stay inside
and the air around the patient and the table drop out. Grad-CAM's coarse
cells (layer4: 8 model voxels a side at 128³) otherwise spread heat into that
air, and the peak of a real normal study landed above the patient. Before masking,
:func:`mask_to_body` measures the share of the positive attribution mass that
lay outside the body (``outside_body_fraction`` in ``stats.json``); a study
with no body above −500 HU is left unmasked (share None). Cost: one connected
component and a hole filling of the axial slices, ≈ 0.1–0.2 s at 128³ on 2 CPU cores.

:func:`gradcam_map` keeps its original behaviour (Grad-CAM of the raw pathology
logit, unmasked); :func:`gradcam_peak` (the batch report's ``--explain``) takes
its peak over the body voxels.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ml.body import input_body_mask
from ml.explain.params import AIR, METHOD_NAMES, resolve_params

if TYPE_CHECKING:
    from ml.inference import Predictor
    from ml.model.network import ResNet3D

__all__ = [
    "RUNNERS",
    "ExplainOutput",
    "body_mask",
    "explain",
    "gaussian_smooth",
    "gradcam_map",
    "gradcam_peak",
    "mask_to_body",
]

#: model-space voxels above AIR + this count as body for the ``body_mean`` baseline
_BODY_EPS = 1e-3


# --------------------------------------------------------------------------- gradient scope


class _Margin(nn.Module):
    """Wraps a classifier: output [B, 1] = ``logit1 - logit0`` (the single logit of a 1-logit head)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model(x)
        if logits.shape[1] == 1:
            return logits
        return (logits[:, 1] - logits[:, 0]).unsqueeze(1)


def _score(model: ResNet3D, target: str) -> tuple[nn.Module, int]:
    """(forward module, output index) that Captum should attribute for ``target``."""
    if target == "margin":
        return _Margin(model), 0
    return model, 1 if model.fc.out_features > 1 else 0


@contextmanager
def _gradient_scope(model: nn.Module) -> Iterator[None]:
    """Gradients on (even under an outer ``inference_mode``), model in eval, parameters frozen.

    On exit the parameters get their ``requires_grad`` back, ``.grad`` is set to
    None and the training flag is restored (architecture rule 8).
    """
    was_training = model.training
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            for p in params:
                p.requires_grad_(False)
            yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
        model.zero_grad(set_to_none=True)
        model.train(was_training)


def _input(predictor: Predictor, tensor: torch.Tensor) -> torch.Tensor:
    """The batch on the model's device, float32, channels_last_3d (may be an inference tensor)."""
    predictor.check_batch(tensor)
    return tensor.to(predictor.device, dtype=torch.float32).contiguous(memory_format=torch.channels_last_3d)


def _fresh(x: torch.Tensor) -> torch.Tensor:
    """A normal (non-inference) copy of ``x``; call inside :func:`_gradient_scope`."""
    return x.clone()


def _apply_sign(attr: torch.Tensor, sign: str) -> torch.Tensor:
    if sign == "positive":
        return attr.clamp_min(0.0)
    if sign == "absolute":
        return attr.abs()
    return attr


def gaussian_smooth(attr: torch.Tensor, sigma_voxels: float) -> torch.Tensor:
    """Gaussian blur of a [1, 1, D, H, W] map, σ in voxels, on the map's device (float32).

    Separable (one 1-D kernel per axis), truncated at 3σ, edges replicated so the
    border is not darkened; σ 0 returns ``attr`` unchanged.
    """
    if sigma_voxels <= 0:
        return attr
    radius = max(1, math.ceil(3.0 * sigma_voxels))
    k = torch.arange(-radius, radius + 1, dtype=torch.float32, device=attr.device)
    k = torch.exp(-0.5 * (k / sigma_voxels) ** 2)
    k = k / k.sum()
    out = attr.float()
    for axis in range(3):  # D, H, W
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = k.numel()
        pad = [0] * 6  # F.pad lists the last axis first
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        out = F.conv3d(F.pad(out, pad, mode="replicate"), k.view(shape))
    return out


def _volume_map(attr: torch.Tensor) -> torch.Tensor:
    """[1, 1, D, H, W] attribution → contiguous float32 CPU [D, H, W]."""
    return attr.detach()[0, 0].float().contiguous().cpu()


# --------------------------------------------------------------------------- methods


def _gradcam(
    predictor: Predictor, x: torch.Tensor, target: str | int, layer: str, relu: bool = True
) -> torch.Tensor:
    """Grad-CAM [B, D, H, W] float32 CPU; ``target`` is "margin"/"pathology" or a class index."""
    from captum.attr import LayerGradCam  # type: ignore[import-untyped,unused-ignore]

    model = predictor.model
    if isinstance(target, str):
        fwd, idx = _score(model, target)
    else:
        fwd, idx = model, int(target)
    with _gradient_scope(model):
        # no input gradient: Captum makes the layer output a graph leaf, so nothing
        # below the layer keeps activations for backward
        xx = _fresh(x)
        cam = LayerGradCam(fwd, getattr(model, layer))
        attr = cam.attribute(xx, target=idx, relu_attributions=relu)
        size = tuple(x.shape[2:])
        up = F.interpolate(attr.detach().float(), size=size, mode="trilinear", align_corners=False)
        del cam, attr, xx
    return up[:, 0].contiguous().cpu()


def _run_gradcam(predictor: Predictor, x: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    return _gradcam(predictor, x, str(p["target"]), str(p["layer"]))[0]


def _baseline_tensor(xx: torch.Tensor, baseline: str) -> torch.Tensor:
    if baseline == "body_mean":
        body = xx > AIR + _BODY_EPS
        if bool(body.any()):
            mean = xx[body].mean()
            return torch.where(body, mean, torch.full_like(xx, AIR))
    return torch.full_like(xx, AIR)


def _run_integrated_gradients(predictor: Predictor, x: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    from captum.attr import IntegratedGradients  # type: ignore[import-untyped,unused-ignore]

    model = predictor.model
    fwd, idx = _score(model, str(p["target"]))
    with _gradient_scope(model):
        xx = _fresh(x)
        base = _baseline_tensor(xx, p["baseline"])
        ig = IntegratedGradients(fwd)
        attr = ig.attribute(
            xx,
            baselines=base,
            target=idx,
            n_steps=int(p["steps"]),
            internal_batch_size=min(int(p["internal_batch_size"]), int(p["steps"])),
        )
        smoothed = gaussian_smooth(attr.detach(), float(p["smooth_voxels"]))
        out = _volume_map(_apply_sign(smoothed, str(p["sign"])))
        del ig, attr, smoothed, base, xx
    return out


def _run_saliency(predictor: Predictor, x: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    from captum.attr import Saliency  # type: ignore[import-untyped,unused-ignore]

    model = predictor.model
    fwd, idx = _score(model, str(p["target"]))
    with _gradient_scope(model):
        xx = _fresh(x).requires_grad_(True)
        attr = Saliency(fwd).attribute(xx, target=idx, abs=True)
        out = _volume_map(gaussian_smooth(attr.detach(), float(p["smooth_voxels"])))
        del attr, xx
    return out


def _run_occlusion(predictor: Predictor, x: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    from captum.attr import Occlusion  # type: ignore[import-untyped,unused-ignore]

    model = predictor.model
    fwd, idx = _score(model, str(p["target"]))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            attr = Occlusion(fwd).attribute(
                x,
                sliding_window_shapes=(1, *p["window"]),
                strides=(1, *p["stride"]),
                baselines=float(p["baseline"]),
                target=idx,
                perturbations_per_eval=int(p["perturbations_per_eval"]),
            )
            out = _volume_map(_apply_sign(attr, str(p["sign"])))
    finally:
        model.train(was_training)
    return out


Runner = Callable[["Predictor", torch.Tensor, Mapping[str, Any]], torch.Tensor]

#: method name → (predictor, input [1, 1, D, H, W] on the device, resolved params) → float32 CPU map [D, H, W]
RUNNERS: Mapping[str, Runner] = MappingProxyType(
    {
        "gradcam": _run_gradcam,
        "integrated_gradients": _run_integrated_gradients,
        "saliency": _run_saliency,
        "occlusion": _run_occlusion,
    }
)
if tuple(RUNNERS) != METHOD_NAMES:
    raise RuntimeError(f"RUNNERS {list(RUNNERS)} != the table's methods {list(METHOD_NAMES)}")


# --------------------------------------------------------------------------- body mask


def body_mask(predictor: Predictor, tensor: torch.Tensor) -> torch.Tensor:
    """The patient's body in one preprocessed volume [1, 1, D, H, W]: bool CPU [D, H, W].

    :func:`ml.body.input_body_mask` with the model's HU window: the largest
    connected component denser than :data:`ml.body.BODY_HU` with the holes of
    each axial slice (the lungs, airways) filled. Empty when nothing is that dense.
    """
    x = tensor.detach()[0, 0].float().cpu().numpy()
    lo, hi = predictor.preprocess_config.hu_window
    return torch.from_numpy(input_body_mask(x, (float(lo), float(hi))))


def mask_to_body(attr: torch.Tensor, body: torch.Tensor) -> tuple[torch.Tensor, float | None]:
    """(``attr`` with 0 outside ``body``, share of its positive mass outside ``body`` before masking).

    ``attr`` and ``body`` are [D, H, W] on the CPU. The share is that of
    ``attr.clamp_min(0)`` (what the peak is taken over), 0.0 for a map without
    positive values. An empty ``body`` leaves ``attr`` unmasked, share None.
    """
    if not bool(body.any()):
        return attr, None
    pos = attr.clamp_min(0.0).double()
    total = float(pos.sum())
    outside = float(pos[~body].sum()) / total if total > 0 else 0.0
    masked = torch.where(body, attr, torch.zeros((), dtype=attr.dtype))
    return masked.contiguous(), outside


# --------------------------------------------------------------------------- entry points


@dataclass(frozen=True)
class ExplainOutput:
    """A model-space saliency map.

    Attributes:
        map: float32 CPU tensor [D, H, W] (model voxels, z, y, x), 0 outside the
            body (:func:`mask_to_body`) unless ``explain(mask_body=False)``.
        method: the method name.
        params: resolved parameters (JSON-able).
        seconds: wall time of the attribution and the body mask.
        outside_body_fraction: share of the positive attribution that lay outside
            the body before masking (``stats.json``'s ``outside_body_fraction``);
            None when not masked (no body found, or ``mask_body=False``).
    """

    map: torch.Tensor
    method: str
    params: dict[str, Any]
    seconds: float
    outside_body_fraction: float | None = None

    def stats(self) -> dict[str, Any]:
        """What the explanation's ``stats.json`` records of the model-space map."""
        return {"outside_body_fraction": self.outside_body_fraction}


def explain(
    predictor: Predictor,
    tensor: torch.Tensor,
    method: str = "gradcam",
    params: Mapping[str, Any] | None = None,
    *,
    mask_body: bool = True,
    raw_map: torch.Tensor | None = None,
) -> ExplainOutput:
    """Saliency of one preprocessed volume ``tensor`` [1, 1, D, H, W] with ``method``.

    ``method`` and ``params``: see :data:`ml.explain.METHODS`. The map is masked
    to the patient's body (:func:`body_mask`, :func:`mask_to_body`) and the
    share of positive attribution that fell outside it is recorded;
    ``mask_body=False`` returns the method's raw map (benches, tests). ``raw_map``: the
    method's map [D, H, W] computed already (:mod:`ml.explain.fused`): only the body mask runs.

    Raises:
        ValueError: wrong tensor shape, unknown method or parameter, value out of bounds
            (:func:`ml.explain.params.resolve_params`).
    """
    params_resolved = resolve_params(method, params, predictor.input_size)
    if tensor.ndim == 5 and tensor.shape[0] != 1:
        raise ValueError(f"explain takes one volume [1, 1, D, H, W], got {list(tensor.shape)}")
    x = _input(predictor, tensor)
    t0 = time.perf_counter()
    out = RUNNERS[method](predictor, x, params_resolved) if raw_map is None else raw_map
    outside: float | None = None
    if mask_body:
        out, outside = mask_to_body(out, body_mask(predictor, tensor))
    return ExplainOutput(
        map=out,
        method=method,
        params=params_resolved,
        seconds=time.perf_counter() - t0,
        outside_body_fraction=outside,
    )


def gradcam_map(predictor: Predictor, tensor: torch.Tensor, target: int | None = None) -> torch.Tensor:
    """Grad-CAM of ``model.layer4`` for a class logit, upsampled to the input size.

    Args:
        predictor: the loaded model.
        tensor: one preprocessed volume [1, 1, D, H, W] (or [B, 1, D, H, W]).
        target: class index; default the pathology class (1, or 0 for a 1-logit head).

    Returns:
        float32 CPU tensor [B, D, H, W], ReLU-ed (only positive evidence),
        trilinear upsampling (align_corners=False) of the layer4 map.
    """
    x = _input(predictor, tensor)
    return _gradcam(predictor, x, "pathology" if target is None else target, "layer4")


def gradcam_peak(predictor: Predictor, tensor: torch.Tensor) -> tuple[tuple[int, int, int], float]:
    """Voxel (z, y, x) of the model input with the highest Grad-CAM value in the body, and that value.

    ``tensor`` is one preprocessed volume [1, 1, D, H, W]. The peak is the first
    maximum (C order) of :func:`gradcam_map` over the voxels of :func:`body_mask`
    (over all voxels when no body is found). Map the voxel to LPS mm with
    :meth:`ml.preprocess.PreprocessGeometry.model_to_lps`. A map that is zero
    over the body (no positive evidence there) gives its first body voxel and 0.0.
    """
    if tensor.shape[0] != 1:
        raise ValueError(f"gradcam_peak takes one volume [1, 1, D, H, W], got {list(tensor.shape)}")
    cam = gradcam_map(predictor, tensor)[0]
    body = body_mask(predictor, tensor)
    if bool(body.any()):
        cam = torch.where(body, cam, torch.full((), -math.inf))
    flat = int(torch.argmax(cam).item())
    _, h, w = cam.shape
    z, rem = divmod(flat, h * w)
    y, xx = divmod(rem, w)
    return (z, y, xx), float(cam[z, y, xx].item())
