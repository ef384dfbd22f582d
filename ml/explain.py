"""Saliency for a :class:`~ml.inference.Predictor` (Captum), mapped back to the source series.

Three steps, usable on their own or together (:func:`save_explanation`):

1. :func:`explain` computes a model-space map, float32 [D, H, W] on the CPU, for
   one preprocessed volume [1, 1, D, H, W] with one of :data:`METHODS`:

   ``gradcam``
       Grad-CAM (Captum ``LayerGradCam``) of ``model.layer4`` (or ``layer3``),
       ReLU-ed, trilinear upsampling (``align_corners=False``) to the input size.
   ``integrated_gradients``
       Captum ``IntegratedGradients`` from a baseline: ``"black"`` (-1.0 = air,
       the low end of the scaled HU window), ``"body_mean"`` (the body, i.e.
       voxels above -1 + 1e-3, set to its mean value; air stays -1) or a number
       in [-1, 1]. ``steps`` points on the path, evaluated ``internal_batch_size``
       volumes at a time (bounds memory).
   ``saliency``
       absolute input gradient (Captum ``Saliency``).
   ``occlusion``
       Captum ``Occlusion`` with 3-D patches: ``window`` and ``stride`` in model
       voxels (an int or [D, H, W]; default: 1/8 of the input size, non-overlapping),
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

   DESIGN rule 8: the model stays in eval mode; gradients are enabled only inside
   the call (also under an outer ``torch.inference_mode()``), parameters are
   excluded from autograd meanwhile (only input/layer gradients are taken), and
   ``model.zero_grad(set_to_none=True)`` runs afterwards. Nothing refers to the
   graph once the call returns. The forward runs in float32 (no autocast).

   Cost (ResNet-10 at 96³, 2 CPU threads; one forward ≈ 0.13–0.2 s): gradcam
   ≈ 0.15 s (backward only down to the layer), saliency ≈ 0.6 s (one full
   backward), integrated_gradients ≈ ``steps`` × 0.6 s (≈ 20 s at 32 steps),
   occlusion ≈ evaluations × one forward (≈ 100 s for the default 8³ patches);
   see :func:`occlusion_evaluations` and the ``max_evaluations`` guard.

   :func:`gradcam_map` / :func:`gradcam_peak` (the batch report's ``--explain``)
   keep their original behaviour: Grad-CAM of the raw pathology logit.

2. :func:`to_source` maps a model-space map onto the *source series* grid: the
   inverse of the seed pipeline's resize (model grid → 1 mm crop), uncropping (0
   outside the crop box) and the 1 mm grid → source voxels, as one trilinear
   sampling at each source voxel's continuous model coordinate (the same values
   as a SimpleITK linear resample of the model map placed on
   :meth:`~ml.preprocess.PreprocessGeometry.model_grid`; 0 where the source voxel
   lies outside the model grid's voxel edges).

3. :func:`write_saliency` writes ``saliency.nii.gz``, an axial PNG sprite (+ the
   peak slice as its own PNG), ``stats.json`` and the layers of a browser viewer
   (CT, saliency and colour heatmap as separate PNG sprites on one grid).

Conventions (see :mod:`ml.geometry`): NumPy arrays and model tensors are
(z, y, x) = (slice, row, column) = (D, H, W); geometry sizes and indices are
(x, y, z); patient coordinates are LPS mm. NIfTI voxel indices (i, j, k) are
(column, row, slice) = (x, y, z) of the DICOM series, with the RAS affine
``diag(-1, -1, 1, 1) @ affine_lps``, so nibabel, NiiVue, 3D Slicer and ITK put
the map on the same anatomy as the DICOM series.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from ml.geometry import CTVolume, VolumeGeometry

if TYPE_CHECKING:
    from ml.inference import Predictor
    from ml.model.network import ResNet3D
    from ml.preprocess import PreprocessGeometry, PreprocessResult

__all__ = [
    "HEAT_ALPHA",
    "LAYER_FILES",
    "METHODS",
    "WINDOWS",
    "ExplainOutput",
    "MethodInfo",
    "SaliencyFiles",
    "explain",
    "gaussian_smooth",
    "gradcam_map",
    "gradcam_peak",
    "occlusion_evaluations",
    "resolve_params",
    "round_mantissa",
    "saliency_stats",
    "save_explanation",
    "source_to_model_affine",
    "to_source",
    "write_saliency",
]

F32Array = npt.NDArray[np.float32]
F64Array = npt.NDArray[np.float64]
Size3 = tuple[int, int, int]

#: value of air after the seed pipeline's clip/scale ([-1000, 600] HU → [-1, 1])
AIR = -1.0
#: model-space voxels above AIR + this count as body for the ``body_mean`` baseline
_BODY_EPS = 1e-3
TARGETS = ("margin", "pathology")
SIGNS = ("positive", "absolute", "signed")
GRADCAM_LAYERS = ("layer3", "layer4")
#: σ (model voxels) of the Gaussian that smooths IG maps by default, and the bound of ``smooth_voxels``
DEFAULT_SMOOTH_VOXELS = 3.0
MAX_SMOOTH_VOXELS = 8.0
#: CT display windows (centre, width) in HU
WINDOWS: Mapping[str, tuple[float, float]] = MappingProxyType(
    {"lung": (-600.0, 1500.0), "mediastinal": (40.0, 400.0)}
)
CONTENT_TYPES: Mapping[str, str] = MappingProxyType(
    {".nii.gz": "application/gzip", ".png": "image/png", ".json": "application/json"}
)


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
    None and the training flag is restored (DESIGN rule 8).
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


def _baseline_tensor(xx: torch.Tensor, baseline: str | float) -> torch.Tensor:
    if baseline == "black":
        return torch.full_like(xx, AIR)
    if baseline == "body_mean":
        body = xx > AIR + _BODY_EPS
        if not bool(body.any()):
            return torch.full_like(xx, AIR)
        mean = xx[body].mean()
        return torch.where(body, mean, torch.full_like(xx, AIR))
    return torch.full_like(xx, float(baseline))


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


# --------------------------------------------------------------------------- parameters


def _bad(method: str, msg: str) -> ValueError:
    return ValueError(f"{method}: {msg}")


def _int(method: str, name: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int | np.integer):
        raise _bad(method, f"{name} must be an integer in [{lo}, {hi}], got {v!r}")
    if not lo <= int(v) <= hi:
        raise _bad(method, f"{name} must be in [{lo}, {hi}], got {v}")
    return int(v)


def _number(method: str, name: str, v: Any, lo: float, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
        raise _bad(method, f"{name} must be a number in [{lo:g}, {hi:g}], got {v!r}")
    f = float(v)
    if not (math.isfinite(f) and lo <= f <= hi):
        raise _bad(method, f"{name} must be in [{lo:g}, {hi:g}], got {v}")
    return f


def _choice(method: str, name: str, v: Any, choices: tuple[str, ...]) -> str:
    if v not in choices:
        raise _bad(method, f"{name} must be one of {list(choices)}, got {v!r}")
    return str(v)


def _triple(method: str, name: str, v: Any, lo: Size3, hi: Size3) -> Size3:
    """An int or a sequence of 3 ints (D, H, W), each in [lo_k, hi_k] voxels."""
    vals = [v, v, v] if isinstance(v, int | np.integer) and not isinstance(v, bool) else v
    if isinstance(vals, str) or not hasattr(vals, "__len__") or len(vals) != 3:
        raise _bad(method, f"{name} must be an int or 3 ints (D, H, W) in voxels, got {v!r}")
    out = tuple(_int(method, f"{name}[{a}]", vals[a], lo[a], hi[a]) for a in range(3))
    return (out[0], out[1], out[2])


def _check_gradcam(p: dict[str, Any], size: Size3) -> dict[str, Any]:
    p["target"] = _choice("gradcam", "target", p["target"], TARGETS)
    p["layer"] = _choice("gradcam", "layer", p["layer"], GRADCAM_LAYERS)
    return p


def _check_integrated_gradients(p: dict[str, Any], size: Size3) -> dict[str, Any]:
    m = "integrated_gradients"
    p["target"] = _choice(m, "target", p["target"], TARGETS)
    p["steps"] = _int(m, "steps", p["steps"], 1, 512)
    p["internal_batch_size"] = _int(m, "internal_batch_size", p["internal_batch_size"], 1, 512)
    b = p["baseline"]
    if isinstance(b, str):
        p["baseline"] = _choice(m, "baseline", b, ("black", "body_mean"))
    else:
        p["baseline"] = _number(m, "baseline", b, -1.0, 1.0)
    p["sign"] = _choice(m, "sign", p["sign"], SIGNS)
    p["smooth_voxels"] = _number(m, "smooth_voxels", p["smooth_voxels"], 0.0, MAX_SMOOTH_VOXELS)
    return p


def _check_saliency(p: dict[str, Any], size: Size3) -> dict[str, Any]:
    p["target"] = _choice("saliency", "target", p["target"], TARGETS)
    p["smooth_voxels"] = _number("saliency", "smooth_voxels", p["smooth_voxels"], 0.0, MAX_SMOOTH_VOXELS)
    return p


def occlusion_evaluations(size: Size3, window: Size3, stride: Size3) -> int:
    """Forward passes Captum's Occlusion makes: prod(ceil((n - w) / s) + 1) over (D, H, W)."""
    return int(np.prod([math.ceil((n - w) / s) + 1 for n, w, s in zip(size, window, stride, strict=True)]))


