"""The explanation methods and their parameters: one table for the API and the library.

Torch-free: the API validates a request against it before queueing (the
parameters marked ``api``), the worker resolves the same parameters again with
:func:`resolve_params` when it knows the model's input size.

Each parameter has one rule (:class:`Param`): an integer or a number in
[lo, hi], or one of a few choices, and a default. ``api`` says whether a request
may set it (``explain_params`` of ``POST /v1/jobs``, ``params`` of
``POST /v1/jobs/{id}/explain``); the others are library options for benches and
tests (the explained score, the Grad-CAM layer, the sign of IG and occlusion
maps, occlusion's batching and budget) that the service keeps at their defaults.

Rules that need the input size (D, H, W) apply only in :func:`resolve_params`:
an occlusion window must fit in the input, its stride must not exceed the
window, and the forward passes it takes (:func:`occlusion_evaluations`) must not
exceed ``max_evaluations``.

The cost model (:func:`explain_cost`, :func:`check_budget`) is shared too: the API refuses
a request whose model passes or estimated memory exceed the service's budget, and the
worker checks the same before it starts, so neither accepts what the other refuses.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, get_args

__all__ = [
    "AIR",
    "CT_PIXEL_FILES",
    "DEFAULT_SMOOTH_VOXELS",
    "EXPLAIN_METHODS",
    "FORWARD_BYTES_PER_VOXEL",
    "GRAD_BYTES_PER_VOXEL",
    "METHODS",
    "METHOD_NAMES",
    "NIFTI_ENCODINGS",
    "BudgetError",
    "ExplainCost",
    "ExplainMethod",
    "MethodName",
    "MethodSpec",
    "Param",
    "check_budget",
    "check_params",
    "explain_cost",
    "occlusion_evaluations",
    "resolve_params",
]

#: the files of :func:`~ml.explain.files.write_saliency` that hold CT pixels (the overlays drawn on
#: the CT and the viewer's CT layer); the others (NIfTI, stats, saliency and heat layers) hold none.
#: Here, not in ``files``, so that a service can name them without importing the imaging libraries.
CT_PIXEL_FILES: frozenset[str] = frozenset({"saliency_sprite.png", "saliency_peak.png", "layer_ct.png"})

#: the saliency methods (the keys of :data:`METHODS`)
MethodName = Literal["gradcam", "integrated_gradients", "saliency", "occlusion"]
#: what a job's ``explain`` takes: a method, or ``none`` for no explanation
ExplainMethod = Literal["none", MethodName]
METHOD_NAMES: tuple[str, ...] = get_args(MethodName)
EXPLAIN_METHODS: tuple[str, ...] = get_args(ExplainMethod)

Size3 = tuple[int, int, int]

#: value of air after the seed pipeline's clip/scale ([-1000, 600] HU → [-1, 1])
AIR = -1.0
#: σ (model voxels) of the Gaussian that smooths IG maps by default
DEFAULT_SMOOTH_VOXELS = 3.0
TARGETS = ("margin", "pathology")
SIGNS = ("positive", "absolute", "signed")
#: encodings of the explanation's NIfTI (every method's ``nifti`` parameter): 8 bits with
#: scl_slope/scl_inter (default), or the exact float32 map
NIFTI_ENCODINGS = ("uint8", "float32")
GRADCAM_LAYERS = ("layer3", "layer4")


@dataclass(frozen=True)
class Param:
    """The rule and default of one method parameter.

    Attributes:
        kind: ``"int"`` (an integer in [lo, hi]), ``"number"`` (a finite number in
            [lo, hi]) or ``"choice"`` (one of ``choices``).
        default: the value when the parameter is not given; None: derived from the
            input size by :func:`resolve_params`.
        lo, hi: bounds of ``int`` and ``number`` (inclusive).
        choices: the values of ``choice``.
        api: a request may set it; False: library callers only.
    """

    kind: Literal["int", "number", "choice"]
    default: Any
    lo: float = 0
    hi: float = 0
    choices: tuple[str, ...] = ()
    api: bool = True

    def check(self, method: str, name: str, value: Any) -> Any:
        """``value`` as int, float or str; ValueError naming ``method.name`` and the rule."""
        if self.kind == "choice":
            if value not in self.choices:
                raise ValueError(f"{method}.{name} must be one of {list(self.choices)}")
            return str(value)
        if self.kind == "int":
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or not self._within(value):
                raise ValueError(f"{method}.{name} must be an integer in [{self.lo}, {self.hi}]")
            return int(value)
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not self._within(value):
            raise ValueError(f"{method}.{name} must be a number in [{self.lo}, {self.hi}]")
        return float(value)

    def _within(self, value: Any) -> bool:
        if isinstance(value, numbers.Integral):  # exact, also for integers too large for a float
            return self.lo <= int(value) <= self.hi
        return math.isfinite(value) and self.lo <= value <= self.hi


def _int(lo: int, hi: int, default: int | None, *, api: bool = True) -> Param:
    return Param("int", default, lo, hi, api=api)


def _number(lo: float, hi: float, default: float, *, api: bool = True) -> Param:
    return Param("number", default, float(lo), float(hi), api=api)


def _choice(choices: tuple[str, ...], default: str, *, api: bool = True) -> Param:
    return Param("choice", default, choices=choices, api=api)


@dataclass(frozen=True)
class MethodSpec:
    """One saliency method: its name, a line for users, and its parameters (name → :class:`Param`)."""

    name: str
    description: str
    params: Mapping[str, Param]

    @property
    def defaults(self) -> dict[str, Any]:
        """Every parameter with its default (None: derived from the input size)."""
        return {name: p.default for name, p in self.params.items()}

    def allowed(self, *, api: bool) -> Mapping[str, Param]:
        """The parameters a request (``api``) or a library caller may set."""
        return {name: p for name, p in self.params.items() if p.api or not api}


# the explained score and σ of the Gaussian blur of gradient maps (model voxels): 0 = raw
_TARGET = _choice(TARGETS, "margin", api=False)
# how the NIfTI stores the map (the PNG layers and stats do not depend on it)
_NIFTI = _choice(NIFTI_ENCODINGS, "uint8")
_SMOOTH_MAX = 8.0

#: the saliency methods and their parameters
METHODS: Mapping[str, MethodSpec] = MappingProxyType(
    {
        "gradcam": MethodSpec(
            "gradcam",
            "Grad-CAM of a ResNet stage, ReLU, trilinear upsampling to the input",
            MappingProxyType(
                {"target": _TARGET, "layer": _choice(GRADCAM_LAYERS, "layer4", api=False), "nifti": _NIFTI}
            ),
        ),
        "integrated_gradients": MethodSpec(
            "integrated_gradients",
            "Integrated Gradients from a baseline volume (black = air, or body_mean)",
            MappingProxyType(
                {
                    "target": _TARGET,
                    "steps": _int(1, 256, 32),
                    "internal_batch_size": _int(1, 64, 4),
                    "baseline": _choice(("black", "body_mean"), "black"),
                    "sign": _choice(SIGNS, "positive", api=False),
                    "smooth_voxels": _number(0.0, _SMOOTH_MAX, DEFAULT_SMOOTH_VOXELS),
                    "nifti": _NIFTI,
                }
            ),
        ),
        "saliency": MethodSpec(
            "saliency",
            "absolute gradient of the score with respect to the input voxels",
            MappingProxyType(
                {"target": _TARGET, "smooth_voxels": _number(0.0, _SMOOTH_MAX, 0.0), "nifti": _NIFTI}
            ),
        ),
        "occlusion": MethodSpec(
            "occlusion",
            "score drop when 3-D patches are replaced by air (sliding window, voxels)",
            MappingProxyType(
                {
                    "target": _TARGET,
                    # cubic patches in model voxels; None: 1/8 of the input size, non-overlapping
                    "window": _int(2, 64, None),
                    "stride": _int(1, 64, None),
                    "baseline": _number(-1.0, 1.0, AIR, api=False),
                    "sign": _choice(SIGNS, "positive", api=False),
                    "perturbations_per_eval": _int(1, 64, 1, api=False),
                    "max_evaluations": _int(1, 10**6, 4096, api=False),
                    "nifti": _NIFTI,
                }
            ),
        ),
    }
)
if tuple(METHODS) != METHOD_NAMES:  # the Literal is what type checkers and the OpenAPI enums see
    raise RuntimeError(f"METHODS {list(METHODS)} != MethodName {list(METHOD_NAMES)}")


def check_params(method: str, params: Mapping[str, Any], *, api: bool = False) -> dict[str, Any]:
    """``params`` checked against the rules of ``method``, in their order; values as int, float or str.

    ``api``: only the parameters a request may set (``none`` takes none). Raises
    ValueError for an unknown method, a parameter the method does not take, or a
    value outside its rule (the message names the method, the parameter and the rule).
    """
    if api and method == "none":
        allowed: Mapping[str, Param] = {}
    elif method in METHODS:
        allowed = METHODS[method].allowed(api=api)
    else:
        raise ValueError(f"unknown saliency method {method!r}; choose from {sorted(METHODS)}")
    out: dict[str, Any] = {}
    for name, value in params.items():
        if name not in allowed:
            raise ValueError(f"{method} takes no parameter {name!r} (allowed: {sorted(allowed)})")
        out[name] = allowed[name].check(method, name, value)
    return out


def occlusion_evaluations(size: Size3, window: Size3, stride: Size3) -> int:
    """Forward passes Captum's Occlusion makes: prod(ceil((n - w) / s) + 1) over (D, H, W)."""
    return math.prod(math.ceil((n - w) / s) + 1 for n, w, s in zip(size, window, stride, strict=True))


