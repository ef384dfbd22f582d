"""Grad-CAM fused with the prediction's forward pass: the same logits, features and maps as apart."""

from __future__ import annotations

import pytest
import torch
from test_inference import tiny_entry, tiny_model
from test_preprocess import CASES, make_volume

from ml.explain.fused import can_fuse, forward_with_gradcam
from ml.explain.methods import explain
from ml.inference import Predictor


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(tiny_entry(), tiny_model(seed=3), device="cpu")


def test_one_pass_equals_prediction_and_gradcam_apart(predictor: Predictor) -> None:
    vols = [
        make_volume(CASES[name][0], **CASES[name][1]) for name in ("axial_identity_int16", "coronal_uint16")
    ]
    results = [predictor.predict_volume(v)[1] for v in vols]
    batch = torch.cat([r.tensor for r in results], 0)
    voxel_mm = [r.geometry.model_voxel_mm() for r in results]

    fused = forward_with_gradcam(predictor, batch)
    logits, feats = predictor.logits_and_features(batch)
    torch.testing.assert_close(fused.logits, logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused.features, feats, rtol=1e-5, atol=1e-5)
    for i, r in enumerate(results):
        apart = explain(predictor, r.tensor, "gradcam", mask_body=False)
        assert fused.maps[i].shape == apart.map.shape
        torch.testing.assert_close(fused.maps[i], apart.map, rtol=1e-4, atol=1e-6 * float(apart.map.max()))
        masked = explain(predictor, r.tensor, "gradcam", raw_map=fused.maps[i])
        reference = explain(predictor, r.tensor, "gradcam")
        torch.testing.assert_close(
            masked.map, reference.map, rtol=1e-4, atol=1e-6 * float(reference.map.max())
        )
        assert masked.outside_body_fraction == pytest.approx(reference.outside_body_fraction, abs=1e-5)

    with torch.inference_mode():
        one = predictor.predict(batch, voxel_mm, forward=(fused.logits, fused.features))
        two = predictor.predict(batch, voxel_mm)
    for a, b in zip(one, two, strict=True):
        assert a.label == b.label and a.probability == pytest.approx(b.probability, abs=1e-6)
    # architecture rule 8: nothing left behind
    assert all(p.grad is None and p.requires_grad for p in predictor.model.parameters())
    assert not predictor.model.training


def test_only_default_gradcam_on_float32_fuses(predictor: Predictor) -> None:
    assert can_fuse(predictor, "gradcam", {})
    assert can_fuse(predictor, "gradcam", {"nifti": "float32"})
    assert not can_fuse(predictor, "gradcam", {"layer": "layer3"})
    assert not can_fuse(predictor, "gradcam", {"target": "pathology"})
    assert not can_fuse(predictor, "integrated_gradients", {})
    assert not can_fuse(predictor, "none", {})