def _check_occlusion(p: dict[str, Any], size: Size3) -> dict[str, Any]:
    m = "occlusion"
    p["target"] = _choice(m, "target", p["target"], TARGETS)
    auto = tuple(max(1, math.ceil(n / 8)) for n in size)
    w = p["window"] if p["window"] is not None else auto
    p["window"] = window = _triple(m, "window", w, (1, 1, 1), size)
    s = p["stride"] if p["stride"] is not None else window
    p["stride"] = stride = _triple(m, "stride", s, (1, 1, 1), window)
    p["baseline"] = _number(m, "baseline", p["baseline"], -1.0, 1.0)
    p["sign"] = _choice(m, "sign", p["sign"], SIGNS)
    p["perturbations_per_eval"] = _int(m, "perturbations_per_eval", p["perturbations_per_eval"], 1, 64)
    p["max_evaluations"] = _int(m, "max_evaluations", p["max_evaluations"], 1, 10**6)
    n = occlusion_evaluations(size, window, stride)
    if n > p["max_evaluations"]:
        raise _bad(
            m,
            f"window {list(window)} with stride {list(stride)} needs {n} forward passes, "
            f"more than max_evaluations={p['max_evaluations']}; use a larger window/stride",
        )
    p["window"], p["stride"] = list(window), list(stride)
    return p


@dataclass(frozen=True)
class MethodInfo:
    """One saliency method of :data:`METHODS`.

    Attributes:
        name: registry key.
        description: one line for users / the OpenAPI spec.
        defaults: every accepted parameter with its default (``None`` = derived
            from the input size, see the method's check).
        check: validates a full parameter dict for an input size (D, H, W) and
            returns it resolved (JSON-able); raises ValueError.
        run: (predictor, input [1, 1, D, H, W] on the device, resolved params) →
            float32 CPU map [D, H, W].
    """

    name: str
    description: str
    defaults: Mapping[str, Any]
    check: Callable[[dict[str, Any], Size3], dict[str, Any]]
    run: Callable[[Predictor, torch.Tensor, Mapping[str, Any]], torch.Tensor]


METHODS: Mapping[str, MethodInfo] = MappingProxyType(
    {
        "gradcam": MethodInfo(
            "gradcam",
            "Grad-CAM of a ResNet stage, ReLU, trilinear upsampling to the input",
            MappingProxyType({"target": "margin", "layer": "layer4"}),
            _check_gradcam,
            _run_gradcam,
        ),
        "integrated_gradients": MethodInfo(
            "integrated_gradients",
            "Integrated Gradients from a baseline volume (black = air, or body_mean)",
            MappingProxyType(
                {
                    "target": "margin",
                    "steps": 32,
                    "internal_batch_size": 4,
                    "baseline": "black",
                    "sign": "positive",
                    "smooth_voxels": DEFAULT_SMOOTH_VOXELS,
                }
            ),
            _check_integrated_gradients,
            _run_integrated_gradients,
        ),
        "saliency": MethodInfo(
            "saliency",
            "absolute gradient of the score with respect to the input voxels",
            MappingProxyType({"target": "margin", "smooth_voxels": 0.0}),
            _check_saliency,
            _run_saliency,
        ),
        "occlusion": MethodInfo(
            "occlusion",
            "score drop when 3-D patches are replaced by air (sliding window, voxels)",
            MappingProxyType(
                {
                    "target": "margin",
                    "window": None,
                    "stride": None,
                    "baseline": AIR,
                    "sign": "positive",
                    "perturbations_per_eval": 1,
                    "max_evaluations": 4096,
                }
            ),
            _check_occlusion,
            _run_occlusion,
        ),
    }
)


def resolve_params(method: str, params: Mapping[str, Any] | None, input_size: Size3) -> dict[str, Any]:
    """Defaults of ``method`` overlaid with ``params``, validated for ``input_size`` (D, H, W) voxels.

    Raises:
        ValueError: unknown method, unknown parameter name, or a value out of bounds
            (the message names the method, the parameter and the allowed range).
    """
    info = METHODS.get(method)
    if info is None:
        raise ValueError(f"unknown saliency method {method!r}; choose from {sorted(METHODS)}")
    given = dict(params or {})
    unknown = sorted(set(given) - set(info.defaults))
    if unknown:
        raise ValueError(f"{method}: unknown parameter(s) {unknown}; allowed: {sorted(info.defaults)}")
    return info.check({**info.defaults, **given}, input_size)


