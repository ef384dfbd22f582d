"""Architecture of a classifier: everything needed to rebuild the network before loading weights.

Torch-free: the manifest (:mod:`ml.model.manifest`) records a :class:`ModelSpec`
per model and is read by processes without torch; the network itself is built
from it by :func:`ml.model.network.build_model`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = ["BLOCKS", "Arch", "ModelSpec", "ShortcutType"]

Arch = Literal["resnet10", "resnet18", "resnet34", "resnet50"]
ShortcutType = Literal["A", "B"]

BLOCKS: dict[str, tuple[int, int, int, int]] = {
    "resnet10": (1, 1, 1, 1),
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
    "resnet50": (3, 4, 6, 3),
}


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of a classifier (everything needed to rebuild it before loading weights)."""

    arch: Arch = "resnet34"
    num_classes: int = 2
    in_channels: int = 1
    shortcut_type: ShortcutType = "B"
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    #: MedicalNet's original dilated stages: layer3/layer4 at stride 1 with dilation 2/4,
    #: so the last feature map is input/8 voxels per side instead of input/32
    dilated: bool = False

    def __post_init__(self) -> None:
        if self.arch not in BLOCKS:
            raise ValueError(f"unknown arch {self.arch!r}; choose from {sorted(BLOCKS)}")
        if self.shortcut_type not in ("A", "B"):
            raise ValueError("shortcut_type must be 'A' or 'B'")
        if self.num_classes < 1 or self.in_channels < 1:
            raise ValueError("num_classes and in_channels must be positive")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        w = d.get("widths", (64, 128, 256, 512))
        return cls(
            arch=d.get("arch", "resnet34"),
            num_classes=int(d.get("num_classes", 2)),
            in_channels=int(d.get("in_channels", 1)),
            shortcut_type=d.get("shortcut_type", "B"),
            widths=(int(w[0]), int(w[1]), int(w[2]), int(w[3])),
            dilated=bool(d.get("dilated", False)),
        )
