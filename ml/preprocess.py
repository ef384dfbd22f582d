"""The seed preprocessing pipeline and the geometry record that inverts it.

The pipeline is fixed by the original research (do not change it without
retraining)::

    HU = stored * slope + intercept
    → SimpleITK resample to ``spacing_mm`` (1 mm), linear, same origin and
      direction as the source, size round(size_k · spacing_k / out_k) per axis,
      points outside the source filled with air (-1024 HU)
    → crop to the body box: bounding box of voxels with HU > -1000 on that grid,
      expanded by 5 voxels per side, clamped to the grid
    → clip to [-1000, 600] HU → scale linearly to [-1, 1]
    → ``F.interpolate(mode="trilinear", align_corners=False)`` to 256³
    → float32 tensor [1, 1, D, H, W]

:func:`preprocess` computes exactly that (Pearson r ≥ 0.99999 against the plain
implementation in ``tests/reference_preprocess.py``; in practice max abs
difference ~1e-6) but faster and with far less memory:

1. A conservative body box is found on the *source* grid from max (or min)
   projections of the stored values against the threshold expressed in stored
   units; no HU copy of the volume is made.
2. That box is mapped to the output grid (the axes are parallel because the
   output keeps the source direction and origin: output index j ↔ source
   continuous index j · out_k / spacing_k), grown by the crop margin, and only
   that region is resampled, from the matching source slab, in stored units
   with a float32 output and the air fill converted to stored units.
3. The box is refined on the resampled region so that it equals the box of
   the plain pipeline (threshold ties within ``_TIE_TOLERANCE_HU`` trigger an
   exact HU re-resample of the region; rare).
4. The crop is clipped in stored units, resized with torch, and *then* scaled
   to [-1, 1] (exact: the interpolation weights sum to 1; the clip stays before
   the resize).

Conventions (see :mod:`ml.geometry`): size/index tuples of a
:class:`~ml.geometry.VolumeGeometry` are (x, y, z); NumPy arrays and model
tensors are (z, y, x) = (D, H, W); patient coordinates are LPS mm.

torch is imported lazily inside the functions that need it so that ``app/``
can import this module without loading torch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ml.errors import InputError
from ml.geometry import CTVolume, VolumeGeometry

if TYPE_CHECKING:
    import SimpleITK as sitk  # noqa: N813
    import torch

__all__ = [
    "CropBox",
    "PreprocessConfig",
    "PreprocessGeometry",
    "PreprocessResult",
    "output_grid",
    "preprocess",
]

Size3 = tuple[int, int, int]
FloatArray = npt.NDArray[np.float64]

#: half-width (HU) of the band around the body threshold inside which the fast
#: path's stored-unit comparison might disagree with the reference's float32 HU
#: comparison; float32 round-off is ~1e-4 HU, so 0.01 HU is very safe.
_TIE_TOLERANCE_HU = 0.01

#: most intermediate-grid voxels resampled for one series (2 GiB of float32): a whole-body
#: CT at 1 mm cropped to the body is ~0.3e9; hostile geometry headers would ask for far more
MAX_REGION_VOXELS = 1 << 29
#: whole 1 mm grid spanned by a series (before the body crop): beyond this, int64 index
#: arithmetic could overflow; real series span < 1e10 mm³ (a 2 m × 0.7 m × 0.7 m field)
MAX_GRID_VOXELS = 1 << 40

_INTERPOLATIONS = ("linear", "nearest")
_RESIZE_MODES = ("trilinear", "nearest-exact")


# --------------------------------------------------------------------------- config


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


# --------------------------------------------------------------------------- geometry record


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


@dataclass
class PreprocessResult:
    """Output of :func:`preprocess`.

    Attributes:
        tensor: float32 [1, 1, D, H, W], contiguous, values in [-1, 1].
        geometry: mapping record (model voxels ↔ 1 mm grid ↔ source ↔ LPS).
        timings_s: wall seconds per stage.
        exact_fallback: True when a threshold tie forced the exact HU re-resample.
    """

    tensor: torch.Tensor
    geometry: PreprocessGeometry
    timings_s: dict[str, float] = field(default_factory=dict)
    exact_fallback: bool = False

    def save(self, path: str | Path) -> None:
        """Write the tensor with ``torch.save`` (callers need not import torch)."""
        import torch

        torch.save(self.tensor, Path(path))

    @property
    def crop_box(self) -> CropBox:
        """Crop box on the 1 mm grid, (z, y, x), stop exclusive."""
        return self.geometry.crop


# --------------------------------------------------------------------------- fast path helpers


def _body_box(values: npt.NDArray[Any], above: bool, thr: float) -> tuple[Size3, Size3] | None:
    """Inclusive (start, end) (z, y, x) of the voxels beyond ``thr``, or None when there are none.

    "Beyond" is ``values > thr`` when ``above`` else ``values < thr`` (stored
    values with a negative rescale slope grow the other way). Uses two
    reductions in the array's own dtype (per-slice extreme and the projection
    along z), never a boolean or float64 copy of the volume.
    """
    nz = values.shape[0]
    flat = values.reshape(nz, -1)
    if above:
        z_hit = flat.max(axis=1) > thr
        yx_hit = values.max(axis=0) > thr
    else:
        z_hit = flat.min(axis=1) < thr
        yx_hit = values.min(axis=0) < thr
    zs = np.flatnonzero(z_hit)
    if zs.size == 0:
        return None
    ys = np.flatnonzero(np.any(yx_hit, axis=1))
    xs = np.flatnonzero(np.any(yx_hit, axis=0))
    return (int(zs[0]), int(ys[0]), int(xs[0])), (int(zs[-1]), int(ys[-1]), int(xs[-1]))


def _faces_confirmed(
    values: npt.NDArray[np.float32], box: tuple[Size3, Size3], thr: float, above: bool
) -> bool:
    """True when each of the 6 faces of ``box`` (inclusive, z, y, x) holds a voxel beyond ``thr``.

    Then the box of ``values`` beyond ``thr`` equals ``box``: this confirms that
    a box found with a loose threshold is also the box for a strict one.
    """
    lo, hi = box
    sub = values[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1]
    faces = (sub[0], sub[-1], sub[:, 0], sub[:, -1], sub[:, :, 0], sub[:, :, -1])  # views, no copies
    for face in faces:
        ok = bool((face > thr).any()) if above else bool((face < thr).any())
        if not ok:
            return False
    return True


def _resample_region(
    array_zyx: npt.NDArray[Any],
    source: VolumeGeometry,
    grid: VolumeGeometry,
    region_lo_zyx: npt.NDArray[np.int64],
    region_hi_zyx: npt.NDArray[np.int64],
    default_value: float,
    interpolation: str,
    to_hu: tuple[float, float] | None = None,
) -> tuple[sitk.Image, npt.NDArray[np.float32]]:
    """Resample grid points [region_lo, region_hi] (inclusive, z, y, x) from ``array_zyx`` on ``source``.

    Only the source slab that supports those points (+1 voxel of slack) is
    handed to SimpleITK; where the slab is cut inside the volume the points stay
    ≥ 1 voxel away from its border, and where it touches the volume border the
    border (and ITK's half-voxel clamping zone) is the true one, so values are
    the same as resampling the whole volume. Returns the sitk image (owner) and a
    float32 (z, y, x) view of it. With ``to_hu=(slope, intercept)`` the slab is
    first converted to float32 HU exactly as :meth:`CTVolume.hu` does.
    """
    import SimpleITK as sitk  # noqa: N813

    src_sp = np.asarray(source.spacing_mm, np.float64)[::-1]
    out_sp = np.asarray(grid.spacing_mm, np.float64)[::-1]
    ratio = out_sp / src_sp  # source continuous index per grid index, (z, y, x)
    n_src = np.asarray(array_zyx.shape, np.int64)
    s_lo = np.floor(region_lo_zyx * ratio).astype(np.int64) - 1
    s_hi = np.floor(region_hi_zyx * ratio).astype(np.int64) + 2
    s_lo = np.clip(s_lo, 0, n_src - 1)
    s_hi = np.clip(s_hi, 0, n_src - 1)
    slab = array_zyx[s_lo[0] : s_hi[0] + 1, s_lo[1] : s_hi[1] + 1, s_lo[2] : s_hi[2] + 1]
    if to_hu is not None:
        slab = _hu_float32(slab, *to_hu)
    img = sitk.GetImageFromArray(np.ascontiguousarray(slab))
    img.SetSpacing(source.spacing_mm)
    img.SetDirection(source.direction)
    img.SetOrigin(tuple(float(v) for v in source.index_to_lps(s_lo[::-1].astype(np.float64))))
    size_xyz = [int(v) for v in (region_hi_zyx - region_lo_zyx + 1)[::-1]]
    origin = tuple(float(v) for v in grid.index_to_lps(region_lo_zyx[::-1].astype(np.float64)))
    interp = sitk.sitkLinear if interpolation == "linear" else sitk.sitkNearestNeighbor
    out = sitk.Resample(
        img,
        size_xyz,
        sitk.Transform(),
        interp,
        origin,
        grid.spacing_mm,
        grid.direction,
        float(default_value),
        sitk.sitkFloat32,
    )
    del img
    view: npt.NDArray[np.float32] = sitk.GetArrayViewFromImage(out)
    return out, view


def _hu_float32(stored: npt.NDArray[Any], slope: float, intercept: float) -> npt.NDArray[np.float32]:
    """HU as float32 with the same operations as :meth:`CTVolume.hu` (tie fallback only)."""
    out = stored.astype(np.float32)
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)
    return out


# --------------------------------------------------------------------------- the pipeline


def preprocess(volume: CTVolume, config: PreprocessConfig | None = None) -> PreprocessResult:
    """Run the seed pipeline on ``volume`` (fast, exact path).

    Args:
        volume: stored values (z, y, x) + rescale + geometry of one CT series.
        config: pipeline settings; ``None`` means the seed defaults.

    Returns:
        :class:`PreprocessResult` with the float32 [1, 1, D, H, W] tensor in [-1, 1],
        the geometry record and per-stage timings (seconds).

    Raises:
        InputError: ``no_usable_series`` when no voxel of the resampled volume
            is above ``body_threshold_hu`` (nothing to crop to).
    """
    import torch
    import torch.nn.functional as F

    cfg = config if config is not None else PreprocessConfig()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    src = volume.geometry
    grid = output_grid(src, cfg.spacing_mm)
    grid_voxels = math.prod(int(n) for n in grid.shape_zyx)  # Python ints: absurd headers overflow int64
    if grid_voxels > MAX_GRID_VOXELS:
        raise InputError(
            "dicom_invalid",
            f"the series spans {grid_voxels:.3g} voxels of the {cfg.spacing_mm} mm grid;"
            " pixel spacing or slice positions are implausible",
        )
    n_grid = np.asarray(grid.shape_zyx, np.int64)
    slope, icpt = float(volume.slope), float(volume.intercept)
    above = slope > 0  # HU > thr  <=>  stored > thr_stored  (reversed when slope < 0)
    thr = cfg.body_threshold_hu
    tol = _TIE_TOLERANCE_HU

    def to_stored(hu: float) -> float:
        return (hu - icpt) / slope

    # 1. conservative body box on the source grid (stored units, with slack on the loose side)
    margin = cfg.crop_margin_voxels
    if cfg.outside_value_hu > thr - 2 * tol:
        # the air fill itself would count as body: no shortcut, use the whole grid
        cand_lo, cand_hi = np.zeros(3, np.int64), n_grid - 1
    else:
        box = _body_box(volume.stored, above, to_stored(thr - 2 * tol))
        if box is None:
            raise InputError(
                "no_usable_series", f"the series has no voxel above {thr:g} HU (empty body mask)"
            )
        a = np.asarray(box[0], np.float64)
        b = np.asarray(box[1], np.float64)
        # grid index j ↔ source continuous index j·ratio; a grid point can be above the
        # threshold only if its interpolation support [floor(c), floor(c)+1] meets [a, b].
        inv_ratio = (
            np.asarray(src.spacing_mm, np.float64)[::-1] / np.asarray(grid.spacing_mm, np.float64)[::-1]
        )
        cand_lo = np.maximum(np.floor((a - 1) * inv_ratio).astype(np.int64), 0)
        cand_hi = np.minimum(np.ceil((b + 1) * inv_ratio).astype(np.int64), n_grid - 1)
        if np.any(cand_lo > cand_hi):
            raise InputError(
                "no_usable_series", f"the series has no voxel above {thr:g} HU (empty body mask)"
            )
    reg_lo = np.maximum(cand_lo - margin, 0)
    reg_hi = np.minimum(cand_hi + margin, n_grid - 1)
    n_region = math.prod(int(n) for n in reg_hi - reg_lo + 1)
    if n_region > MAX_REGION_VOXELS:
        # absurd PixelSpacing or slice positions: refuse before allocating the grid
        raise InputError(
            "dicom_invalid",
            f"the series spans {n_region} voxels of the {cfg.spacing_mm} mm grid (> {MAX_REGION_VOXELS});"
            " pixel spacing or slice positions are implausible",
        )
    timings["body_box_source"] = time.perf_counter() - t0

    # 2. resample only that region, stored units → float32, air fill in stored units
    t = time.perf_counter()
    owner, region = _resample_region(
        volume.stored, src, grid, reg_lo, reg_hi, to_stored(cfg.outside_value_hu), cfg.interpolation
    )
    v_slope, v_icpt = slope, icpt
    timings["resample"] = time.perf_counter() - t

    # 3. refine the box exactly (loose box, confirmed by strict voxels on its 6 faces)
    t = time.perf_counter()
    exact_fallback = False
    found = _body_box(region, above, to_stored(thr - tol))
    if found is not None and not _faces_confirmed(region, found, to_stored(thr + tol), above):
        # threshold ties: redo the region from float32 HU exactly as the reference does
        exact_fallback = True
        del region, owner
        owner, region = _resample_region(
            volume.stored, src, grid, reg_lo, reg_hi, cfg.outside_value_hu, cfg.interpolation, (slope, icpt)
        )
        v_slope, v_icpt = 1.0, 0.0
        found = _body_box(region, True, thr)
    if found is None:
        raise InputError("no_usable_series", f"the series has no voxel above {thr:g} HU (empty body mask)")
    box_lo = np.maximum(np.asarray(found[0], np.int64) + reg_lo - margin, 0)
    box_hi = np.minimum(np.asarray(found[1], np.int64) + reg_lo + margin, n_grid - 1)
    if np.any(box_lo < reg_lo) or np.any(box_hi > reg_hi):  # pragma: no cover - guarded by construction
        raise AssertionError("crop box escaped the resampled region")
    crop = CropBox(
        start_zyx=(int(box_lo[0]), int(box_lo[1]), int(box_lo[2])),
        stop_zyx=(int(box_hi[0] + 1), int(box_hi[1] + 1), int(box_hi[2] + 1)),
    )
    rel_lo, rel_hi = box_lo - reg_lo, box_hi - reg_lo + 1
    timings["refine_crop"] = time.perf_counter() - t

    # 4. clip in the region's units into a fresh contiguous crop
    t = time.perf_counter()
    w_lo, w_hi = cfg.hu_window
    c_lo, c_hi = sorted(((w_lo - v_icpt) / v_slope, (w_hi - v_icpt) / v_slope))
    cropped = np.empty(tuple(int(v) for v in rel_hi - rel_lo), dtype=np.float32)
    np.clip(
        region[rel_lo[0] : rel_hi[0], rel_lo[1] : rel_hi[1], rel_lo[2] : rel_hi[2]],
        np.float32(c_lo),
        np.float32(c_hi),
        out=cropped,
    )
    del region, owner
    timings["clip"] = time.perf_counter() - t

    # 5. resize (linear weights sum to 1, so the affine scaling commutes with it)
    t = time.perf_counter()
    x = torch.from_numpy(cropped)[None, None]
    size = tuple(int(s) for s in cfg.target_size)
    if cfg.resize_mode == "trilinear":
        y = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
    else:
        y = F.interpolate(x, size=size, mode=cfg.resize_mode)
    del x, cropped
    timings["resize"] = time.perf_counter() - t

    # 6. scale to [-1, 1]: y = ((v·slope + icpt) − w_lo) / (w_hi − w_lo) · 2 − 1
    t = time.perf_counter()
    k = 2.0 / (w_hi - w_lo)
    y.mul_(v_slope * k).add_((v_icpt - w_lo) * k - 1.0).clamp_(-1.0, 1.0)
    y = y.contiguous()
    timings["scale"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0

    geom = PreprocessGeometry(
        source=src,
        resampled=grid,
        crop=crop,
        model_size_zyx=(int(size[0]), int(size[1]), int(size[2])),
    )
    return PreprocessResult(tensor=y, geometry=geom, timings_s=timings, exact_fallback=exact_fallback)
