"""ml.explain.params: the table of methods and parameter limits, and the worker-side resolution."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ml.explain import (
    EXPLAIN_METHODS,
    METHOD_NAMES,
    METHODS,
    check_params,
    occlusion_evaluations,
    resolve_params,
)

ROOT = Path(__file__).resolve().parents[3]
SIZE = (32, 32, 32)


@pytest.mark.parametrize(
    ("method", "params", "match"),
    [
        ("nope", {}, "unknown saliency method"),
        (
            "gradcam",
            {"steps": 3},
            r"gradcam takes no parameter 'steps' \(allowed: \['layer', 'nifti', 'target'\]\)",
        ),
        ("gradcam", {"layer": "layer9"}, r"gradcam.layer must be one of \['layer3', 'layer4'\]"),
        ("saliency", {"target": "normal"}, "saliency.target must be one of"),
        (
            "integrated_gradients",
            {"steps": 0},
            r"gradients.steps must be an integer in \[1, 256\]",
        ),
        ("integrated_gradients", {"steps": 257}, r"steps must be an integer in \[1, 256\]"),
        ("integrated_gradients", {"steps": 2.5}, "steps must be an integer"),
        ("integrated_gradients", {"steps": 8.0}, "steps must be an integer"),
        ("integrated_gradients", {"steps": True}, "steps must be an integer"),
        ("integrated_gradients", {"steps": 10**400}, "steps must be an integer"),  # no OverflowError
        (
            "integrated_gradients",
            {"internal_batch_size": 65},
            r"internal_batch_size must be an integer in \[1, 64\]",
        ),
        ("integrated_gradients", {"baseline": "white"}, "baseline must be one of"),
        ("integrated_gradients", {"baseline": 0.0}, "baseline must be one of"),
        ("integrated_gradients", {"sign": "negative"}, "sign must be one of"),
        ("integrated_gradients", {"smooth_voxels": -1}, r"smooth_voxels must be a number in \[0.0, 8.0\]"),
        ("saliency", {"smooth_voxels": "wide"}, "smooth_voxels must be a number"),
        ("saliency", {"smooth_voxels": float("inf")}, "smooth_voxels must be a number"),
        ("occlusion", {"window": 1}, r"occlusion.window must be an integer in \[2, 64\]"),
        ("occlusion", {"window": [4, 4, 4]}, "occlusion.window must be an integer"),
        ("occlusion", {"window": 33}, r"occlusion.window 33 exceeds the input size \[32, 32, 32\]"),
        ("occlusion", {"window": 8, "stride": 9}, r"occlusion.stride 9 exceeds the window \[8, 8, 8\]"),
        ("occlusion", {"stride": 5}, r"occlusion.stride 5 exceeds the window \[4, 4, 4\]"),  # auto window
        ("occlusion", {"window": 2, "stride": 1}, "needs 29791 forward passes"),
        ("occlusion", {"baseline": float("nan")}, "occlusion.baseline must be a number in"),
        ("occlusion", {"perturbations_per_eval": 0}, "perturbations_per_eval must be an integer in"),
    ],
)
def test_parameter_validation(method: str, params: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        resolve_params(method, params, SIZE)


def test_resolved_defaults() -> None:
    p = resolve_params("occlusion", None, (32, 64, 40))
    assert p["window"] == [4, 8, 5] and p["stride"] == [4, 8, 5] and p["baseline"] == -1.0
    assert resolve_params("occlusion", {"window": 8, "stride": 4}, SIZE)["stride"] == [4, 4, 4]
    assert occlusion_evaluations((32, 64, 40), (4, 8, 5), (4, 8, 5)) == 512
    assert occlusion_evaluations((10, 10, 10), (4, 4, 4), (3, 3, 3)) == 27  # ceil: the last patch is clipped
    ig = resolve_params("integrated_gradients", {"baseline": "body_mean"}, SIZE)
    assert ig == {
        "target": "margin",
        "steps": 32,
        "internal_batch_size": 4,
        "baseline": "body_mean",
        "sign": "positive",
        "smooth_voxels": 3.0,
        "nifti": "uint8",
    }
    assert resolve_params("saliency", None, SIZE)["smooth_voxels"] == 0.0  # raw by default
    # NumPy scalars are taken and come back as plain (JSON-able) int and float
    np_p = resolve_params(
        "integrated_gradients", {"steps": np.int64(8), "smooth_voxels": np.float32(1.5)}, SIZE
    )
    assert type(np_p["steps"]) is int and type(np_p["smooth_voxels"]) is float and np_p["steps"] == 8


def test_the_table_is_consistent() -> None:
    assert tuple(METHODS) == METHOD_NAMES and ("none", *METHOD_NAMES) == EXPLAIN_METHODS
    for name, spec in METHODS.items():
        assert spec.name == name and spec.description
        given = {k: v for k, v in spec.defaults.items() if v is not None}  # None: derived from the size
        assert check_params(name, given) == given, name  # every default obeys its own rule
        for pname, p in spec.params.items():
            assert (p.kind == "choice") == bool(p.choices), (name, pname)
            assert p.kind == "choice" or p.lo <= p.hi, (name, pname)
    # a request sets the limits it sees; the library alone may pick the score, layer, sign and budget
    api = {m: sorted(s.allowed(api=True)) for m, s in METHODS.items()}
    assert api == {
        "gradcam": ["nifti"],
        "integrated_gradients": ["baseline", "internal_batch_size", "nifti", "smooth_voxels", "steps"],
        "saliency": ["nifti", "smooth_voxels"],
        "occlusion": ["nifti", "stride", "window"],
    }
    assert all(s.params["nifti"].choices == ("uint8", "float32") for s in METHODS.values())
    with pytest.raises(ValueError, match=r"none takes no parameter 'steps' \(allowed: \[\]\)"):
        check_params("none", {"steps": 1}, api=True)
    with pytest.raises(ValueError, match="unknown saliency method 'none'"):
        check_params("none", {})
    with pytest.raises(
        ValueError, match=r"saliency takes no parameter 'target' \(allowed: \['nifti', 'smooth_voxels'\]\)"
    ):
        check_params("saliency", {"target": "margin"}, api=True)


def test_the_package_top_level_is_torch_free() -> None:
    """The API imports the table: ``import ml.explain`` loads neither torch nor the imaging libraries."""
    code = (
        "import sys, ml.explain\n"
        "heavy = {'torch', 'captum', 'SimpleITK', 'nibabel', 'PIL', 'matplotlib'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- the cost model

DEMO = (128, 128, 128)
MiB = 1 << 20
BUDGET = {"max_passes": 1024, "max_bytes": 2048 * MiB}


def test_cost_of_each_method_at_the_demo_input_size() -> None:
    from ml.explain import GRAD_BYTES_PER_VOXEL, explain_cost

    voxels = 128**3
    one = GRAD_BYTES_PER_VOXEL * voxels
    assert 350 * MiB <= one <= 355 * MiB  # the measured ≈ 352 MiB per volume
    for m in ("gradcam", "saliency"):
        c = explain_cost(m, resolve_params(m, {}, DEMO), DEMO)
        assert (c.forward_passes, c.backward_passes, c.passes, c.peak_bytes) == (1, 1, 3, one)
    ig = explain_cost("integrated_gradients", resolve_params("integrated_gradients", {}, DEMO), DEMO)
    assert (ig.forward_passes, ig.backward_passes, ig.peak_bytes) == (32, 32, 4 * one)  # steps 32, batch 4
    small = resolve_params("integrated_gradients", {"steps": 2, "internal_batch_size": 64}, DEMO)
    assert explain_cost("integrated_gradients", small, DEMO).peak_bytes == 2 * one  # batch ≤ steps
    occ = explain_cost("occlusion", resolve_params("occlusion", {}, DEMO), DEMO)
    assert (occ.forward_passes, occ.backward_passes) == (8**3 + 1, 0)  # 1/8 windows + the clean pass
    assert explain_cost("none", {}, DEMO).passes == 0


@pytest.mark.parametrize(
    ("method", "params", "error", "match"),
    [
        # ≈ 22 GiB of activations at once (the review's finding)
        ("integrated_gradients", {"internal_batch_size": 64, "steps": 64}, "budget", "MiB of activations"),
        ("integrated_gradients", {"internal_batch_size": 6, "steps": 32}, "budget", "internal_batch_size"),
        ("integrated_gradients", {"internal_batch_size": 5, "steps": 32}, "ok", ""),
        ("integrated_gradients", {"steps": 256, "internal_batch_size": 1}, "ok", ""),  # 768 passes
        ("occlusion", {"window": 8}, "budget", "4097 forward"),  # 16³ positions: ≈ 20 CPU-minutes
        ("occlusion", {"window": 2, "stride": 1}, "invalid", "max_evaluations"),  # the worker's own limit
        ("occlusion", {"window": 16, "stride": 32}, "invalid", "exceeds the window"),
        ("occlusion", {"window": 16}, "ok", ""),
        ("gradcam", {}, "ok", ""),
        ("none", {}, "ok", ""),
    ],
)
def test_the_budget_refuses_what_costs_too_much_and_what_the_worker_refuses(
    method: str, params: dict[str, Any], error: str, match: str
) -> None:
    from ml.explain import BudgetError, check_budget

    if error == "ok":
        check_budget(method, params, DEMO, **BUDGET)
        return
    with pytest.raises(ValueError, match=match) as info:
        check_budget(method, params, DEMO, **BUDGET)
    assert isinstance(info.value, BudgetError) == (error == "budget")


def test_the_budget_follows_the_input_size() -> None:
    from ml.explain import BudgetError, check_budget

    ig = {"internal_batch_size": 4}
    check_budget("integrated_gradients", ig, DEMO, **BUDGET)
    with pytest.raises(BudgetError):  # 8× the voxels at 256³
        check_budget("integrated_gradients", ig, (256, 256, 256), **BUDGET)