@dataclass(frozen=True)
class ExplainOutput:
    """A model-space saliency map.

    Attributes:
        map: float32 CPU tensor [D, H, W] (model voxels, z, y, x).
        method: the method name.
        params: resolved parameters (JSON-able).
        seconds: wall time of the attribution.
    """

    map: torch.Tensor
    method: str
    params: dict[str, Any]
    seconds: float


def explain(
    predictor: Predictor,
    tensor: torch.Tensor,
    method: str = "gradcam",
    params: Mapping[str, Any] | None = None,
) -> ExplainOutput:
    """Saliency of one preprocessed volume ``tensor`` [1, 1, D, H, W] with ``method`` (see :data:`METHODS`).

    Raises:
        ValueError: wrong tensor shape, unknown method or parameter, value out of bounds.
    """
    params_resolved = resolve_params(method, params, predictor.input_size)
    if tensor.ndim == 5 and tensor.shape[0] != 1:
        raise ValueError(f"explain takes one volume [1, 1, D, H, W], got {list(tensor.shape)}")
    x = _input(predictor, tensor)
    t0 = time.perf_counter()
    out = METHODS[method].run(predictor, x, params_resolved)
    return ExplainOutput(map=out, method=method, params=params_resolved, seconds=time.perf_counter() - t0)


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
    """Voxel (z, y, x) of the model input with the highest Grad-CAM value, and that value.

    ``tensor`` is one preprocessed volume [1, 1, D, H, W]. Map the voxel to LPS
    mm with :meth:`ml.preprocess.PreprocessGeometry.model_to_lps`. A map that is
    zero everywhere (no positive evidence) gives voxel (0, 0, 0) and 0.0.
    """
    if tensor.shape[0] != 1:
        raise ValueError(f"gradcam_peak takes one volume [1, 1, D, H, W], got {list(tensor.shape)}")
    cam = gradcam_map(predictor, tensor)[0]
    flat = int(torch.argmax(cam).item())
    _, h, w = cam.shape
    z, rem = divmod(flat, h * w)
    y, xx = divmod(rem, w)
    return (z, y, xx), float(cam[z, y, xx].item())


# --------------------------------------------------------------------------- back to the source grid


def source_to_model_affine(geometry: PreprocessGeometry) -> tuple[F64Array, F64Array]:
    """(A, b) with model index = A @ source index + b, both (z, y, x), continuous voxels.

    Built from :meth:`~ml.preprocess.PreprocessGeometry.source_index_to_model`
    (the chain source → LPS → 1 mm grid → crop → resize is affine).
    """
    pts = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    m = geometry.source_index_to_model(pts)
    b = m[0]
    a = (m[1:] - b).T  # column k = image of source axis k
    return a, b


@dataclass(frozen=True)
class _AxisLerp:
    """Linear interpolation weights along one axis for source indices [lo, hi)."""

    lo: int
    hi: int
    i0: npt.NDArray[np.int64]
    i1: npt.NDArray[np.int64]
    w1: F32Array


def _axis_lerp(a: float, b: float, n_src: int, n_model: int) -> _AxisLerp:
    """Source indices whose model coordinate ``a·s + b`` lies within [-0.5, n_model - 0.5].

    Inside the half-voxel border the coordinate is clamped to the edge voxel
    (the behaviour of ``F.interpolate(align_corners=False)`` and ITK).
    """
    c = a * np.arange(n_src, dtype=np.float64) + b
    tol = 1e-6
    ok = np.flatnonzero((c >= -0.5 - tol) & (c <= n_model - 0.5 + tol))
    if ok.size == 0:
        z = np.zeros(0, np.int64)
        return _AxisLerp(0, 0, z, z, np.zeros(0, np.float32))
    lo, hi = int(ok[0]), int(ok[-1]) + 1
    c = np.clip(c[lo:hi], 0.0, n_model - 1.0)
    i0 = np.minimum(np.floor(c).astype(np.int64), max(n_model - 2, 0))
    i1 = np.minimum(i0 + 1, n_model - 1)
    w1 = (c - i0).astype(np.float32)
    return _AxisLerp(lo, hi, i0, i1, w1)


def _as_model_map(map_model: ExplainOutput | npt.NDArray[Any] | torch.Tensor, size: Size3) -> torch.Tensor:
    if isinstance(map_model, ExplainOutput):
        map_model = map_model.map
    if isinstance(map_model, torch.Tensor):
        t = map_model.detach()
    else:
        arr = np.asarray(map_model, dtype=np.float32)
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    while t.ndim > 3 and t.shape[0] == 1:
        t = t[0]
    if tuple(t.shape) != tuple(size):
        raise ValueError(f"model map must have shape {list(size)} (D, H, W), got {list(map_model.shape)}")
    return t.to(device="cpu", dtype=torch.float32).contiguous()


def to_source(
    map_model: ExplainOutput | npt.NDArray[Any] | torch.Tensor,
    geometry: PreprocessGeometry,
    *,
    out: F32Array | None = None,
) -> F32Array:
    """Resample a model-space map [D, H, W] onto the source series grid.

    Args:
        map_model: float map on the model grid, shape ``geometry.model_size_zyx``
            (leading singleton dims are dropped; any device), or an
            :class:`ExplainOutput` (its ``map``).
        geometry: the preprocessing record of the volume.
        out: optional C-contiguous float32 array of the source shape to fill and
            return (a worker can reuse one buffer: first-touching ~300 MB of fresh
            memory costs more than the resampling itself in these VMs).

    Returns:
        float32 array with the source series' shape (z, y, x) = (slices, rows,
        columns). Each voxel is the trilinear sample of the map at that voxel's
        continuous model coordinate; voxels outside the model grid (i.e. outside
        the body crop box, to within half a model voxel) are 0.

    The seed pipeline keeps the source's origin and direction on the 1 mm grid,
    so the source → model map is a per-axis scaling and shift; then the map is
    interpolated separably, one model plane at a time, into the region of the
    output that the crop covers (≈0.15 s for 300×512² from 256³ on 2 cores,
    no full-volume temporaries). A geometry whose axes are not parallel falls
    back to a SimpleITK linear resample (same values).
    """
    size = geometry.model_size_zyx
    m = _as_model_map(map_model, size)
    a, b = source_to_model_affine(geometry)
    out_shape = geometry.source.shape_zyx
    if out is None:
        out = np.zeros(out_shape, dtype=np.float32)
    elif out.shape != out_shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {out_shape}")
    else:
        out.fill(0.0)
    off = np.abs(a - np.diag(np.diag(a))).max()
    if off > 1e-9 * np.abs(np.diag(a)).max():
        out[...] = _to_source_sitk(m, geometry)
        return out
    az, ay, ax = (_axis_lerp(float(a[k, k]), float(b[k]), out_shape[k], size[k]) for k in range(3))
    if az.hi <= az.lo or ay.hi <= ay.lo or ax.hi <= ax.lo:
        return out
    out_t = torch.from_numpy(out)
    x0, x1, xw = torch.from_numpy(ax.i0), torch.from_numpy(ax.i1), torch.from_numpy(ax.w1)
    y0, y1, yw = torch.from_numpy(ay.i0), torch.from_numpy(ay.i1), torch.from_numpy(ay.w1)[:, None]
    cache: dict[int, torch.Tensor] = {}

    def plane(i: int) -> torch.Tensor:
        """Model plane i interpolated onto the source (rows, columns) region."""
        p = cache.get(i)
        if p is None:
            q = m[i]
            q = torch.lerp(q[:, x0], q[:, x1], xw)
            p = torch.lerp(q[y0], q[y1], yw)
            cache[i] = p
        return p

    with torch.no_grad():
        for s in range(az.lo, az.hi):
            i0, i1 = int(az.i0[s - az.lo]), int(az.i1[s - az.lo])
            p0, p1 = plane(i0), plane(i1)
            for k in [k for k in cache if k not in (i0, i1)]:
                del cache[k]
            torch.lerp(p0, p1, float(az.w1[s - az.lo]), out=out_t[s, ay.lo : ay.hi, ax.lo : ax.hi])
    return out


