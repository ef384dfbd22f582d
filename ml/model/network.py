"""3-D ResNets in the MedicalNet layout (Chen et al., 2019), with a 2-class head.

Layout (input [B, 1, D, H, W], voxels):
conv1 7×7×7 stride 2 pad 3 → BN → ReLU → maxpool 3 stride 2 pad 1 →
layer1..layer4 (widths 64/128/256/512, strides 1/2/2/2, so the last feature map is
input/32 voxels per side; with ``ModelSpec.dilated`` MedicalNet's original strides
1/2/1/1 with dilation 2 in layer3 and 4 in layer4, input/8 per side, a finer Grad-CAM
grid for ~4× the compute of layers 3–4) →
global average pool → FC → ``num_classes`` logits.

Block counts: ResNet-10 1/1/1/1, -18 2/2/2/2, -34 3/4/6/3 (BasicBlock),
-50 3/4/6/3 (Bottleneck, expansion 4). Shortcut "A" is MedicalNet's parameter-free
shortcut (strided identity + zero channel padding), "B" a 1×1×1 convolution + BN
where the shape changes.

Parameter names follow MedicalNet (``conv1``, ``bn1``, ``layerN.M.conv1`` …,
``downsample.0/1``) so that its checkpoints load by name; its segmentation head
``conv_seg`` is dropped by the loader in :mod:`ml.model.checkpoint`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ml.model.spec import BLOCKS, ModelSpec

__all__ = [
    "STAGES",
    "BasicBlock",
    "Bottleneck",
    "ResNet3D",
    "build_model",
    "freeze_stages",
    "set_frozen_bn_eval",
]

#: names of the freezable stages, lowest first
STAGES: tuple[str, ...] = ("stem", "layer1", "layer2", "layer3", "layer4", "fc")


def _conv3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, kernel_size=3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class _ShortcutA(nn.Module):
    """Parameter-free shortcut: strided subsampling + zero-padding of new channels."""

    def __init__(self, cout: int, stride: int) -> None:
        super().__init__()
        self.cout = cout
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.avg_pool3d(x, kernel_size=1, stride=self.stride)
        pad = self.cout - out.shape[1]
        if pad > 0:
            zeros = torch.zeros((out.shape[0], pad, *out.shape[2:]), dtype=out.dtype, device=out.device)
            out = torch.cat([out, zeros], dim=1)
        return out


class _Block(nn.Module):
    """A residual block: ``relu(residual(x) + shortcut(x))``; subclasses build the residual branch."""

    expansion = 1

    def __init__(
        self,
        cin: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self._build(cin, planes, stride, dilation)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def _build(self, cin: int, planes: int, stride: int, dilation: int) -> None:
        raise NotImplementedError

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        res: torch.Tensor = self.relu(self._residual(x) + identity)
        return res


class BasicBlock(_Block):
    """Two 3×3×3 convolutions (ResNet-10/18/34)."""

    expansion = 1

    def _build(self, cin: int, planes: int, stride: int, dilation: int) -> None:
        self.conv1 = _conv3(cin, planes, stride, dilation)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = _conv3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm3d(planes)

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return out


class Bottleneck(_Block):
    """1×1×1 reduce, 3×3×3, 1×1×1 expand (×4) convolutions (ResNet-50)."""

    expansion = 4

    def _build(self, cin: int, planes: int, stride: int, dilation: int) -> None:
        self.conv1 = nn.Conv3d(cin, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = _conv3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        res: torch.Tensor = self.bn3(self.conv3(out))
        return res


class ResNet3D(nn.Module):
    """A MedicalNet-layout 3-D ResNet classifier; see the module docstring."""

    def __init__(self, spec: ModelSpec | None = None) -> None:
        super().__init__()
        self.spec = spec = spec or ModelSpec()
        block: type[_Block] = Bottleneck if spec.arch == "resnet50" else BasicBlock
        self.conv1 = nn.Conv3d(spec.in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        self._cin = 64
        counts = BLOCKS[spec.arch]
        self.layer1 = self._make_layer(block, spec.widths[0], counts[0], 1)
        self.layer2 = self._make_layer(block, spec.widths[1], counts[1], 2)
        s3, d3, s4, d4 = (1, 2, 1, 4) if spec.dilated else (2, 1, 2, 1)
        self.layer3 = self._make_layer(block, spec.widths[2], counts[2], s3, d3)
        self.layer4 = self._make_layer(block, spec.widths[3], counts[3], s4, d4)
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(spec.widths[3] * block.expansion, spec.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(
        self,
        block: type[_Block],
        planes: int,
        n: int,
        stride: int,
        dilation: int = 1,
    ) -> nn.Sequential:
        cout = planes * block.expansion
        downsample: nn.Module | None = None
        if stride != 1 or self._cin != cout:
            if self.spec.shortcut_type == "A":
                downsample = _ShortcutA(cout, stride)
            else:
                downsample = nn.Sequential(
                    nn.Conv3d(self._cin, cout, kernel_size=1, stride=stride, bias=False), nn.BatchNorm3d(cout)
                )
        layers: list[nn.Module] = [block(self._cin, planes, stride, downsample, dilation)]
        self._cin = cout
        layers += [block(cout, planes, 1, None, dilation) for _ in range(1, n)]
        return nn.Sequential(*layers)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last convolutional feature map [B, C, d, h, w] (the Grad-CAM target layer is ``layer4``)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out: torch.Tensor = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, num_classes] for input [B, C, D, H, W]."""
        logits: torch.Tensor = self.fc(torch.flatten(self.avgpool(self.features(x)), 1))
        return logits

    def stage_modules(self, stage: str) -> list[nn.Module]:
        """Modules of a named stage (see :data:`STAGES`)."""
        if stage == "stem":
            return [self.conv1, self.bn1]
        if stage in STAGES:
            m: nn.Module = getattr(self, stage)
            return [m]
        raise ValueError(f"unknown stage {stage!r}; choose from {STAGES}")


def build_model(spec: ModelSpec | None = None) -> ResNet3D:
    """A freshly initialised classifier for ``spec``."""
    return ResNet3D(spec)


def freeze_stages(model: ResNet3D, stages: Sequence[str]) -> list[str]:
    """Freeze the parameters of ``stages`` (and keep their BatchNorm statistics fixed).

    Returns the names of the frozen parameters. BatchNorm layers of frozen stages
    must also be put in eval mode during training: :func:`set_frozen_bn_eval`.
    """
    frozen: list[str] = []
    names = {id(p): n for n, p in model.named_parameters()}
    for st in stages:
        for mod in model.stage_modules(st):
            for p in mod.parameters():
                p.requires_grad_(False)
                frozen.append(names[id(p)])
    return frozen


def set_frozen_bn_eval(model: nn.Module) -> None:
    """Put BatchNorm layers whose parameters are all frozen in eval mode (fixed running stats)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d) and not any(p.requires_grad for p in m.parameters()):
            m.eval()
