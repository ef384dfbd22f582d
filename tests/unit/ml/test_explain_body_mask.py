"""Saliency inside the patient: the body mask of the model input (ml.body) and its use by ml.explain.

A synthetic chest in model space (64³): an elliptic soft-tissue body with two
air-density lungs and a trachea that leaves the top of the scan, air above the
patient and a table behind it, scaled to [-1, 1] with the default HU window.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from test_inference import tiny_entry, tiny_model

from ml.body import BODY_HU, body_masks, hu_to_input, input_body_mask, input_to_hu
from ml.explain.methods import body_mask, explain, gradcam_map, gradcam_peak, mask_to_body
from ml.inference import Predictor
from ml.preprocess import PreprocessConfig

SIZE = 64
WINDOW = PreprocessConfig().hu_window  # what tiny_entry's predictor scales with

Array = np.ndarray[Any, Any]


def _chest() -> tuple[Array, dict[str, Array]]:
    """HU (z, y, x) of the synthetic chest and its parts as boolean masks (y grows posteriorly)."""
    z, y, x = np.mgrid[0:SIZE, 0:SIZE, 0:SIZE]
    hu = np.full((SIZE,) * 3, -1000.0, dtype=np.float32)
    body = ((y - 46) / 14.0) ** 2 + ((x - 32) / 26.0) ** 2 <= 1.0  # y 32..60: air above (y < 32)
    lungs = np.zeros_like(body)
    for cx in (20, 44):
        lungs |= (((y - 46) / 8.0) ** 2 + ((x - cx) / 8.0) ** 2 <= 1.0) & (z >= 8) & (z < 56)
    trachea = (abs(y - 42) <= 1) & (abs(x - 32) <= 1) & (z < 30)  # open to the top of the scan in 3-D
    table = (y >= 62) & (x >= 8) & (x < 56)  # behind the back, apart from the body (air at y = 61)
    hu[body] = 40.0
    hu[lungs | trachea] = -850.0
    hu[table] = 200.0
    return hu, {"body": body, "lungs": lungs, "trachea": trachea, "table": table}


def _input(hu: Array) -> torch.Tensor:
    lo, hi = WINDOW
    x = (np.clip(hu, lo, hi) - lo) / (hi - lo) * 2.0 - 1.0
    return torch.from_numpy(x.astype(np.float32))[None, None]


def test_hu_and_model_input_convert_both_ways() -> None:
    assert hu_to_input(-1000.0, WINDOW) == -1.0 and hu_to_input(600.0, WINDOW) == 1.0
    x = np.array([hu_to_input(v, WINDOW) for v in (-1000.0, BODY_HU, 40.0)], dtype=np.float32)
    np.testing.assert_allclose(input_to_hu(x, WINDOW), [-1000.0, BODY_HU, 40.0], atol=1e-3)


def test_the_filled_body_holds_lungs_and_trachea_not_air_or_table() -> None:
    hu, parts = _chest()
    mask = input_body_mask(_input(hu).numpy(), WINDOW)
    assert mask.shape == (SIZE,) * 3 and mask.dtype == np.bool_
    np.testing.assert_array_equal(mask, parts["body"])  # exactly the body ellipse, holes filled
    assert mask[parts["lungs"]].all() and mask[parts["trachea"]].all()
    assert not mask[parts["table"]].any() and not mask[:, :32].any()  # table, air above the patient
    body, filled = body_masks(hu > BODY_HU)
    np.testing.assert_array_equal(body, parts["body"] & ~parts["lungs"] & ~parts["trachea"])
    np.testing.assert_array_equal(filled, mask)
    assert not input_body_mask(np.full((4, 5, 6), -1.0), WINDOW).any()  # nothing dense: empty
    with pytest.raises(ValueError, match="3-D"):
        body_masks(np.ones((5, 6), dtype=bool))


def test_a_peak_in_the_air_moves_into_the_body_and_the_outside_share_is_reported() -> None:
    _, parts = _chest()
    body = torch.from_numpy(parts["body"])
    m = torch.zeros((SIZE,) * 3)
    m[30:34, 44:48, 18:22] = 1.0  # 64 voxels in the right lung
    m[30:32, 10:12, 30:32] = 5.0  # 8 hotter voxels in the air above the patient
    m[40, 5, 5] = -3.0  # negative attribution is not mass
    masked, outside = mask_to_body(m, body)
    assert outside == pytest.approx(8 * 5.0 / (8 * 5.0 + 64 * 1.0))
    peak = np.unravel_index(int(masked.argmax()), masked.shape)
    assert parts["lungs"][peak] and float(masked.max()) == 1.0
    assert float(masked[~body].abs().max()) == 0.0
    torch.testing.assert_close(masked[body], m[body])


def test_a_map_inside_the_body_is_unchanged() -> None:
    _, parts = _chest()
    body = torch.from_numpy(parts["body"])
    g = torch.Generator().manual_seed(0)
    m = torch.where(body, torch.rand((SIZE,) * 3, generator=g), torch.zeros(()))
    masked, outside = mask_to_body(m, body)
    assert outside == 0.0 and torch.equal(masked, m)
    empty, share = mask_to_body(torch.zeros((SIZE,) * 3), body)  # no positive mass: nothing outside
    assert share == 0.0 and not bool(empty.any())
    unmasked, none = mask_to_body(m + 1.0, torch.zeros_like(body))  # no body found: left as it is
    assert none is None and torch.equal(unmasked, m + 1.0)


@pytest.fixture(scope="module")
def air_hot_predictor() -> Iterator[Predictor]:
    """64³ ResNet-10 whose layer4 (2³ cells of 32 voxels) is hot in the anterior cell (y < 32): air."""
    model = tiny_model(seed=2)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.weight[1].fill_(1.0)  # positive Grad-CAM weights for every channel
    planted = torch.zeros(1, 512, 2, 2, 2)
    planted[:, :, 1, 0, 1] = 1.0  # cell (z ≥ 32, y < 32, x ≥ 32): the air above the patient
    planted[:, :, 1, 1, 1] = 0.25  # weaker heat behind it, in the body

    def hook(_m: torch.nn.Module, _i: Any, out: torch.Tensor) -> torch.Tensor:
        return out * 0 + planted.to(out.dtype)

    handle = model.layer4.register_forward_hook(hook)
    yield Predictor(tiny_entry(size=SIZE), model, device="cpu")
    handle.remove()


def test_explain_masks_gradcam_to_the_body(air_hot_predictor: Predictor) -> None:
    hu, parts = _chest()
    x = _input(hu)
    raw = explain(air_hot_predictor, x, "gradcam", mask_body=False)
    assert raw.outside_body_fraction is None
    raw_peak = np.unravel_index(int(raw.map.argmax()), raw.map.shape)
    assert raw_peak[1] < 32 and not parts["body"][raw_peak]  # the unmasked peak lies in the air

    out = explain(air_hot_predictor, x, "gradcam")
    body = torch.from_numpy(parts["body"])
    torch.testing.assert_close(body_mask(air_hot_predictor, x), body)
    r = raw.map.double()
    assert out.outside_body_fraction == pytest.approx(float(r[~body].sum() / r.sum()), rel=1e-6)
    assert 0.5 < out.outside_body_fraction < 1.0
    assert out.stats() == {"outside_body_fraction": out.outside_body_fraction}
    torch.testing.assert_close(out.map, torch.where(body, raw.map, torch.zeros(())))
    peak = np.unravel_index(int(out.map.argmax()), out.map.shape)
    assert parts["body"][peak] and float(out.map.max()) > 0
    assert out.params == raw.params  # the stored parameters do not change


def test_the_batch_report_peak_lies_inside_the_body(air_hot_predictor: Predictor) -> None:
    hu, parts = _chest()
    x = _input(hu)
    cam = gradcam_map(air_hot_predictor, x)[0]  # unmasked, as before
    assert not parts["body"][np.unravel_index(int(cam.argmax()), cam.shape)]
    (z, y, xx), value = gradcam_peak(air_hot_predictor, x)
    assert parts["body"][z, y, xx]
    assert value == pytest.approx(float(cam[torch.from_numpy(parts["body"])].max()))
    assert value > 0