def _sitk_image(array_zyx: npt.NDArray[Any], geom: VolumeGeometry) -> Any:
    import SimpleITK as sitk  # noqa: N813

    img = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx))
    img.SetSpacing([float(v) for v in geom.spacing_mm])
    img.SetOrigin([float(v) for v in geom.origin_mm])
    img.SetDirection([float(v) for v in geom.direction])
    return img


def _to_source_sitk(m: torch.Tensor, geometry: PreprocessGeometry) -> F32Array:
    """General path of :func:`to_source`: SimpleITK linear resample, 0 outside."""
    import SimpleITK as sitk  # noqa: N813

    src = geometry.source
    img = _sitk_image(m.numpy(), geometry.model_grid())
    out = sitk.Resample(
        img,
        [int(v) for v in src.size],
        sitk.Transform(),
        sitk.sitkLinear,
        [float(v) for v in src.origin_mm],
        [float(v) for v in src.spacing_mm],
        [float(v) for v in src.direction],
        0.0,
        sitk.sitkFloat32,
    )
    arr: F32Array = sitk.GetArrayFromImage(out)
    return arr


# --------------------------------------------------------------------------- statistics


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating | float):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    return v


def _voxel_record(geom: VolumeGeometry, zyx: tuple[int, int, int]) -> dict[str, Any]:
    """Index (z, y, x) and (i, j, k) = (x, y, z), LPS and RAS mm of one voxel."""
    z, y, x = (int(v) for v in zyx)
    lps = geom.index_to_lps([float(x), float(y), float(z)])
    return {
        "index_zyx": [z, y, x],
        "index_ijk": [x, y, z],
        "lps_mm": [float(v) for v in lps],
        "ras_mm": [-float(lps[0]), -float(lps[1]), float(lps[2])],
    }


def _bbox_above(a: F32Array, threshold: float) -> tuple[slice, slice, slice] | None:
    """Slices (z, y, x) of the bounding box of ``a > threshold`` (two reductions, no mask copy)."""
    nz = a.shape[0]
    z_hit = np.flatnonzero(a.reshape(nz, -1).max(axis=1) > threshold)
    if z_hit.size == 0:
        return None
    z0, z1 = int(z_hit[0]), int(z_hit[-1]) + 1
    yx = a[z0:z1].max(axis=0) > threshold
    ys, xs = np.flatnonzero(yx.any(axis=1)), np.flatnonzero(yx.any(axis=0))
    return slice(z0, z1), slice(int(ys[0]), int(ys[-1]) + 1), slice(int(xs[0]), int(xs[-1]) + 1)


def _regions(
    source_map: F32Array, geom: VolumeGeometry, threshold: float, top_k: int
) -> tuple[int, list[dict[str, Any]]]:
    """Connected components (26-connected) of ``source_map > threshold``: (count, top_k by max).

    SimpleITK labels the components inside the bounding box of the mask and
    gives their sizes, centroids and boxes; maxima, peaks and saliency-weighted
    centroids come from NumPy on each component's own box.
    """
    import SimpleITK as sitk  # noqa: N813

    box = _bbox_above(source_map, threshold)
    if box is None:
        return 0, []
    sub = source_map[box]
    mask = np.greater(sub, threshold)
    labels_img = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.view(np.uint8)), True)
    del mask
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.Execute(labels_img)
    labels = sitk.GetArrayViewFromImage(labels_img)  # (z, y, x), unit geometry: physical == index

    def own(lab: int) -> tuple[tuple[slice, slice, slice], npt.NDArray[np.bool_]]:
        bx, by, bz, sx, sy, sz = shape.GetBoundingBox(lab)
        sl = (slice(bz, bz + sz), slice(by, by + sy), slice(bx, bx + sx))
        return sl, labels[sl] == lab

    ranked: list[tuple[float, int, int]] = []
    for lab in shape.GetLabels():
        sl, m = own(lab)
        ranked.append(
            (float(np.max(sub[sl], where=m, initial=-np.inf)), int(shape.GetNumberOfPixels(lab)), lab)
        )
    ranked.sort(key=lambda t: (-t[0], -t[1], t[2]))

    voxel_mm3 = abs(float(np.linalg.det(geom.affine_lps()[:3, :3])))
    offset_zyx = np.array([box[0].start, box[1].start, box[2].start], dtype=np.float64)
    rows: list[dict[str, Any]] = []
    for rank, (vmax, n, lab) in enumerate(ranked[:top_k], start=1):
        sl, m = own(lab)
        w = np.where(m, sub[sl], np.float32(0.0))  # float32, this component's box only
        total = float(w.sum(dtype=np.float64))
        corner = offset_zyx + np.array([sl[0].start, sl[1].start, sl[2].start], dtype=np.float64)
        profiles = [w.sum(axis=tuple(b for b in range(3) if b != a), dtype=np.float64) for a in range(3)]
        cog_zyx = corner + np.array([(p * np.arange(p.size)).sum() for p in profiles]) / max(total, 1e-300)
        peak_zyx = corner + np.array(np.unravel_index(int(np.argmax(w)), w.shape), dtype=np.float64)
        centroid_xyz = np.asarray(shape.GetCentroid(lab)) + offset_zyx[::-1]
        rows.append(
            {
                "rank": rank,
                "max": vmax,
                "mean": total / n,
                "sum": total,
                "voxels": n,
                "volume_mm3": n * voxel_mm3,
                "centroid_index_ijk": centroid_xyz.tolist(),
                "centroid_lps_mm": geom.index_to_lps(centroid_xyz).tolist(),
                "weighted_centroid_lps_mm": geom.index_to_lps(cog_zyx[::-1]).tolist(),
                "peak_index_zyx": [int(v) for v in peak_zyx],
                "peak_lps_mm": geom.index_to_lps(peak_zyx[::-1]).tolist(),
            }
        )
    return len(ranked), rows


