"""Settings of the seed preprocessing pipeline (they travel in the weights manifest)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["PreprocessConfig", "Size3"]

Size3 = tuple[int, int, int]

_INTERPOLATIONS = ("linear", "nearest")
_RESIZE_MODES = ("trilinear", "nearest-exact")


@dataclass(frozen=True)
class PreprocessConfig:
    """Settings of the seed pipeline; they travel in the weights manifest.

    Attributes:
        target_size: model input size (D, H, W) = (z, y, x) in voxels.
        spacing_mm: intermediate grid pitch in mm along (x, y, z).
        hu_window: (low, high) HU clip window, mapped linearly to [-1, 1].
        body_threshold_hu: voxels with HU strictly above this are "body" for the crop.
        crop_margin_voxels: margin (voxels of the intermediate grid) added on each
            side of the body box before clamping to the grid.
        outside_value_hu: HU given to intermediate-grid points outside the source
            (air; must not be 0 or a phantom slab of water survives the crop).
        interpolation: resampling interpolator, "linear" (seed) or "nearest".
        resize_mode: torch resize mode, "trilinear" (seed, align_corners=False)
            or "nearest-exact".
    """

    target_size: Size3 = (256, 256, 256)
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    hu_window: tuple[float, float] = (-1000.0, 600.0)
    body_threshold_hu: float = -1000.0
    crop_margin_voxels: int = 5
    outside_value_hu: float = -1024.0
    interpolation: str = "linear"
    resize_mode: str = "trilinear"

    def __post_init__(self) -> None:
        if len(self.target_size) != 3 or any(int(s) < 1 for s in self.target_size):
            raise ValueError(f"target_size must be 3 positive ints (D, H, W), got {self.target_size}")
        if len(self.spacing_mm) != 3 or any(not (s > 0 and math.isfinite(s)) for s in self.spacing_mm):
            raise ValueError(f"spacing_mm must be 3 positive numbers, got {self.spacing_mm}")
        if not self.hu_window[0] < self.hu_window[1]:
            raise ValueError(f"hu_window must be (low, high) with low < high, got {self.hu_window}")
        if self.crop_margin_voxels < 0:
            raise ValueError("crop_margin_voxels must be >= 0")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got {self.interpolation!r}")
        if self.resize_mode not in _RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {_RESIZE_MODES}, got {self.resize_mode!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (lists for tuples)."""
        return {
            "target_size": list(self.target_size),
            "spacing_mm": list(self.spacing_mm),
            "hu_window": list(self.hu_window),
            "body_threshold_hu": self.body_threshold_hu,
            "crop_margin_voxels": self.crop_margin_voxels,
            "outside_value_hu": self.outside_value_hu,
            "interpolation": self.interpolation,
            "resize_mode": self.resize_mode,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`; missing keys take the seed defaults, unknown keys are refused."""
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown preprocessing keys: {sorted(unknown)}")
        kw: dict[str, Any] = {}
        if "target_size" in d:
            ts = d["target_size"]
            kw["target_size"] = (int(ts[0]), int(ts[1]), int(ts[2]))
        if "spacing_mm" in d:
            sp = d["spacing_mm"]
            kw["spacing_mm"] = (float(sp[0]), float(sp[1]), float(sp[2]))
        if "hu_window" in d:
            kw["hu_window"] = (float(d["hu_window"][0]), float(d["hu_window"][1]))
        for key in ("body_threshold_hu", "outside_value_hu"):
            if key in d:
                kw[key] = float(d[key])
        if "crop_margin_voxels" in d:
            kw["crop_margin_voxels"] = int(d["crop_margin_voxels"])
        for key in ("interpolation", "resize_mode"):
            if key in d:
                kw[key] = str(d[key])
        return cls(**kw)
