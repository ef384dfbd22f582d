"""Tests of ml.model.network: shapes, MedicalNet parameter layout, shortcut A, freezing, channels_last_3d."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ml.model import BLOCKS, ModelSpec
from ml.model.network import STAGES, ResNet3D, build_model, freeze_stages, set_frozen_bn_eval

ARCHS = ("resnet10", "resnet18", "resnet34", "resnet50")
X = torch.randn(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))


def _bn(c: int) -> int:
    return 2 * c  # weight + bias (running stats are buffers, not parameters)


def expected_params(arch: str, num_classes: int = 2, in_channels: int = 1, shortcut: str = "B") -> int:
    """Parameter count of MedicalNet's layout, from the layer formulas (conv k³·cin·cout, no bias)."""
    bottleneck = arch == "resnet50"
    expansion = 4 if bottleneck else 1
    total = 7**3 * in_channels * 64 + _bn(64)  # conv1 + bn1
    cin = 64
    for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), BLOCKS[arch], strict=True)):
        stride = 1 if stage == 0 else 2
        cout = planes * expansion
        for i in range(n):
            if bottleneck:
                total += cin * planes + _bn(planes) + 27 * planes * planes + _bn(planes)
                total += planes * cout + _bn(cout)
            else:
                total += 27 * cin * planes + _bn(planes) + 27 * planes * planes + _bn(planes)
            if i == 0 and (stride != 1 or cin != cout) and shortcut == "B":
                total += cin * cout + _bn(cout)  # 1×1×1 conv + BN
            cin = cout
    return total + cin * num_classes + num_classes  # fc


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch", ARCHS)
def test_parameter_count_matches_medicalnet_layout(arch: str) -> None:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = build_model(ModelSpec(arch=arch))
    assert _count(model) == expected_params(arch)
    with torch.device("meta"):
        model_a = build_model(ModelSpec(arch=arch, shortcut_type="A", num_classes=3, in_channels=2))
    assert _count(model_a) == expected_params(arch, num_classes=3, in_channels=2, shortcut="A")


def test_known_totals() -> None:
    """Literal totals guard the formula itself (MedicalNet backbone + 2-class head, shortcut B)."""
    assert expected_params("resnet10") == 14_356_546
    assert expected_params("resnet18") == 33_161_026
    assert expected_params("resnet34") == 63_470_658
    assert expected_params("resnet50") == 46_159_170


@pytest.mark.parametrize("arch", ARCHS)
def test_output_shapes(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch=arch)).eval()
    with torch.no_grad():
        logits = model(X)
        feats = model.features(X)
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    width = 2048 if arch == "resnet50" else 512
    assert feats.shape == (2, width, 1, 1, 1)  # 32 voxels / 32 (total stride)


def test_shortcut_a_has_no_downsample_params_and_runs() -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch="resnet18", shortcut_type="A")).eval()
    assert not [n for n, _ in model.named_parameters() if "downsample" in n]
    assert model.layer2[0].downsample is not None  # parameter-free, but present
    with torch.no_grad():
        out = model(torch.randn(1, 1, 24, 40, 32))  # non-cubic input
    assert out.shape == (1, 2)
    b = build_model(ModelSpec(arch="resnet18", shortcut_type="B"))
    names_b = {n for n, _ in b.named_parameters() if "downsample" in n}
    assert names_b == {
        f"layer{i}.0.downsample.{j}.{p}"
        for i in (2, 3, 4)
        for j, p in ((0, "weight"), (1, "weight"), (1, "bias"))
    }


def test_freeze_stages_freezes_exactly_the_named_stages() -> None:
    model = build_model(ModelSpec(arch="resnet10", widths=(8, 8, 8, 8)))
    frozen = freeze_stages(model, ["stem", "layer1", "layer3"])
    prefixes = ("conv1.", "bn1.", "layer1.", "layer3.")
    want = {n for n, _ in model.named_parameters() if n.startswith(prefixes)}
    assert set(frozen) == want and len(frozen) == len(want)
    for n, p in model.named_parameters():
        assert p.requires_grad == (n not in want), n
    model.train()
    set_frozen_bn_eval(model)
    assert not model.bn1.training and not model.layer1[0].bn1.training
    assert model.layer2[0].bn1.training and model.layer4[0].bn2.training
    with pytest.raises(ValueError, match="unknown stage"):
        freeze_stages(model, ["layer5"])
    assert STAGES == ("stem", "layer1", "layer2", "layer3", "layer4", "fc")


def test_channels_last_3d_gives_the_same_output() -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch="resnet10")).eval()
    with torch.no_grad():
        ref = model(X)
        model_cl = model.to(memory_format=torch.channels_last_3d)
        out = model_cl(X.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_spec_validation_and_round_trip() -> None:
    spec = ModelSpec(arch="resnet50", num_classes=3, shortcut_type="A", widths=(8, 16, 32, 64))
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    with torch.device("meta"):
        default = build_model()
    assert isinstance(default, ResNet3D) and default.spec == ModelSpec()
    with pytest.raises(ValueError, match="unknown arch"):
        ModelSpec(arch="resnet101")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shortcut_type"):
        ModelSpec(shortcut_type="C")  # type: ignore[arg-type]


def test_dilated_layout_keeps_the_parameters_and_an_input_over_8_grid() -> None:
    plain = build_model(ModelSpec(arch="resnet18", widths=(8, 16, 32, 64)))
    dil = build_model(ModelSpec(arch="resnet18", widths=(8, 16, 32, 64), dilated=True))
    shapes = {n: p.shape for n, p in plain.state_dict().items()}
    # same parameters: MedicalNet checkpoints load into either layout
    assert {n: p.shape for n, p in dil.state_dict().items()} == shapes
    x = torch.randn(1, 1, 64, 48, 32)
    with torch.no_grad():
        assert tuple(plain.eval().features(x).shape[2:]) == (2, 2, 1)
        assert tuple(dil.eval().features(x).shape[2:]) == (8, 6, 4)
        assert dil(x).shape == (1, 2)
    assert dil.layer4[0].conv1.dilation == (4, 4, 4) and dil.layer3[1].conv2.dilation == (2, 2, 2)
    spec = ModelSpec(arch="resnet10", dilated=True)
    assert ModelSpec.from_dict(spec.to_dict()) == spec and not ModelSpec.from_dict({}).dilated