def saliency_stats(
    source_map: F32Array,
    geometry: VolumeGeometry,
    *,
    region_fraction: float = 0.5,
    top_k: int = 5,
) -> dict[str, Any]:
    """Summary of a source-space map (values in the map's own units).

    Keys: ``max``, ``min``, ``mean`` (whole volume), ``mean_nonzero``,
    ``nonzero_fraction``, ``peak`` (index_zyx, index_ijk, lps_mm, ras_mm, value; the
    first maximum in C order), ``regions`` (26-connected components of
    ``map > region_fraction · max``, at most ``top_k``, largest maximum first:
    max, mean, sum, voxels, volume_mm3, centroid_index_ijk, centroid_lps_mm,
    weighted_centroid_lps_mm, peak_index_zyx, peak_lps_mm, rank), ``region_count``,
    ``region_threshold``. With a maximum ≤ 0 there are no regions.
    """
    if not 0.0 < region_fraction <= 1.0:
        raise ValueError(f"region_fraction must be in (0, 1], got {region_fraction}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    flat = int(np.argmax(source_map))
    peak = np.unravel_index(flat, source_map.shape)
    vmax = float(source_map.reshape(-1)[flat])
    nonzero = int(np.count_nonzero(source_map))
    total = float(source_map.sum(dtype=np.float64))
    threshold = region_fraction * vmax
    count, regions = _regions(source_map, geometry, threshold, top_k) if vmax > 0 else (0, [])
    return {
        "max": vmax,
        "min": float(source_map.min()),
        "mean": total / source_map.size,
        "mean_nonzero": total / nonzero if nonzero else 0.0,
        "nonzero_fraction": nonzero / source_map.size,
        "peak": {**_voxel_record(geometry, (int(peak[0]), int(peak[1]), int(peak[2]))), "value": vmax},
        "region_fraction": region_fraction,
        "region_threshold": threshold if vmax > 0 else None,
        "region_count": count,
        "regions": regions,
    }


# --------------------------------------------------------------------------- rendering


def _window_range(window: str | tuple[float, float]) -> tuple[float, float, str]:
    """(low, high, name) HU of a window preset or a (centre, width) pair."""
    if isinstance(window, str):
        if window not in WINDOWS:
            raise ValueError(f"window must be one of {sorted(WINDOWS)} or (centre, width) HU, got {window!r}")
        c, w = WINDOWS[window]
        name = window
    else:
        c, w = float(window[0]), float(window[1])
        if not (math.isfinite(c) and math.isfinite(w) and w > 0):
            raise ValueError(f"window (centre, width) must be finite with width > 0, got {window!r}")
        name = "custom"
    return c - w / 2.0, c + w / 2.0, name


def _ct_slice(ct: CTVolume | npt.NDArray[Any] | None, z: int) -> F32Array | None:
    if ct is None:
        return None
    if isinstance(ct, CTVolume):
        s: F32Array = ct.stored[z].astype(np.float32)
        if ct.slope != 1.0:
            s *= np.float32(ct.slope)
        if ct.intercept != 0.0:
            s += np.float32(ct.intercept)
        return s
    s_hu: F32Array = np.asarray(ct[z], dtype=np.float32)
    return s_hu


def _resize(a: F32Array, w: int, h: int) -> F32Array:
    """Bilinear (antialiased when shrinking) resize of a float image to w×h pixels."""
    if a.shape == (h, w):
        return a
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32), mode="F")
    return np.asarray(img.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)


def _lut(colormap: str) -> npt.NDArray[np.float32]:
    import matplotlib as mpl

    try:
        cmap = mpl.colormaps[colormap]
    except KeyError as e:
        raise ValueError(f"unknown colormap {colormap!r}") from e
    lut: npt.NDArray[np.float32] = cmap(np.linspace(0.0, 1.0, 256))[:, :3].astype(np.float32)
    return lut


@dataclass(frozen=True)
class _Style:
    lo_hu: float
    hi_hu: float
    vmax: float
    threshold_fraction: float
    lut: npt.NDArray[np.float32]
    alpha: tuple[float, float] = (0.35, 0.75)


def _render(hu: F32Array | None, sal: F32Array, st: _Style) -> npt.NDArray[np.uint8]:
    """RGB uint8: CT in the window (black without CT), heatmap blended where saliency > fraction·max."""
    s = np.clip(sal / st.vmax, 0.0, 1.0) if st.vmax > 0 else np.zeros_like(sal)
    f = st.threshold_fraction
    if hu is None:
        gray = np.zeros_like(s)
        alpha = np.where(s > f, 1.0, 0.0)
    else:
        gray = np.clip((hu - st.lo_hu) / (st.hi_hu - st.lo_hu), 0.0, 1.0)
        a0, a1 = st.alpha  # opacity ramps from a0 at the threshold to a1 at the maximum
        alpha = np.where(s > f, a0 + (a1 - a0) * (s - f) / max(1.0 - f, 1e-6), 0.0)
    color = st.lut[np.rint(s * 255.0).astype(np.intp)]
    rgb = gray[..., None] * (1.0 - alpha[..., None]) + color * alpha[..., None]
    out: npt.NDArray[np.uint8] = np.rint(rgb * 255.0).astype(np.uint8)
    return out


def _sprite_slices(nz: int, max_tiles: int, peak_z: int) -> list[int]:
    if nz <= max_tiles:
        return list(range(nz))
    picks = sorted({round(float(v)) for v in np.linspace(0, nz - 1, max_tiles)})
    if peak_z not in picks:
        nearest = min(range(len(picks)), key=lambda i: abs(picks[i] - peak_z))
        picks[nearest] = peak_z
    return sorted(set(picks))


