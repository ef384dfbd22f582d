"""Plain, obviously-correct implementation of the seed preprocessing pipeline.

Deliberately naive (full HU copy, full resample, boolean mask of the whole
grid): it is the yardstick that ``ml.preprocess.preprocess`` must match and the
baseline that ``bench/preprocess.py`` times. Do not optimise it.

Imported by the tests and the benchmark from its file path (``tests/`` is not a
package).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk  # noqa: N813
import torch
import torch.nn.functional as F

from ml.errors import InputError
from ml.geometry import CTVolume

Box = tuple[tuple[int, int, int], tuple[int, int, int]]


def reference_preprocess(
    volume: CTVolume,
    target_size: tuple[int, int, int] = (256, 256, 256),
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
    hu_window: tuple[float, float] = (-1000.0, 600.0),
    body_threshold_hu: float = -1000.0,
    crop_margin_voxels: int = 5,
    outside_value_hu: float = -1024.0,
    interpolation: str = "linear",
) -> tuple[torch.Tensor, Box]:
    """Return (tensor [1, 1, D, H, W] float32, crop box ((z0, y0, x0), (z1, y1, x1)) stop exclusive).

    ``target_size`` is (D, H, W); ``spacing_mm`` is (x, y, z).
    """
    # 1. HU
    hu = volume.hu()  # float32 (z, y, x)

    # 2. SimpleITK image with the series geometry
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing(volume.geometry.spacing_mm)
    img.SetOrigin(volume.geometry.origin_mm)
    img.SetDirection(volume.geometry.direction)

    # 3. resample the whole volume to the 1 mm grid
    in_size = img.GetSize()
    in_spacing = img.GetSpacing()
    out_size = [max(1, round(in_size[k] * in_spacing[k] / spacing_mm[k])) for k in range(3)]
    interp = sitk.sitkLinear if interpolation == "linear" else sitk.sitkNearestNeighbor
    res = sitk.Resample(
        img,
        out_size,
        sitk.Transform(),
        interp,
        img.GetOrigin(),
        spacing_mm,
        img.GetDirection(),
        outside_value_hu,
        sitk.sitkFloat32,
    )
    arr = sitk.GetArrayFromImage(res)  # (z, y, x)

    # 4. body box (HU > threshold) ± margin, clamped
    mask = arr > body_threshold_hu
    if not mask.any():
        raise InputError("no_usable_series", "empty body mask")
    idx = np.argwhere(mask)
    start = np.maximum(idx.min(axis=0) - crop_margin_voxels, 0)
    stop = np.minimum(idx.max(axis=0) + crop_margin_voxels + 1, np.asarray(arr.shape))
    crop = arr[start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]]

    # 5. clip and scale to [-1, 1]
    lo, hi = hu_window
    crop = np.clip(crop, lo, hi)
    crop = (crop - lo) / (hi - lo) * 2.0 - 1.0
    crop = crop.astype(np.float32)

    # 6. resize
    t = torch.from_numpy(np.ascontiguousarray(crop))[None, None]
    out = F.interpolate(t, size=tuple(target_size), mode="trilinear", align_corners=False)
    box: Box = (
        (int(start[0]), int(start[1]), int(start[2])),
        (int(stop[0]), int(stop[1]), int(stop[2])),
    )
    return out.contiguous(), box


def reference_from_config(volume: CTVolume, config: Any) -> tuple[torch.Tensor, Box]:
    """Run :func:`reference_preprocess` with the fields of an ``ml.preprocess.PreprocessConfig``."""
    return reference_preprocess(
        volume,
        target_size=tuple(config.target_size),
        spacing_mm=tuple(config.spacing_mm),
        hu_window=tuple(config.hu_window),
        body_threshold_hu=config.body_threshold_hu,
        crop_margin_voxels=config.crop_margin_voxels,
        outside_value_hu=config.outside_value_hu,
        interpolation=config.interpolation,
    )
