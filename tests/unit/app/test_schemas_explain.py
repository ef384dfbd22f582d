"""The explanation part of the API contract (app/schemas.py) against the worker's ml.explain.

Both validate against one table (:data:`ml.explain.METHODS`): the probes below are
derived from it, so a limit changed there is checked on both sides at once.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.schemas import ExplainRequest, JobStatus, PredictRequest, check_explain_params
from ml.explain import EXPLAIN_METHODS, METHOD_NAMES, METHODS, Param, resolve_params

ROOT = Path(__file__).resolve().parents[3]

#: occlusion combination rules need the model's input size; these probes run where every combination of
#: the API's per-value limits fits: the largest window fits in the input, and any stride under the
#: largest window stays within the largest evaluation budget
_WINDOW, _BUDGET = METHODS["occlusion"].params["window"], METHODS["occlusion"].params["max_evaluations"]
INPUT = (int(_WINDOW.hi),) * 3
PARTNERS: dict[tuple[str, str], dict[str, Any]] = {("occlusion", "stride"): {"window": int(_WINDOW.hi)}}
LIBRARY: dict[str, dict[str, Any]] = {"occlusion": {"max_evaluations": int(_BUDGET.hi)}}


def _probes(p: Param) -> list[Any]:
    """Values on, just inside and just outside the rule, and values of other JSON types."""
    other = [None, True, False, "1", [1], {}, float("nan"), float("inf"), -float("inf")]
    if p.kind == "choice":
        return [*p.choices, "bogus", p.choices[0].upper(), 0, 1.5, *other]
    lo, hi = p.lo, p.hi
    values = [lo, hi, lo - 1, hi + 1, (lo + hi) / 2, 10**400, -(10**400)]
    if p.kind == "int":
        return [*values, int(lo) + 1, int(hi) - 1, float(lo), float(hi), lo + 0.5, *other]
    return [*values, int(lo), math.nextafter(lo, -math.inf), math.nextafter(hi, math.inf), *other]


def _accepted(check: Any, *args: Any) -> bool:
    try:
        check(*args)
    except ValueError:
        return False
    return True


def test_api_and_worker_accept_exactly_the_same_values() -> None:
    """For every parameter a request may set, the API accepts a value iff the worker does.

    The worker alone also refuses occlusion combinations that need the model's input
    size (a window larger than the input, a stride over the window, more forward
    passes than ``max_evaluations``); the probes run where those admit every value.
    """
    compared = 0
    for method, spec in METHODS.items():
        for name, p in spec.allowed(api=True).items():
            partner = PARTNERS.get((method, name), {})
            for v in _probes(p):
                given = {name: v, **partner}
                api = _accepted(check_explain_params, method, given)
                worker = _accepted(resolve_params, method, {**given, **LIBRARY.get(method, {})}, INPUT)
                assert api == worker, (method, name, v, api, worker)
                compared += 1
        # the library's own options: the worker takes them, a request may not
        for name, p in spec.params.items():
            if not p.api:
                assert not _accepted(check_explain_params, method, {name: p.default})
                assert _accepted(resolve_params, method, {name: p.default}, INPUT)
        for unknown in ({"nope": 1}, {"STEPS": 8}):
            assert not _accepted(check_explain_params, method, unknown)
            assert not _accepted(resolve_params, method, unknown, INPUT)
    assert compared > 100
    assert check_explain_params("none", {}) == {}
    assert not _accepted(check_explain_params, "none", {"steps": 8})


def test_explain_params_contract() -> None:
    """Values pass as given (not coerced); the messages name the method, the parameter and the rule."""
    assert check_explain_params("integrated_gradients", {"steps": 16, "baseline": "body_mean"})
    assert check_explain_params("saliency", {"smooth_voxels": 0}) == {"smooth_voxels": 0}
    assert type(check_explain_params("saliency", {"smooth_voxels": 0})["smooth_voxels"]) is int
    assert check_explain_params("integrated_gradients", {"smooth_voxels": 2.5})
    ig = "integrated_gradients"
    for method, params, message in (
        (ig, {"smooth_voxels": -0.5}, f"{ig}.smooth_voxels must be a number in [0.0, 8.0]"),
        ("integrated_gradients", {"smooth_voxels": float("nan")}, None),
        ("saliency", {"smooth_voxels": True}, None),
        ("saliency", {"smooth_voxels": "2"}, None),
        ("saliency", {"smooth_voxels": 9}, None),
        (ig, {"steps": 0}, f"{ig}.steps must be an integer in [1, 256]"),
        ("integrated_gradients", {"steps": True}, None),
        (ig, {"baseline": "white"}, f"{ig}.baseline must be one of ['black', 'body_mean']"),
        ("gradcam", {"steps": 4}, "gradcam takes no parameter 'steps' (allowed: ['nifti'])"),
        ("gradcam", {"layer": "layer3"}, None),
        ("gradcam", {"nifti": "float16"}, "gradcam.nifti must be one of ['uint8', 'float32']"),
        ("occlusion", {"window": 1000}, "occlusion.window must be an integer in [2, 64]"),
    ):
        with pytest.raises(ValueError) as e:
            check_explain_params(method, params)
        assert message is None or str(e.value) == message


def _input_sizes() -> dict[str, tuple[int, int, int]]:
    manifest = json.loads((ROOT / "weights" / "manifest.json").read_text())
    return {name: tuple(m["input_size"]) for name, m in manifest["models"].items()}


@pytest.mark.parametrize("model", sorted(_input_sizes()))
def test_api_accepted_params_are_accepted_by_the_worker(model: str) -> None:
    """Each API limit, one at a time, runs in the worker for the manifest's models (default budget).

    Except occlusion's lower limits: at 128³ or 256³ so fine a window (or stride)
    needs more forward passes than the worker's budget, and the job fails on it.
    """
    size = _input_sizes()[model]
    for method, spec in METHODS.items():
        for name, p in spec.allowed(api=True).items():
            values = list(p.choices) if p.kind == "choice" else [p.lo, p.hi]
            for v in values:
                params = {name: v, **PARTNERS.get((method, name), {})}
                check_explain_params(method, params)
                if method == "occlusion" and v == p.lo:
                    with pytest.raises(ValueError, match="forward passes, more than max_evaluations=4096"):
                        resolve_params(method, params, size)
                    continue
                resolve_params(method, params, size)
    both = {"window": 32, "stride": 16}  # 7³ forward passes at 128³, 15³ at 256³
    check_explain_params("occlusion", both)
    assert resolve_params("occlusion", both, size)["stride"] == [16, 16, 16]


def test_openapi_enums_come_from_the_table() -> None:
    def enum(model: Any, field: str) -> list[str]:
        return list(model.model_json_schema()["properties"][field]["enum"])

    assert enum(PredictRequest, "explain") == enum(JobStatus, "explain") == list(EXPLAIN_METHODS)
    assert enum(ExplainRequest, "method") == list(METHOD_NAMES)
    assert PredictRequest.model_fields["explain"].default == Settings.model_fields["default_explain"].default
    assert enum(Settings, "default_explain") == list(EXPLAIN_METHODS)
