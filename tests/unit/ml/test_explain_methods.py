"""ml.explain.methods: the Captum methods on a tiny ResNet-10 and on a model with known attributions.

Small sizes on CPU: a random ResNet-10 at 32³ where the model does not matter, and
a "region model" (pathology logit = mean of the input over a box) where exact
attributions are known in closed form.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from test_inference import tiny_entry, tiny_model

from ml.explain import METHOD_NAMES
from ml.explain.methods import body_mask, explain, gaussian_smooth, gradcam_map
from ml.inference import Predictor
from ml.model import ModelSpec
from ml.model.network import ResNet3D

SIZE = 32
FAST = {
    "gradcam": {},
    "integrated_gradients": {"steps": 4, "internal_batch_size": 2},
    "saliency": {},
    "occlusion": {"window": 8},
}


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(tiny_entry(), tiny_model(seed=3), device="cpu")


def _volume(seed: int = 1, size: int = SIZE) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((1, 1, size, size, size), generator=g) * 2 - 1


class RegionModel(ResNet3D):
    """Logits (0, mean of the input over ``box``): every attribution is known exactly."""

    def __init__(self, box: tuple[slice, slice, slice]) -> None:
        super().__init__(ModelSpec(arch="resnet10"))
        self.box = box

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = x[:, 0][(slice(None), *self.box)].mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(r), r], dim=1)


BOX = (slice(8, 16), slice(16, 24), slice(4, 12))  # (z, y, x) model voxels, aligned to 4-voxel patches


@pytest.fixture(scope="module")
def region_predictor() -> Predictor:
    return Predictor(tiny_entry(), RegionModel(BOX).eval(), device="cpu")


def _inside(shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    m = np.zeros(shape, dtype=bool)
    m[BOX] = True
    return m


@pytest.mark.parametrize("method", METHOD_NAMES)
@pytest.mark.parametrize("mode", ["plain", "inference_mode", "no_grad"])
def test_methods_shape_finite_and_rule_8(predictor: Predictor, method: str, mode: str) -> None:
    model = predictor.model
    seen: list[tuple[bool, bool]] = []  # (training, grad enabled) at each forward
    hook = model.layer1.register_forward_pre_hook(
        lambda _m, _i: seen.append((model.training, torch.is_grad_enabled())) and None
    )
    try:
        out = _explain_in_mode(predictor, method, mode)
    finally:
        hook.remove()
    assert seen and not any(training for training, _ in seen)  # BatchNorm never in training mode
    assert all(grad == (method != "occlusion") for _, grad in seen)  # gradients only where needed
    m = out.map
    assert m.dtype == torch.float32 and m.device.type == "cpu" and tuple(m.shape) == (SIZE,) * 3
    assert bool(torch.isfinite(m).all()) and not m.requires_grad
    assert float(m.min()) >= 0.0  # all defaults keep positive evidence only (or |gradient|)
    assert out.method == method and out.seconds > 0
    json.dumps(out.params)  # resolved params are JSON-able
    assert not model.training
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def _explain_in_mode(predictor: Predictor, method: str, mode: str) -> Any:
    """explain() plainly, under an outer inference_mode (inference tensor input) or under no_grad."""
    x = _volume()
    if mode == "inference_mode":
        with torch.inference_mode():
            x = x.clone()  # an inference tensor, as the worker's batch would be
            out = explain(predictor, x, method, FAST[method])
            assert torch.is_inference_mode_enabled()
    elif mode == "no_grad":
        with torch.no_grad():
            out = explain(predictor, x, method, FAST[method])
            assert not torch.is_grad_enabled()
    else:
        out = explain(predictor, x, method, FAST[method])
        assert torch.is_grad_enabled()
    return out


def test_gradcam_explain_matches_legacy_gradcam_map() -> None:
    """64³ input → a 2³ layer4 map; fc weights ≥ 0 for pathology, 0 for normal: the CAM is positive."""
    model = tiny_model(seed=2)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.weight[1].fill_(1.0)
    pr = Predictor(tiny_entry(size=64), model, device="cpu")
    x = _volume(seed=4, size=64)
    legacy = gradcam_map(pr, x)[0]
    via = explain(pr, x, "gradcam", {"target": "pathology"}, mask_body=False).map
    margin = explain(pr, x, "gradcam", mask_body=False).map  # logit1 - logit0 = logit1 + const here
    assert float(legacy.max()) > 0 and float(legacy.std()) > 0
    assert torch.allclose(legacy, via, atol=1e-6) and torch.allclose(legacy, margin, rtol=1e-5, atol=1e-7)
    # by default the map is the same, masked to the body (here a random input's dense voxels)
    masked = explain(pr, x, "gradcam", {"target": "pathology"})
    body = body_mask(pr, x)
    assert 0 < int(body.sum()) < body.numel() and masked.outside_body_fraction is not None
    torch.testing.assert_close(masked.map, torch.where(body, legacy, torch.zeros(())), atol=1e-6, rtol=0)
    l3 = explain(pr, x, "gradcam", {"layer": "layer3"}).map
    assert l3.shape == legacy.shape and bool(torch.isfinite(l3).all())


def _region_input() -> torch.Tensor:
    """A volume whose BOX lies clearly above the air baseline (inputs of the region model's tests)."""
    x = _volume(seed=5)
    x[0, 0][BOX] = x[0, 0][BOX].abs() * 0.5 + 0.2
    return x


def test_exact_attributions_of_a_region_model(region_predictor: Predictor) -> None:
    """Mean over a box of N voxels: gradient 1/N inside, 0 outside; IG = (x - baseline)/N; occlusion."""
    x = _region_input()
    inside = _inside((SIZE,) * 3)
    n = int(inside.sum())
    xs = x[0, 0].numpy()

    sal = explain(region_predictor, x, "saliency", {"smooth_voxels": 0}).map.numpy()
    np.testing.assert_allclose(sal[inside], 1.0 / n, rtol=1e-5)
    assert np.all(sal[~inside] == 0)

    raw = {"steps": 3, "smooth_voxels": 0}
    ig = explain(region_predictor, x, "integrated_gradients", {**raw, "sign": "signed"}).map.numpy()
    np.testing.assert_allclose(ig[inside], (xs[inside] + 1.0) / n, rtol=1e-4)
    assert np.all(ig[~inside] == 0)
    # completeness: the attributions sum to f(x) - f(baseline)
    assert ig.sum() == pytest.approx(float(xs[inside].mean()) + 1.0, rel=1e-4)

    body = explain(region_predictor, x, "integrated_gradients", {**raw, "baseline": "body_mean"})
    in_body = xs > -1 + 1e-3
    expected = np.where(inside, np.clip((xs - xs[in_body].mean()) / n, 0, None), 0)
    np.testing.assert_allclose(body.map.numpy(), expected, atol=1e-7)

    occ = explain(region_predictor, x, "occlusion", {"window": 4}).map.numpy()
    assert np.all(occ[inside] > 0) and np.all(occ[~inside] == 0)
    # window = stride: each voxel gets the score drop of its one patch, Σ(x + 1)/N over the patch
    patch = (slice(8, 12), slice(16, 20), slice(4, 8))
    np.testing.assert_allclose(occ[patch], float((xs[patch] + 1).sum()) / n, rtol=1e-4)


def test_gaussian_smoothing_kernel() -> None:
    """A normalised separable Gaussian: an impulse keeps its mass and peak; a constant stays constant."""
    sigma = 1.5
    impulse = torch.zeros(1, 1, 21, 21, 21)
    impulse[0, 0, 10, 9, 11] = 1.0
    out = gaussian_smooth(impulse, sigma)[0, 0]
    taps = np.exp(-0.5 * (np.arange(-5, 6) / sigma) ** 2)  # radius ceil(3σ) = 5
    k = taps / taps.sum()
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(out[10, 9, 11]) == pytest.approx(float(k[5] ** 3), rel=1e-5)
    assert float(out[10, 9, 13]) == pytest.approx(float(k[5] ** 2 * k[7]), rel=1e-5)
    assert float(out[10, 9, 17]) == 0.0  # truncated at 3σ
    assert tuple(int(v) for v in np.unravel_index(int(out.argmax()), out.shape)) == (10, 9, 11)
    flat = torch.full((1, 1, 6, 7, 8), 0.25)  # replicated edges: no darkened border
    torch.testing.assert_close(gaussian_smooth(flat, 3.0), flat)
    assert gaussian_smooth(impulse, 0.0) is impulse


def test_gradient_maps_are_smoothed_before_the_sign(region_predictor: Predictor) -> None:
    """IG/saliency with ``smooth_voxels`` equal the raw signed map, blurred, then signed."""
    x = _region_input()
    ig = {"steps": 3, "smooth_voxels": 0, "sign": "signed"}
    raw = explain(region_predictor, x, "integrated_gradients", ig, mask_body=False).map
    smoothed = explain(
        region_predictor,
        x,
        "integrated_gradients",
        {**ig, "smooth_voxels": 2, "sign": "positive"},
        mask_body=False,
    )
    expected = gaussian_smooth(raw[None, None], 2.0)[0, 0].clamp_min(0.0)
    torch.testing.assert_close(smoothed.map, expected, rtol=1e-5, atol=1e-9)
    assert smoothed.params["smooth_voxels"] == 2.0
    # the default smooths too: the box's mass spreads past its edge
    corner = tuple(s.stop for s in BOX)
    assert explain(region_predictor, x, "integrated_gradients", {"steps": 3}, mask_body=False).map[corner] > 0
    sal_raw = explain(region_predictor, x, "saliency", {"smooth_voxels": 0}, mask_body=False).map
    sal = explain(region_predictor, x, "saliency", {"smooth_voxels": 3.5}, mask_body=False).map
    torch.testing.assert_close(sal, gaussian_smooth(sal_raw[None, None], 3.5)[0, 0], rtol=1e-5, atol=1e-9)


def test_integrated_gradients_completeness_on_a_resnet(predictor: Predictor) -> None:
    x = _volume(seed=6)
    ig = explain(
        predictor,
        x,
        "integrated_gradients",
        {"steps": 48, "internal_batch_size": 16, "sign": "signed", "smooth_voxels": 0},
        mask_body=False,  # completeness holds for the method's map, not for its body-masked part
    )
    margins = predictor.margins(predictor.logits(torch.cat([x, torch.full_like(x, -1.0)])))
    delta = float(margins[0] - margins[1])
    assert float(ig.map.double().sum()) == pytest.approx(delta, rel=0.05, abs=1e-3)


def test_explain_takes_one_volume_of_the_model_size(predictor: Predictor) -> None:
    with pytest.raises(ValueError, match="one volume"):
        explain(predictor, torch.zeros(2, 1, SIZE, SIZE, SIZE), "saliency")
    with pytest.raises(ValueError, match="expected a batch of shape"):
        explain(predictor, torch.zeros(1, 1, SIZE, SIZE, SIZE + 1), "saliency")
