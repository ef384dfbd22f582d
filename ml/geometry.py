"""Image geometry shared by ingestion, preprocessing, phantoms and explanation.

Conventions (the same as SimpleITK/ITK and DICOM):

* Patient coordinates are DICOM LPS millimetres (x → patient Left, y → Posterior,
  z → Superior/head).
* Index and size tuples are in (x, y, z) order = (column, row, slice).
* NumPy voxel arrays are stored (z, y, x) = (slice, row, column), as
  ``SimpleITK.GetArrayFromImage`` returns them.
* ``direction`` is the row-major 3×3 matrix whose *columns* are the unit vectors
  of the x, y and z index axes in LPS (ITK's ``GetDirection()``).
* physical(mm) = origin + direction · diag(spacing) · index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

Vec3 = tuple[float, float, float]
Size3 = tuple[int, int, int]
FloatArray = npt.NDArray[np.float64]

IDENTITY_DIRECTION: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class VolumeGeometry:
    """Grid of a 3-D image in patient space.

    Attributes:
        size: number of voxels (x, y, z).
        spacing_mm: voxel pitch in mm along (x, y, z).
        origin_mm: LPS position in mm of the centre of voxel (0, 0, 0).
        direction: row-major 3×3 direction cosines (columns = index axes in LPS).
    """

    size: Size3
    spacing_mm: Vec3
    origin_mm: Vec3
    direction: tuple[float, ...] = IDENTITY_DIRECTION

    def __post_init__(self) -> None:
        if len(self.direction) != 9:
            raise ValueError("direction must have 9 elements")
        if any(s <= 0 for s in self.spacing_mm):
            raise ValueError(f"spacing must be positive, got {self.spacing_mm}")

    @property
    def direction_matrix(self) -> FloatArray:
        """3×3 direction matrix (columns are the x, y, z index axes in LPS)."""
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def shape_zyx(self) -> Size3:
        """NumPy array shape (z, y, x) of a volume on this grid."""
        return (self.size[2], self.size[1], self.size[0])

    def index_to_lps(self, index_xyz: npt.ArrayLike) -> FloatArray:
        """Map continuous voxel indices (..., 3) in (x, y, z) order to LPS mm."""
        idx = np.asarray(index_xyz, dtype=np.float64)
        m = self.direction_matrix * np.asarray(self.spacing_mm)[None, :]
        out: FloatArray = idx @ m.T + np.asarray(self.origin_mm)
        return out

    def lps_to_index(self, lps_mm: npt.ArrayLike) -> FloatArray:
        """Map LPS mm points (..., 3) to continuous voxel indices in (x, y, z) order."""
        p = np.asarray(lps_mm, dtype=np.float64) - np.asarray(self.origin_mm)
        m = self.direction_matrix * np.asarray(self.spacing_mm)[None, :]
        out: FloatArray = p @ np.linalg.inv(m).T
        return out

    def affine_lps(self) -> FloatArray:
        """4×4 affine from (x, y, z) voxel index to LPS mm."""
        a = np.eye(4)
        a[:3, :3] = self.direction_matrix * np.asarray(self.spacing_mm)[None, :]
        a[:3, 3] = self.origin_mm
        return a

    def affine_ras(self) -> FloatArray:
        """4×4 affine from (x, y, z) voxel index to RAS mm (what NIfTI stores)."""
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        return flip @ self.affine_lps()

    def extent_mm(self) -> Vec3:
        """Physical length covered by voxel centres along (x, y, z), in mm."""
        return (
            (self.size[0] - 1) * self.spacing_mm[0],
            (self.size[1] - 1) * self.spacing_mm[1],
            (self.size[2] - 1) * self.spacing_mm[2],
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": list(self.size),
            "spacing_mm": list(self.spacing_mm),
            "origin_mm": list(self.origin_mm),
            "direction": list(self.direction),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VolumeGeometry:
        return cls(
            size=(int(d["size"][0]), int(d["size"][1]), int(d["size"][2])),
            spacing_mm=(float(d["spacing_mm"][0]), float(d["spacing_mm"][1]), float(d["spacing_mm"][2])),
            origin_mm=(float(d["origin_mm"][0]), float(d["origin_mm"][1]), float(d["origin_mm"][2])),
            direction=tuple(float(v) for v in d["direction"]),
        )


@dataclass
class CTVolume:
    """A CT series as one voxel array plus its geometry.

    ``stored`` holds the DICOM stored values (z, y, x); Hounsfield units are
    ``stored * slope + intercept``. When the slices of a series carry different
    rescale values, ingestion converts to HU itself and sets slope=1, intercept=0
    (``stored`` is then float32 HU).
    """

    stored: npt.NDArray[Any]
    slope: float
    intercept: float
    geometry: VolumeGeometry
    series_uid: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stored.ndim != 3:
            raise ValueError(f"stored must be 3-D (z, y, x), got shape {self.stored.shape}")
        if tuple(self.stored.shape) != self.geometry.shape_zyx:
            raise ValueError(f"array shape {self.stored.shape} != geometry {self.geometry.shape_zyx}")
        if not np.isfinite(self.slope) or not np.isfinite(self.intercept) or self.slope == 0:
            raise ValueError("rescale slope/intercept must be finite and slope non-zero")

    def hu(self) -> npt.NDArray[np.float32]:
        """The volume in HU as float32 (z, y, x); allocates a new array."""
        out = self.stored.astype(np.float32)
        if self.slope != 1.0:
            out *= np.float32(self.slope)
        if self.intercept != 0.0:
            out += np.float32(self.intercept)
        return out

    def hu_to_stored(self, hu: float) -> float:
        """Stored value that corresponds to ``hu`` (slope may be negative in theory)."""
        return (hu - self.intercept) / self.slope

    @classmethod
    def from_hu(cls, hu: npt.NDArray[Any], geometry: VolumeGeometry, series_uid: str = "") -> CTVolume:
        """Wrap an HU array (z, y, x) with identity rescale."""
        return cls(stored=hu, slope=1.0, intercept=0.0, geometry=geometry, series_uid=series_uid)
