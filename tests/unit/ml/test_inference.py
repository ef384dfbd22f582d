"""Predictor (ml.inference) and gradcam_peak (ml.explain.methods) on a tiny ResNet-10 at 32³/64³ on CPU."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ml.errors import ModelUnavailable
from ml.explain.methods import gradcam_peak
from ml.geometry import CTVolume, VolumeGeometry
from ml.inference import Predictor
from ml.model import Manifest, ModelEntry, ModelSpec, OperatingPoint
from ml.model.checkpoint import save_weights
from ml.model.network import ResNet3D, build_model
from ml.preprocess import PreprocessConfig

SIZE = 32


def tiny_entry(
    size: int = SIZE,
    temperature: float = 1.0,
    thresholds: dict[str, float] | None = None,
    default: str = "balanced",
    sha256: str | None = None,
    uri: str = "tiny.pt",
) -> ModelEntry:
    thresholds = thresholds or {"balanced": 0.5, "high_sensitivity": 0.2, "high_specificity": 0.8}
    return ModelEntry(
        name="tiny",
        version="0.0.1",
        spec=ModelSpec(arch="resnet10"),
        input_size=(size, size, size),
        preprocess=PreprocessConfig(target_size=(size, size, size)),
        operating_points={k: OperatingPoint(t, 0.9, 0.9) for k, t in thresholds.items()},
        default_operating_point=default,
        uri=uri,
        sha256=sha256,
        calibration={"method": "temperature", "temperature": temperature},
    )


def tiny_model(seed: int = 0) -> ResNet3D:
    torch.manual_seed(seed)
    return build_model(ModelSpec(arch="resnet10")).eval()


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(tiny_entry(), tiny_model(), device="cpu")


def _batch(n: int, seed: int = 1, size: int = SIZE) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 1, size, size, size), generator=g) * 2 - 1


def test_model_is_eval_channels_last_fp32_on_cpu(predictor: Predictor) -> None:
    assert predictor.device.type == "cpu" and not predictor.uses_amp
    assert not predictor.model.training
    w = predictor.model.conv1.weight
    assert w.dtype == torch.float32
    assert w.is_contiguous(memory_format=torch.channels_last_3d)
    assert predictor.preprocess_config is predictor.entry.preprocess


def test_cpu_predictions_are_bit_identical(predictor: Predictor) -> None:
    x = _batch(2)
    a, b = predictor.logits(x), predictor.logits(x.clone())
    assert torch.equal(a, b)
    assert predictor.predict(x) == predictor.predict(x.clone())


def test_single_and_batched_agree(predictor: Predictor) -> None:
    x = _batch(2, seed=3)
    alone = predictor.predict(x[:1])[0]
    batched = predictor.predict(x)
    assert abs(alone.probability - batched[0].probability) < 1e-5
    assert abs(alone.logit - batched[0].logit) < 1e-4
    other = predictor.predict(x[1:])[0]
    assert abs(other.probability - batched[1].probability) < 1e-5


def test_probability_is_temperature_scaled_softmax(predictor: Predictor) -> None:
    x = _batch(1, seed=5)
    logits = predictor.logits(x)[0].double()
    softmax = torch.softmax(logits, dim=0)[1].item()
    p1 = predictor.predict(x)[0]
    assert p1.logit == pytest.approx((logits[1] - logits[0]).item(), abs=1e-9)
    assert p1.probability == pytest.approx(softmax, abs=1e-9)
    hot = Predictor(tiny_entry(temperature=3.0), predictor.model, device="cpu").predict(x)[0]
    assert hot.logit == p1.logit  # calibration does not touch the raw logit
    assert hot.probability == pytest.approx(1 / (1 + math.exp(-p1.logit / 3.0)), abs=1e-9)
    assert torch.softmax(logits / 3.0, dim=0)[1].item() == pytest.approx(hot.probability, abs=1e-9)
    assert abs(hot.probability - 0.5) < abs(p1.probability - 0.5)  # T > 1 softens
    assert hot.model_name == "tiny" and hot.model_version == "0.0.1"


def test_decisions_follow_thresholds_including_the_boundary(predictor: Predictor) -> None:
    x = _batch(1, seed=7)
    p = predictor.predict(x)[0].probability
    thresholds = {"at": p, "below": max(0.0, p - 0.01), "above": min(1.0, p + 0.01)}
    for default in thresholds:
        pr = Predictor(tiny_entry(thresholds=thresholds, default=default), predictor.model, device="cpu")
        pred = pr.predict(x)[0]
        assert pred.decisions == {"at": True, "below": True, "above": p + 0.01 > 1.0}
        assert pred.label == ("pathology" if pred.decisions[default] else "normal")


@pytest.mark.parametrize(
    "shape", [(1, 1, SIZE, SIZE, SIZE + 1), (1, SIZE, SIZE, SIZE), (1, 2, SIZE, SIZE, SIZE)]
)
def test_shape_is_checked_against_the_manifest(predictor: Predictor, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="expected a batch of shape"):
        predictor.predict(torch.zeros(shape))


def _failing_cuda_move(model: ResNet3D) -> None:
    real_to = model.to

    def to(*args: Any, **kwargs: Any) -> Any:
        dev = kwargs.get("device", args[0] if args else None)
        if dev is not None and torch.device(dev).type == "cuda":
            raise RuntimeError("CUDA driver initialization failed")
        return real_to(*args, **kwargs)

    model.to = to  # type: ignore[method-assign]


def test_auto_falls_back_to_cpu_when_cuda_fails(monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    model = tiny_model()
    _failing_cuda_move(model)
    with caplog.at_level(logging.WARNING, logger="ml.inference"):
        pr = Predictor(tiny_entry(), model, device="auto")
    assert pr.device.type == "cpu"
    assert any("falling back to CPU" in r.getMessage() for r in caplog.records)
    assert len(pr.predict(_batch(1))) == 1


def test_explicit_cuda_that_fails_is_model_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    model = tiny_model()
    _failing_cuda_move(model)
    with pytest.raises(ModelUnavailable, match="cannot place the model"):
        Predictor(tiny_entry(), model, device="cuda")


def test_from_manifest_loads_verified_weights(tmp_path: Path) -> None:
    model = tiny_model(seed=4)
    sha = save_weights(model, tmp_path / "tiny.pt", dtype="float32")
    Manifest(entries={"tiny": tiny_entry(sha256=sha)}, default="tiny").save(tmp_path / "manifest.json")
    pr = Predictor.from_manifest(tmp_path / "manifest.json", device="cpu")
    x = _batch(1, seed=9)
    direct = Predictor(tiny_entry(sha256=sha), model, device="cpu").predict(x)[0]
    assert pr.predict(x)[0] == direct
    assert direct.model_sha256 == sha
    with pytest.raises(ModelUnavailable, match="unknown model"):
        Predictor.from_manifest(tmp_path / "manifest.json", "nope", device="cpu")
    (tmp_path / "tiny.pt").write_bytes(b"tampered")
    with pytest.raises(ModelUnavailable, match="sha256"):
        Predictor.from_manifest(tmp_path / "manifest.json", device="cpu")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ModelUnavailable, match="manifest"):
        Predictor.from_manifest(tmp_path / "bad.json", device="cpu")


def test_predict_volume_uses_the_manifest_preprocessing(predictor: Predictor) -> None:
    hu = np.full((20, 24, 24), -1024.0, dtype=np.float32)
    hu[4:16, 6:18, 5:19] = 40.0
    geom = VolumeGeometry(size=(24, 24, 20), spacing_mm=(4.0, 4.0, 5.0), origin_mm=(0.0, 0.0, 0.0))
    pred, res = predictor.predict_volume(CTVolume.from_hu(hu, geom))
    assert tuple(res.tensor.shape) == (1, 1, SIZE, SIZE, SIZE)
    assert res.geometry.model_size_zyx == (SIZE, SIZE, SIZE)
    assert pred == predictor.predict(res.tensor, [res.geometry.model_voxel_mm()])[0]


def test_gradcam_peak_finds_planted_layer4_hot_spot_and_leaves_no_gradients() -> None:
    """layer4's output is replaced by a map that is hot in one cell of its 2³ grid (64³ input)."""
    model = tiny_model(seed=2)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.weight[1].fill_(1.0)  # positive Grad-CAM weights for every channel
    pr = Predictor(tiny_entry(size=64), model, device="cpu")
    planted = torch.zeros(1, 512, 2, 2, 2)
    planted[:, :, 1, 0, 1] = 1.0  # cell (z=1, y=0, x=1) → voxels z≥32, y<32, x≥32

    def hook(_m: torch.nn.Module, _i: Any, out: torch.Tensor) -> torch.Tensor:
        return out * 0 + planted.to(out.dtype)

    handle = model.layer4.register_forward_hook(hook)
    try:
        assert torch.is_grad_enabled()
        (z, y, x), value = gradcam_peak(pr, _batch(1, size=64))
        assert torch.is_grad_enabled()
        with torch.no_grad():
            (z2, y2, x2), value2 = gradcam_peak(pr, _batch(1, seed=2, size=64))
            assert not torch.is_grad_enabled()  # restored, not forced on
    finally:
        handle.remove()
    assert z >= 32 and y < 32 and x >= 32 and value > 0
    # the same plateau for another input; its first voxel inside the body (dense voxels) may differ
    assert z2 >= 32 and y2 < 32 and x2 >= 32 and value2 == pytest.approx(value)
    assert not model.training
    assert all(p.grad is None for p in model.parameters())


def test_gradcam_peak_on_a_plain_model_returns_a_voxel_inside(predictor: Predictor) -> None:
    (z, y, x), value = gradcam_peak(predictor, _batch(1, seed=11))
    assert 0 <= z < SIZE and 0 <= y < SIZE and 0 <= x < SIZE
    assert value >= 0 and math.isfinite(value)
    assert all(p.grad is None for p in predictor.model.parameters())
    with pytest.raises(ValueError):
        gradcam_peak(predictor, _batch(2))


def test_bench_inference_smoke(tmp_path: Path) -> None:
    """bench/inference.py runs end to end at a tiny size and writes its JSON (no timing assertions)."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[3]
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(root / "bench" / "inference.py"), "--skip-prod", "--demo-size", "16"]
    cmd += ["--iters", "1", "--warmup", "0", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "contig/cl3d" in proc.stdout and "resnet10" in proc.stdout
    rep = json.loads(out.read_text())
    assert [r["channels_last_3d"]["batch"] for r in rep["results"]] == [1, 2, 4]
    assert all(r["contiguous_over_channels_last"] > 0 for r in rep["results"])
