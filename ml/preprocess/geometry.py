"""The intermediate grid of the seed pipeline and the geometry record that inverts it.

Conventions (see :mod:`ml.geometry`): size/index tuples of a
:class:`~ml.geometry.VolumeGeometry` are (x, y, z); NumPy arrays and model
tensors are (z, y, x) = (D, H, W); patient coordinates are LPS mm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ml.geometry import VolumeGeometry
from ml.preprocess.config import Size3

__all__ = ["CropBox", "PreprocessGeometry", "output_grid"]

FloatArray = npt.NDArray[np.float64]


def output_grid(source: VolumeGeometry, spacing_mm: tuple[float, float, float]) -> VolumeGeometry:
    """The intermediate (1 mm) grid of the seed pipeline for ``source``.

    Same origin and direction as the source; size round(size_k · spacing_k / out_k)
    per (x, y, z) axis (Python's round: halves to even), at least 1.
    """
    size = tuple(
        max(1, round(n * s / o)) for n, s, o in zip(source.size, source.spacing_mm, spacing_mm, strict=True)
    )
    return VolumeGeometry(
        size=(int(size[0]), int(size[1]), int(size[2])),
        spacing_mm=(float(spacing_mm[0]), float(spacing_mm[1]), float(spacing_mm[2])),
        origin_mm=source.origin_mm,
        direction=source.direction,
    )


@dataclass(frozen=True)
class CropBox:
    """Crop box on the intermediate (1 mm) grid, NumPy (z, y, x) order.

    ``start_zyx`` is inclusive and ``stop_zyx`` exclusive, like Python slices:
    the crop is ``array[z0:z1, y0:y1, x0:x1]``.
    """

    start_zyx: Size3
    stop_zyx: Size3

    @property
    def shape_zyx(self) -> Size3:
        """Crop size (z, y, x) in voxels."""
        a, b = self.start_zyx, self.stop_zyx
        return (b[0] - a[0], b[1] - a[1], b[2] - a[2])

    def slices(self) -> tuple[slice, slice, slice]:
        """NumPy slices (z, y, x) selecting the crop."""
        return tuple(slice(a, b) for a, b in zip(self.start_zyx, self.stop_zyx, strict=True))  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        return {"start_zyx": list(self.start_zyx), "stop_zyx": list(self.stop_zyx)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CropBox:
        a, b = d["start_zyx"], d["stop_zyx"]
        return cls(start_zyx=(int(a[0]), int(a[1]), int(a[2])), stop_zyx=(int(b[0]), int(b[1]), int(b[2])))


def _as_points(pts: npt.ArrayLike) -> tuple[FloatArray, tuple[int, ...]]:
    p = np.asarray(pts, dtype=np.float64)
    if p.shape[-1:] != (3,):
        raise ValueError(f"points must have a last axis of length 3, got shape {p.shape}")
    return p.reshape(-1, 3), p.shape


@dataclass(frozen=True)
class PreprocessGeometry:
    """Everything needed to map model voxels back to the source series and to LPS.

    Attributes:
        source: grid of the source series (the CTVolume's geometry).
        resampled: the full intermediate grid (1 mm), same origin/direction as ``source``.
        crop: crop box on ``resampled`` in (z, y, x) order, stop exclusive.
        model_size_zyx: model input size (D, H, W).

    Point conventions of the mapping methods: every *index* array is (N, 3) in
    NumPy (z, y, x) order (continuous: 0.0 is the centre of voxel 0); LPS points
    are (N, 3) in (x, y, z) mm. Any leading shape (..., 3) is accepted and kept.
    The resize uses the align_corners=False convention: model index m along an
    axis ↔ crop index (m + 0.5) · n_crop / n_model − 0.5.
    """

    source: VolumeGeometry
    resampled: VolumeGeometry
    crop: CropBox
    model_size_zyx: Size3

    # -- model ↔ intermediate grid
    def _scale_zyx(self) -> FloatArray:
        return np.asarray(self.crop.shape_zyx, dtype=np.float64) / np.asarray(self.model_size_zyx, np.float64)

    def model_voxel_mm(self) -> tuple[float, float, float]:
        """Size (z, y, x) in mm of one model voxel: the body crop's extent over the model input size."""
        sx, sy, sz = self.resampled.spacing_mm
        kz, ky, kx = (float(v) for v in self._scale_zyx())
        return (kz * sz, ky * sy, kx * sx)

    def model_to_resampled_index(self, pts_zyx: npt.ArrayLike) -> FloatArray:
        """Model voxel indices (z, y, x) → continuous indices (z, y, x) on the 1 mm grid."""
        p, shape = _as_points(pts_zyx)
        out = (p + 0.5) * self._scale_zyx() - 0.5 + np.asarray(self.crop.start_zyx, np.float64)
        return out.reshape(shape)

    def resampled_index_to_model(self, pts_zyx: npt.ArrayLike) -> FloatArray:
        """Continuous 1 mm-grid indices (z, y, x) → model voxel indices (z, y, x)."""
        p, shape = _as_points(pts_zyx)
        out = (p - np.asarray(self.crop.start_zyx, np.float64) + 0.5) / self._scale_zyx() - 0.5
        return out.reshape(shape)

    # -- model ↔ LPS
    def model_to_lps(self, pts_zyx: npt.ArrayLike) -> FloatArray:
        """Model voxel indices (z, y, x) → LPS mm (x, y, z)."""
        r = self.model_to_resampled_index(pts_zyx)
        return self.resampled.index_to_lps(r[..., ::-1])

    def lps_to_model(self, lps_xyz: npt.ArrayLike) -> FloatArray:
        """LPS mm (x, y, z) → continuous model voxel indices (z, y, x)."""
        r_xyz = self.resampled.lps_to_index(np.asarray(lps_xyz, dtype=np.float64))
        return self.resampled_index_to_model(r_xyz[..., ::-1])

    # -- model ↔ source series
    def model_to_source_index(self, pts_zyx: npt.ArrayLike) -> FloatArray:
        """Model voxel indices (z, y, x) → continuous source-series indices (z, y, x)."""
        lps = self.model_to_lps(pts_zyx)
        return self.source.lps_to_index(lps)[..., ::-1].copy()

    def source_index_to_model(self, pts_zyx: npt.ArrayLike) -> FloatArray:
        """Continuous source-series indices (z, y, x) → model voxel indices (z, y, x)."""
        p, shape = _as_points(pts_zyx)
        lps = self.source.index_to_lps(p[:, ::-1])
        return self.lps_to_model(lps).reshape(shape)

    def mask_to_model(self, mask_zyx: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
        """Boolean map on the model grid (D, H, W): True where a nonzero voxel of ``mask_zyx``
        (a label map on the source grid) has its centre (nearest model voxel).

        Every labelled source voxel that lands inside the model's field of view marks one
        model voxel, so a lesion smaller than a model voxel (e.g. a 4 mm nodule at 3 mm
        model voxels) is never lost.
        """
        if tuple(mask_zyx.shape) != self.source.shape_zyx:
            raise ValueError(f"mask shape {mask_zyx.shape} != source grid {self.source.shape_zyx}")
        out = np.zeros(self.model_size_zyx, dtype=np.bool_)
        idx = np.argwhere(mask_zyx != 0)
        if len(idx):
            m = np.rint(self.source_index_to_model(idx.astype(np.float64))).astype(np.int64)
            inside = np.all((m >= 0) & (m < np.asarray(self.model_size_zyx)), axis=1)
            m = m[inside]
            out[m[:, 0], m[:, 1], m[:, 2]] = True
        return out

    def model_grid(self) -> VolumeGeometry:
        """The model tensor's voxel grid as a VolumeGeometry (size/spacing in x, y, z order).

        Useful to write a model-space volume (e.g. a saliency map) as NIfTI or to
        resample it onto the source grid with SimpleITK.
        """
        scale_xyz = self._scale_zyx()[::-1]
        spacing = tuple(float(v) for v in scale_xyz * np.asarray(self.resampled.spacing_mm))
        origin = self.model_to_lps(np.zeros((1, 3)))[0]
        d, h, w = self.model_size_zyx
        return VolumeGeometry(
            size=(w, h, d),
            spacing_mm=(spacing[0], spacing[1], spacing[2]),
            origin_mm=(float(origin[0]), float(origin[1]), float(origin[2])),
            direction=self.resampled.direction,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "source": self.source.to_dict(),
            "resampled": self.resampled.to_dict(),
            "crop": self.crop.to_dict(),
            "model_size_zyx": list(self.model_size_zyx),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessGeometry:
        m = d["model_size_zyx"]
        return cls(
            source=VolumeGeometry.from_dict(d["source"]),
            resampled=VolumeGeometry.from_dict(d["resampled"]),
            crop=CropBox.from_dict(d["crop"]),
            model_size_zyx=(int(m[0]), int(m[1]), int(m[2])),
        )
