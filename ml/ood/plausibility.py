"""Is this plausibly a chest CT? Checks on the pixels alone (no DICOM tags).

Computed on the model input the worker already has (the preprocessed volume in
[-1, 1] and its voxel size in mm), so it costs one pass over ~2 M voxels:

1. HU are recovered from the model input: ``HU = (x + 1) / 2 · (hi − lo) + lo``
   with the model's HU window ``[lo, hi]``.
2. **Air present at all**: if even the darkest 0.5 % of voxels are denser than
   ``air_hu``, no air is in the field of view, which a CT of a body never
   lacks: the stored values are almost certainly not in HU (a missing or wrong
   RescaleSlope/Intercept) → ``implausible_hu``.
3. **Body**: the largest 3-D connected component of voxels denser than
   ``body_hu`` (soft tissue, fat, bone; lung parenchyma is below it), and the
   body with the holes of each axial slice filled (:func:`ml.body.body_masks`,
   the body that saliency maps are masked to as well).
4. **Lungs**: air-density voxels (``< air_hu``) enclosed by the body *within
   their axial slice* (2-D hole filling per slice, so the trachea that leaves
   the scan does not connect the lungs to outside air). Lungs are present when
   their volume is at least ``min_lung_ml`` and, on the slice where they are
   largest, they fill at least ``min_lung_area_fraction`` of the enclosed body
   cross-section (bowel gas and sinuses stay far below both) → otherwise
   ``no_lungs_found``.
5. **Chest coverage**: the cranio-caudal extent of the slices with at least
   ``min_slice_lung_mm2`` of lung must reach ``min_lung_extent_mm`` →
   otherwise ``incomplete_chest_coverage``.

Reason codes are stable (:data:`PLAUSIBILITY_REASONS`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ml.body import body_masks, input_to_hu
from ml.ood.reasons import INDETERMINATE_REASONS, REASON_OUT_OF_DISTRIBUTION

__all__ = [
    "PLAUSIBILITY_REASONS",
    "PlausibilityConfig",
    "PlausibilityReport",
    "check_plausibility",
    "check_plausibility_hu",
]

PLAUSIBILITY_REASONS: dict[str, str] = {
    k: v for k, v in INDETERMINATE_REASONS.items() if k != REASON_OUT_OF_DISTRIBUTION
}
"""The reasons this check can give (a subset of :data:`ml.ood.reasons.INDETERMINATE_REASONS`)."""


@dataclass(frozen=True)
class PlausibilityConfig:
    """Thresholds of the chest-CT plausibility check (HU, mL, mm², mm).

    Attributes:
        air_hu: voxels below this are air-density (lung parenchyma is about −850 HU).
        body_hu: voxels above this belong to the body (fat about −100 HU).
        min_lung_ml: smallest lung volume (both lungs) of a chest CT, mL.
        min_lung_area_fraction: smallest share of the enclosed body cross-section that
            the lungs fill on their largest slice.
        min_slice_lung_mm2: a slice counts towards the lung extent above this lung area.
        min_lung_extent_mm: smallest cranio-caudal lung extent of a chest CT, mm.
        air_percentile: percentile of the HU histogram that must be below ``air_hu``.
    """

    air_hu: float = -400.0
    body_hu: float = -300.0
    min_lung_ml: float = 250.0
    min_lung_area_fraction: float = 0.15
    min_slice_lung_mm2: float = 400.0
    min_lung_extent_mm: float = 100.0
    air_percentile: float = 0.5


@dataclass(frozen=True)
class PlausibilityReport:
    """What the check measured and the reasons it found (empty = plausible chest CT)."""

    lung_volume_ml: float
    body_volume_ml: float
    max_lung_area_fraction: float
    lung_extent_mm: float
    scan_extent_mm: float
    reasons: tuple[str, ...]

    @property
    def plausible(self) -> bool:
        """True when no reason was found."""
        return not self.reasons

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reasons"] = list(self.reasons)
        return d


def check_plausibility_hu(
    hu: npt.NDArray[Any],
    voxel_mm_zyx: tuple[float, float, float],
    config: PlausibilityConfig | None = None,
) -> PlausibilityReport:
    """Check a HU volume (z, y, x; axial slices along the first axis) with voxel size in mm."""
    cfg = config or PlausibilityConfig()
    if hu.ndim != 3 or min(hu.shape) < 1:
        raise ValueError(f"expected a 3-D volume (z, y, x), got shape {hu.shape}")
    dz, dy, dx = (float(v) for v in voxel_mm_zyx)
    if not min(dz, dy, dx) > 0:
        raise ValueError("voxel size must be positive")
    voxel_ml = dz * dy * dx / 1000.0
    pixel_mm2 = dy * dx
    scan_extent = hu.shape[0] * dz

    reasons: list[str] = []
    if float(np.percentile(hu, cfg.air_percentile)) >= cfg.air_hu:
        reasons.append("implausible_hu")
    body, filled = body_masks(hu > cfg.body_hu)
    lungs = filled & ~body & (hu < cfg.air_hu)
    lung_area = lungs.sum(axis=(1, 2)) * pixel_mm2
    filled_area = filled.sum(axis=(1, 2)) * pixel_mm2
    frac = np.divide(
        lung_area, filled_area, out=np.zeros_like(lung_area, dtype=np.float64), where=filled_area > 0
    )
    lung_ml = float(lungs.sum()) * voxel_ml
    max_frac = float(frac.max()) if frac.size else 0.0
    rows = np.flatnonzero(lung_area >= cfg.min_slice_lung_mm2)
    extent = float((rows[-1] - rows[0] + 1) * dz) if rows.size else 0.0
    lungs_present = lung_ml >= cfg.min_lung_ml and max_frac >= cfg.min_lung_area_fraction
    if not lungs_present:
        if "implausible_hu" not in reasons:
            reasons.append("no_lungs_found")
    elif extent < cfg.min_lung_extent_mm:
        reasons.append("incomplete_chest_coverage")
    return PlausibilityReport(
        lung_volume_ml=lung_ml,
        body_volume_ml=float(body.sum()) * voxel_ml,
        max_lung_area_fraction=max_frac,
        lung_extent_mm=extent,
        scan_extent_mm=float(scan_extent),
        reasons=tuple(reasons),
    )


def check_plausibility(
    model_input: npt.NDArray[Any],
    voxel_mm_zyx: tuple[float, float, float],
    hu_window: tuple[float, float],
    config: PlausibilityConfig | None = None,
) -> PlausibilityReport:
    """Check a preprocessed model input (values in [-1, 1], (z, y, x) or [1, 1, z, y, x]).

    ``voxel_mm_zyx`` is the size of one *model* voxel in mm (crop extent / model
    size per axis) and ``hu_window`` the (low, high) HU the input was scaled from.
    """
    x = np.asarray(model_input, dtype=np.float32)
    while x.ndim > 3 and x.shape[0] == 1:
        x = x[0]
    return check_plausibility_hu(input_to_hu(x, hu_window), voxel_mm_zyx, config)