def _write_sprite(
    source_map: F32Array,
    geom: VolumeGeometry,
    ct: CTVolume | npt.NDArray[Any] | None,
    slices: list[int],
    width: int,
    style: _Style,
    path: Path,
) -> dict[str, Any]:
    """Tiles of ``slices`` in row-major order, ≤ ``width`` px wide; returns the layout for stats.json.

    Tiles keep the in-plane physical aspect (column pitch sx, row pitch sy, mm).
    """
    from PIL import Image

    _, ny, nx = source_map.shape
    sx, sy = geom.spacing_mm[0], geom.spacing_mm[1]
    ncol = math.ceil(math.sqrt(len(slices)))
    nrow = math.ceil(len(slices) / ncol)
    tw = max(1, min(nx, width // ncol))
    th = max(1, round(tw * (ny * sy) / (nx * sx)))
    sprite = np.zeros((nrow * th, ncol * tw, 3), dtype=np.uint8)
    for t, z in enumerate(slices):
        r, c = divmod(t, ncol)
        hu = _ct_slice(ct, z)
        sal = _resize(np.asarray(source_map[z]), tw, th)
        sprite[r * th : (r + 1) * th, c * tw : (c + 1) * tw] = _render(
            None if hu is None else _resize(hu, tw, th), sal, style
        )
    Image.fromarray(sprite, mode="RGB").save(path, format="PNG", compress_level=6)
    return {
        "columns": ncol,
        "rows": nrow,
        "tile_px": [tw, th],
        "slices": slices,
        "slices_origin_lps_mm": [geom.index_to_lps([0.0, 0.0, float(z)]).tolist() for z in slices],
    }


def _write_peak_png(
    source_map: F32Array,
    geom: VolumeGeometry,
    ct: CTVolume | npt.NDArray[Any] | None,
    peak_zyx: tuple[int, int, int],
    style: _Style,
    path: Path,
) -> None:
    """The peak's slice at full column resolution (rows rescaled to square pixels), ring at the peak."""
    from PIL import Image, ImageDraw

    z, y, x = peak_zyx
    _, ny, nx = source_map.shape
    ph = max(1, round(ny * geom.spacing_mm[1] / geom.spacing_mm[0]))
    hu = _ct_slice(ct, z)
    rgb = _render(
        None if hu is None else _resize(hu, nx, ph), _resize(np.asarray(source_map[z]), nx, ph), style
    )
    img = Image.fromarray(rgb, mode="RGB")
    cy, rad = (y + 0.5) * ph / ny - 0.5, max(4.0, nx / 40.0)
    ImageDraw.Draw(img).ellipse((x - rad, cy - rad, x + rad, cy + rad), outline=(255, 255, 255), width=2)
    img.save(path, format="PNG", compress_level=6)


#: viewer layer files (:func:`write_saliency`, ``viewer_layers=True``): role → file name
LAYER_FILES: Mapping[str, str] = MappingProxyType(
    {"ct_layer": "layer_ct.png", "saliency_layer": "layer_saliency.png", "heat_layer": "layer_heat.png"}
)
#: opacity of the heat layer at the threshold and at the maximum (before the viewer's own opacity)
HEAT_ALPHA: tuple[float, float] = (0.35, 1.0)


def _layer_tile(geom: VolumeGeometry, tile_px: int) -> tuple[int, int]:
    """Tile (width, height) px: square pixels in mm, long side ≤ ``tile_px``, never finer than the source."""
    nx, ny = geom.size[0], geom.size[1]
    sx, sy = geom.spacing_mm[0], geom.spacing_mm[1]
    w_mm, h_mm = nx * sx, ny * sy
    pixel_mm = max(max(w_mm, h_mm) / tile_px, min(sx, sy))
    return max(1, min(tile_px, round(w_mm / pixel_mm))), max(1, min(tile_px, round(h_mm / pixel_mm)))


def _write_layers(
    source_map: F32Array,
    geom: VolumeGeometry,
    ct: CTVolume | npt.NDArray[Any] | None,
    slices: list[int],
    peak_z: int,
    tile_px: int,
    style: _Style,
    out: Path,
) -> tuple[dict[str, Path], dict[str, Any]]:
    """The viewer's separate layers: CT (8-bit gray in the window), saliency (8-bit), heat (RGBA).

    Same grid for all three: tiles of ``slices`` in row-major order (tile ``t`` at
    column ``t % columns``, row ``t // columns``), each the whole slice resampled
    (bilinear, antialiased) to square pixels. Returns (role → path, layout for stats).
    """
    from PIL import Image

    nz, ny, nx = source_map.shape
    tw, th = _layer_tile(geom, tile_px)
    ncol = math.ceil(math.sqrt(len(slices)))
    nrow = math.ceil(len(slices) / ncol)
    shape = (nrow * th, ncol * tw)
    sal8 = np.zeros(shape, dtype=np.uint8)
    heat = np.zeros((*shape, 4), dtype=np.uint8)
    gray = np.zeros(shape, dtype=np.uint8) if ct is not None else None
    f = style.threshold_fraction
    a0, a1 = HEAT_ALPHA
    lut8 = np.rint(style.lut * 255.0).astype(np.uint8)
    for t, z in enumerate(slices):
        r, c = divmod(t, ncol)
        box = (slice(r * th, (r + 1) * th), slice(c * tw, (c + 1) * tw))
        sal = _resize(np.asarray(source_map[z]), tw, th)
        s = np.clip(sal / style.vmax, 0.0, 1.0) if style.vmax > 0 else np.zeros_like(sal)
        s8 = np.rint(s * 255.0).astype(np.uint8)
        sal8[box] = s8
        alpha = np.where(s > f, a0 + (a1 - a0) * (s - f) / max(1.0 - f, 1e-6), 0.0)
        heat[box][..., :3] = lut8[s8]
        heat[box][..., 3] = np.rint(alpha * 255.0).astype(np.uint8)
        if gray is not None:
            hu = _ct_slice(ct, z)
            assert hu is not None
            g = np.clip((_resize(hu, tw, th) - style.lo_hu) / (style.hi_hu - style.lo_hu), 0.0, 1.0)
            gray[box] = np.rint(g * 255.0).astype(np.uint8)
    heat[heat[..., 3] == 0] = 0  # transparent pixels carry no colour: a smaller file
    paths: dict[str, Path] = {}
    for role, arr in (("ct_layer", gray), ("saliency_layer", sal8), ("heat_layer", heat)):
        if arr is None:
            continue
        paths[role] = out / LAYER_FILES[role]
        # noisy CT: zlib level 3 is 3× faster than 6 for ≈ 9 % more bytes; the smooth maps compress well
        img = Image.fromarray(arr, mode="RGBA" if arr.ndim == 3 else "L")
        img.save(paths[role], format="PNG", compress_level=3 if role == "ct_layer" else 6)
    layout = {
        "files": {role: p.name for role, p in paths.items()},
        "columns": ncol,
        "rows": nrow,
        "tile_px": [tw, th],
        "image_px": [ncol * tw, nrow * th],
        "pixel_mm": [nx * geom.spacing_mm[0] / tw, ny * geom.spacing_mm[1] / th],
        "order": "row-major: tile t at column t % columns, row t // columns",
        "tile_to_source": (
            "source column = (u + 0.5) * nx / tile_w - 0.5, source row = (v + 0.5) * ny / tile_h - 0.5 "
            "for tile pixel (u, v); rows downwards, columns to the right, as a DICOM viewer shows the image"
        ),
        "source_shape_zyx": [nz, ny, nx],
        "slices": slices,
        "slices_origin_lps_mm": [geom.index_to_lps([0.0, 0.0, float(z)]).tolist() for z in slices],
        "peak_tile": slices.index(peak_z) if peak_z in slices else None,
        "ct": None
        if gray is None
        else {
            "mode": "L",
            "window_hu": [style.lo_hu, style.hi_hu],
            "encoding": "0 = window_hu[0] or below, 255 = window_hu[1] or above",
        },
        "saliency": {
            "mode": "L",
            "scale": style.vmax,
            "encoding": "saliency ≈ pixel / 255 * scale (values below 0 are 0)",
        },
        "heat": {
            "mode": "RGBA",
            "threshold_fraction": f,
            "alpha": [a0, a1],
            "encoding": "colormap of the 8-bit saliency; alpha 0 at or below threshold_fraction, "
            "then ramps from alpha[0] to alpha[1] at the maximum",
        },
    }
    return paths, layout


# --------------------------------------------------------------------------- files


@dataclass(frozen=True)
class SaliencyFiles:
    """What :func:`write_saliency` wrote.

    Attributes:
        nifti: ``saliency.nii.gz`` (float32, source geometry, RAS affine).
        sprite_png: grid of axial slices with the overlay.
        peak_png: the slice through the peak at full resolution (None if not written).
        stats_json: ``stats.json``.
        stats: the content of ``stats.json``.
        content_types: file name → MIME type (``application/gzip``, ``image/png``,
            ``application/json``), for the object store.
        ct_layer, saliency_layer, heat_layer: the viewer layers (``layer_ct.png``,
            ``layer_saliency.png``, ``layer_heat.png``; None if not written; no CT
            layer without a CT).
    """

    nifti: Path
    sprite_png: Path
    peak_png: Path | None
    stats_json: Path
    stats: dict[str, Any]
    content_types: dict[str, str] = field(default_factory=dict)
    ct_layer: Path | None = None
    saliency_layer: Path | None = None
    heat_layer: Path | None = None

    def files(self) -> list[tuple[Path, str]]:
        """(path, content type) of every written file."""
        return list(self.named().values())

    def named(self) -> dict[str, tuple[Path, str]]:
        """Role → (path, content type), for the files that were written.

        Roles: ``nifti``, ``sprite_png``, ``peak_png``, ``stats_json`` and the viewer
        layers ``ct_layer``, ``saliency_layer``, ``heat_layer`` (``stats["layers"]``
        describes their grid).
        """
        roles = {
            "nifti": self.nifti,
            "sprite_png": self.sprite_png,
            "peak_png": self.peak_png,
            "stats_json": self.stats_json,
            "ct_layer": self.ct_layer,
            "saliency_layer": self.saliency_layer,
            "heat_layer": self.heat_layer,
        }
        return {role: (p, self.content_types[p.name]) for role, p in roles.items() if p is not None}


def _content_type(path: Path) -> str:
    for ext, ct in CONTENT_TYPES.items():
        if path.name.endswith(ext):
            return ct
    return "application/octet-stream"


def round_mantissa(a: F32Array, bits: int) -> F32Array:
    """A copy of float32 ``a`` with mantissas rounded to ``bits`` bits (1–23; relative error ≤ 2^-(bits+1)).

    Still float32, but the dropped low bits are zero, so gzip compresses the
    NIfTI far better (a 300×512² map: ≈ −45 % size and −40 % write time at 10 bits).
    """
    if not 1 <= bits <= 23:
        raise ValueError(f"mantissa bits must be in [1, 23], got {bits}")
    out = np.empty_like(a, dtype=np.float32)
    drop = 23 - bits
    if drop == 0:
        np.copyto(out, a)
        return out
    half = np.uint32(1 << (drop - 1))
    mask = np.uint32((0xFFFFFFFF << drop) & 0xFFFFFFFF)
    step = 16
    for z in range(0, a.shape[0], step):  # slabs: no full-volume integer temporaries
        np.copyto(out[z : z + step], a[z : z + step])
        v = out[z : z + step].view(np.uint32)
        v += half  # round half away from zero on the magnitude; a carry bumps the exponent correctly
        v &= mask
    return out


def _write_nifti(
    source_map: F32Array, geom: VolumeGeometry, path: Path, descrip: str, cal_max: float
) -> list[list[float]]:
    """float32 NIfTI-1, array (i, j, k) = (column, row, slice), sform = qform = RAS affine (scanner)."""
    import nibabel

    nib: Any = nibabel  # nibabel ships no type hints

    affine = geom.affine_ras()
    img = nib.Nifti1Image(source_map.transpose(2, 1, 0), affine)  # F-ordered view, no copy
    img.set_data_dtype(np.float32)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)  # rotation part; shear (gantry tilt) lives in the sform only
    hdr = img.header
    hdr.set_xyzt_units(xyz="mm")
    hdr["descrip"] = descrip.encode("ascii", "replace")[:79]
    hdr["cal_min"] = 0.0
    hdr["cal_max"] = cal_max  # display range for viewers
    nib.save(img, str(path))
    return [[float(v) for v in row] for row in affine]


def write_saliency(
    source_map: F32Array,
    geometry: VolumeGeometry,
    ct_hu: CTVolume | npt.NDArray[Any] | None,
    out_dir: str | Path,
    *,
    method: str = "",
    params: Mapping[str, Any] | None = None,
    window: str | tuple[float, float] = "lung",
    threshold_fraction: float = 0.2,
    colormap: str = "jet",
    max_tiles: int = 64,
    sprite_width: int = 2048,
    peak_png: bool = True,
    region_fraction: float = 0.5,
    top_k: int = 5,
    nifti_mantissa_bits: int | None = None,
    extra_stats: Mapping[str, Any] | None = None,
    viewer_layers: bool = True,
    layer_max_slices: int = 100,
    layer_tile_px: int = 256,
) -> SaliencyFiles:
    """Write a source-space saliency map as NIfTI + PNG overlays + JSON stats into ``out_dir``.

    Args:
        source_map: float32 (z, y, x) on the source series grid (see :func:`to_source`).
        geometry: the source series grid (``CTVolume.geometry``).
        ct_hu: the CT for the overlays: an HU array (z, y, x) of the same shape, or
            the CTVolume itself (only the rendered slices are converted to HU), or
            None for heatmap-only PNGs.
        out_dir: created if missing.
        method, params: recorded in ``stats.json``.
        window: CT display window, ``"lung"`` (−600/1500 HU), ``"mediastinal"``
            (40/400 HU) or (centre, width) in HU.
        threshold_fraction: the heatmap is blended where saliency > this · max.
        colormap: a matplotlib colormap name.
        max_tiles: the sprite shows at most this many slices, evenly spaced in
            array order, always including the peak slice.
        sprite_width: sprite width in pixels (≤ 4096); tiles keep the in-plane
            physical aspect ratio.
        peak_png: also write the peak slice at full resolution with a ring at the peak.
        region_fraction, top_k: connected regions reported (see :func:`saliency_stats`).
        nifti_mantissa_bits: None writes the map exactly; 1–23 rounds the float32
            mantissas first (:func:`round_mantissa`) for a smaller, faster NIfTI
            (stats and PNGs use the exact map).
        extra_stats: merged into ``stats.json`` (e.g. timings).
        viewer_layers: also write the layers a browser viewer composes itself
            (CT and heatmap apart, so that opacity can change): ``layer_ct.png``
            (8-bit gray, CT in ``window``), ``layer_saliency.png`` (8-bit saliency,
            0–255 = 0–max) and ``layer_heat.png`` (RGBA: ``colormap`` of the
            saliency, alpha 0 up to ``threshold_fraction`` · max, then
            :data:`HEAT_ALPHA`), on one grid described by ``stats["layers"]``.
        layer_max_slices: the layers hold every slice up to this many, else this
            many evenly spaced slices, always including the peak slice (1–1024).
        layer_tile_px: long side of a layer tile in pixels (32–512); tiles have
            square pixels (physical aspect) and are never finer than the source.

    Files: ``saliency.nii.gz`` — float32, voxel (i, j, k) = (column, row, slice) of
    the series, sform/qform = :meth:`VolumeGeometry.affine_ras` (code 1, scanner);
    ``saliency_sprite.png`` — tiles in row-major order, each slice shown as a
    DICOM viewer shows the image (rows downwards, columns to the right);
    ``saliency_peak.png``; ``stats.json`` — :func:`saliency_stats` plus method,
    params, the sprite layout (slice index and LPS z of each tile), the NIfTI
    affine and ``layers`` (None without ``viewer_layers``): file per role,
    ``columns``, ``rows``, ``tile_px`` [w, h], ``image_px``, ``pixel_mm`` [x, y],
    ``slices`` (series slice index of each tile), ``slices_origin_lps_mm``,
    ``peak_tile``, ``source_shape_zyx`` and each layer's encoding. For a
    300-slice 512² series the three PNGs hold 100 tiles of 256² in a 10 × 10 grid
    (2560² px): the real chest CT sample (131 slices) gives 3.6 MB of CT, 0.2 MB
    of saliency and 0.8 MB of heat (≈ +0.8 s on 2 cores); noise-free phantoms less.
    """
    if source_map.ndim != 3 or tuple(source_map.shape) != geometry.shape_zyx:
        raise ValueError(f"source_map shape {source_map.shape} != geometry {geometry.shape_zyx} (z, y, x)")
    if ct_hu is not None and tuple(ct_hu.stored.shape if isinstance(ct_hu, CTVolume) else ct_hu.shape) != (
        geometry.shape_zyx
    ):
        raise ValueError("ct_hu must have the same (z, y, x) shape as the saliency map")
    if not 0.0 <= threshold_fraction < 1.0:
        raise ValueError(f"threshold_fraction must be in [0, 1), got {threshold_fraction}")
    if not 1 <= max_tiles <= 1024:
        raise ValueError(f"max_tiles must be in [1, 1024], got {max_tiles}")
    if not 64 <= sprite_width <= 4096:
        raise ValueError(f"sprite_width must be in [64, 4096] px, got {sprite_width}")
    if nifti_mantissa_bits is not None and not 1 <= nifti_mantissa_bits <= 23:
        raise ValueError(f"nifti_mantissa_bits must be None or in [1, 23], got {nifti_mantissa_bits}")
    if not 1 <= layer_max_slices <= 1024:
        raise ValueError(f"layer_max_slices must be in [1, 1024], got {layer_max_slices}")
    if not 32 <= layer_tile_px <= 512:
        raise ValueError(f"layer_tile_px must be in [32, 512] px, got {layer_tile_px}")
    lo_hu, hi_hu, window_name = _window_range(window)
    source_map = np.asarray(source_map, dtype=np.float32)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    stats = saliency_stats(source_map, geometry, region_fraction=region_fraction, top_k=top_k)
    peak_z, peak_y, peak_x = (int(v) for v in stats["peak"]["index_zyx"])
    style = _Style(lo_hu, hi_hu, stats["max"], threshold_fraction, _lut(colormap))

    nz, ny, nx = source_map.shape
    slices = _sprite_slices(nz, max_tiles, peak_z)
    sprite_path = out / "saliency_sprite.png"
    layout = _write_sprite(source_map, geometry, ct_hu, slices, sprite_width, style, sprite_path)
    peak_path: Path | None = None
    if peak_png:
        peak_path = out / "saliency_peak.png"
        _write_peak_png(source_map, geometry, ct_hu, (peak_z, peak_y, peak_x), style, peak_path)
    layer_paths: dict[str, Path] = {}
    layers: dict[str, Any] | None = None
    if viewer_layers:
        layer_slices = _sprite_slices(nz, layer_max_slices, peak_z)
        layer_paths, layers = _write_layers(
            source_map, geometry, ct_hu, layer_slices, peak_z, layer_tile_px, style, out
        )

    nifti_path = out / "saliency.nii.gz"
    nifti_map = source_map if nifti_mantissa_bits is None else round_mantissa(source_map, nifti_mantissa_bits)
    descrip = f"Service4CT saliency {method}".strip()
    affine = _write_nifti(nifti_map, geometry, nifti_path, descrip, max(0.0, stats["max"]))
    del nifti_map

    stats.update(
        {
            "method": method,
            "params": dict(params or {}),
            "shape_zyx": [nz, ny, nx],
            "geometry": geometry.to_dict(),
            "nifti": {
                "file": nifti_path.name,
                "dtype": "float32",
                "mantissa_bits": 23 if nifti_mantissa_bits is None else nifti_mantissa_bits,
                "axes": "i, j, k = column, row, slice of the source series (x, y, z)",
                "affine_ras": affine,
            },
            "overlay": {
                "window": window_name,
                "window_hu": [lo_hu, hi_hu],
                "threshold_fraction": threshold_fraction,
                "colormap": colormap,
                "ct": ct_hu is not None,
            },
            "sprite": {"file": sprite_path.name, **layout},
            "peak_png": None if peak_path is None else {"file": peak_path.name, "slice": peak_z},
            "layers": layers,
        }
    )
    if extra_stats:
        stats.update(dict(extra_stats))
    stats = _jsonable(stats)
    stats_path = out / "stats.json"
    stats_path.write_text(json.dumps(stats, indent=2, allow_nan=False))
    written = [nifti_path, sprite_path, stats_path, *([peak_path] if peak_path else [])]
    written += layer_paths.values()
    return SaliencyFiles(
        nifti=nifti_path,
        sprite_png=sprite_path,
        peak_png=peak_path,
        stats_json=stats_path,
        stats=stats,
        content_types={p.name: _content_type(p) for p in written},
        ct_layer=layer_paths.get("ct_layer"),
        saliency_layer=layer_paths.get("saliency_layer"),
        heat_layer=layer_paths.get("heat_layer"),
    )


def save_explanation(
    predictor: Predictor,
    result: PreprocessResult,
    out_dir: str | Path,
    method: str = "gradcam",
    params: Mapping[str, Any] | None = None,
    ct: CTVolume | npt.NDArray[Any] | None = None,
    **render: Any,
) -> SaliencyFiles:
    """:func:`explain` → :func:`to_source` → :func:`write_saliency` for one preprocessed volume.

    ``render`` goes to :func:`write_saliency` (window, colormap, ...). Timings in
    seconds land in ``stats["seconds"]`` (explain, to_source, write).
    """
    ex = explain(predictor, result.tensor, method, params)
    t0 = time.perf_counter()
    src = to_source(ex.map, result.geometry)
    t1 = time.perf_counter()
    extra = dict(render.pop("extra_stats", None) or {})
    files = write_saliency(
        src,
        result.geometry.source,
        ct,
        out_dir,
        method=ex.method,
        params=ex.params,
        extra_stats={**extra, "seconds": {"explain": ex.seconds, "to_source": t1 - t0}},
        **render,
    )
    files.stats["seconds"]["write"] = time.perf_counter() - t1
    files.stats_json.write_text(json.dumps(files.stats, indent=2, allow_nan=False))
    return files