def _resolve_occlusion(p: dict[str, Any], size: Size3) -> dict[str, Any]:
    """Window and stride as [D, H, W] voxels for ``size``, within the input and the evaluation budget."""
    if p["window"] is None:
        window = tuple(max(1, math.ceil(n / 8)) for n in size)
    else:
        window = (p["window"],) * 3
        if any(w > n for w, n in zip(window, size, strict=True)):
            raise ValueError(f"occlusion.window {p['window']} exceeds the input size {list(size)} (D, H, W)")
    stride = window if p["stride"] is None else (p["stride"],) * 3
    if any(s > w for s, w in zip(stride, window, strict=True)):
        raise ValueError(f"occlusion.stride {p['stride']} exceeds the window {list(window)}")
    n = occlusion_evaluations(size, (window[0], window[1], window[2]), (stride[0], stride[1], stride[2]))
    if n > p["max_evaluations"]:
        raise ValueError(
            f"occlusion: window {list(window)} with stride {list(stride)} needs {n} forward passes, "
            f"more than max_evaluations={p['max_evaluations']}; use a larger window/stride"
        )
    p["window"], p["stride"] = list(window), list(stride)
    return p


def resolve_params(method: str, params: Mapping[str, Any] | None, input_size: Size3) -> dict[str, Any]:
    """Defaults of ``method`` overlaid with ``params`` (:func:`check_params`), resolved for ``input_size``.

    ``input_size`` is the model's (D, H, W) in voxels; the result is JSON-able.

    Raises:
        ValueError: unknown method, unknown parameter name, a value out of bounds,
            or an occlusion window/stride that does not fit the input or the budget.
    """
    given = check_params(method, params or {})
    p = {**METHODS[method].defaults, **given}
    return _resolve_occlusion(p, input_size) if method == "occlusion" else p


#: activation memory of a pass with gradients (the forward kept for the backward), bytes per
#: input voxel and volume: Integrated Gradients of the demo ResNet-10 at 128³ grew the peak RSS
#: by 345, 728 and 1400 MiB for 1, 2 and 4 volumes at once (float32, CPU: Intel Xeon, 2 cores),
#: ≈ 352 MiB per volume; deeper or wider models need more
GRAD_BYTES_PER_VOXEL = 176
#: a forward pass without gradients: 128 and 544 MiB for 1 and 4 volumes (same model and
#: machine), ≈ 136 MiB per volume
FORWARD_BYTES_PER_VOXEL = 68


class BudgetError(ValueError):
    """The explanation exceeds the budget (passes or memory); the message says by how much."""


@dataclass(frozen=True)
class ExplainCost:
    """What explaining one volume costs, estimated from the method's resolved parameters.

    Attributes:
        forward_passes: model forward passes, counted per volume (a batch of 4 is 4).
        backward_passes: backward passes, per volume.
        peak_bytes: estimated activation memory of the largest batch the method runs at once.
    """

    forward_passes: int
    backward_passes: int
    peak_bytes: int

    @property
    def passes(self) -> int:
        """Forward-pass equivalents: a backward pass counts as two forward passes."""
        return self.forward_passes + 2 * self.backward_passes


def explain_cost(method: str, resolved: Mapping[str, Any], input_size: Size3) -> ExplainCost:
    """The cost of ``method`` with ``resolved`` parameters (:func:`resolve_params`) at ``input_size``.

    ``input_size`` is the model's (D, H, W) in voxels.

    - Grad-CAM, saliency: one forward and one backward pass of one volume.
    - Integrated Gradients: ``steps`` forward and backward passes, run ``internal_batch_size``
      volumes at a time (that many volumes' activations at once).
    - Occlusion: one forward pass per window position (:func:`occlusion_evaluations`) plus the
      unoccluded one, ``perturbations_per_eval`` volumes at a time, without gradients.
    """
    voxels = math.prod(input_size)
    if method in ("gradcam", "saliency"):
        return ExplainCost(1, 1, GRAD_BYTES_PER_VOXEL * voxels)
    if method == "integrated_gradients":
        steps = int(resolved["steps"])
        batch = min(int(resolved["internal_batch_size"]), steps)
        return ExplainCost(steps, steps, GRAD_BYTES_PER_VOXEL * voxels * batch)
    if method == "occlusion":
        window, stride = resolved["window"], resolved["stride"]
        n = occlusion_evaluations(input_size, tuple(window), tuple(stride))
        batch = int(resolved["perturbations_per_eval"])
        return ExplainCost(n + 1, 0, FORWARD_BYTES_PER_VOXEL * voxels * batch)
    if method == "none":
        return ExplainCost(0, 0, 0)
    raise ValueError(f"unknown saliency method {method!r}; choose from {sorted(METHODS)}")


def check_budget(
    method: str,
    params: Mapping[str, Any] | None,
    input_size: Size3,
    *,
    max_passes: int,
    max_bytes: int,
) -> dict[str, Any]:
    """:func:`resolve_params`, then the budget: at most ``max_passes`` forward-pass equivalents
    (:attr:`ExplainCost.passes`) and ``max_bytes`` of estimated activation memory.

    Raises:
        BudgetError: over the budget (a ValueError).
        ValueError: what :func:`resolve_params` refuses.
    """
    if method == "none":
        return {}
    resolved = resolve_params(method, params, input_size)
    cost = explain_cost(method, resolved, input_size)
    if cost.passes > max_passes:
        raise BudgetError(
            f"{method}: {cost.forward_passes} forward and {cost.backward_passes} backward passes "
            f"({cost.passes} forward-pass equivalents) exceed the budget of {max_passes}; "
            "use fewer steps or a larger occlusion window/stride"
        )
    if cost.peak_bytes > max_bytes:
        raise BudgetError(
            f"{method}: about {cost.peak_bytes / 2**20:.0f} MiB of activations at once exceed the "
            f"budget of {max_bytes / 2**20:.0f} MiB; use a smaller internal_batch_size"
        )
    return resolved
