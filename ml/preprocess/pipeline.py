"""The seed preprocessing pipeline: a CT volume → the model's input tensor.

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
   the plain pipeline, from the plane extremes and the (y, x) projection the
   resampling takes while each plane is in cache (threshold ties within
   ``_TIE_TOLERANCE_HU`` trigger an exact HU re-resample of the region; rare).
4. The crop is clipped in stored units, resized with torch, and *then* scaled
   to [-1, 1] (exact: the interpolation weights sum to 1; the clip stays before
   the resize).

The geometry record that inverts it is :class:`~ml.preprocess.geometry.PreprocessGeometry`.

torch is imported lazily inside the functions that need it so that ``app/``
can import this module without loading torch.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ml.errors import InputError
from ml.geometry import CTVolume, VolumeGeometry
from ml.preprocess.config import PreprocessConfig, Size3
from ml.preprocess.geometry import CropBox, PreprocessGeometry, output_grid
from ml.preprocess.resample import Extremes, resample_parallel

if TYPE_CHECKING:
    import SimpleITK as sitk  # noqa: N813
    import torch

__all__ = ["MAX_GRID_VOXELS", "MAX_REGION_VOXELS", "PreprocessResult", "preprocess"]

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
    # two halves on two threads (NumPy's reductions release the GIL)
    parts = [values] if nz < 2 else [values[: nz // 2], values[nz // 2 :]]
    reduce = np.max if above else np.min

    def extremes(part: npt.NDArray[Any]) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
        return reduce(part.reshape(part.shape[0], -1), axis=1), reduce(part, axis=0)

    if len(parts) == 1 or values.size < 1 << 22:
        found = [extremes(part) for part in parts]
    else:
        with ThreadPoolExecutor(max_workers=2) as pool:
            found = list(pool.map(extremes, parts))
    z_ext = np.concatenate([z for z, _ in found])
    yx_ext = reduce(np.stack([yx for _, yx in found]), axis=0)
    return _box_of_extremes(z_ext, yx_ext, above, thr)


def _box_of_extremes(
    z_ext: npt.NDArray[Any], yx_ext: npt.NDArray[Any], above: bool, thr: float
) -> tuple[Size3, Size3] | None:
    """:func:`_body_box` from the plane extremes (z) and the (y, x) extreme projection along z."""
    if above:
        z_hit, yx_hit = z_ext > thr, yx_ext > thr
    else:
        z_hit, yx_hit = z_ext < thr, yx_ext < thr
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


def _faces_of_extremes(ext: Extremes, box: tuple[Size3, Size3], thr: float) -> bool:
    """:func:`_faces_confirmed` from the extremes of the region whose loose box is ``box``.

    Outside ``box`` no value is beyond the loose threshold, hence none beyond the strict
    ``thr``: a face holds a voxel beyond ``thr`` iff its whole plane (z) or line set (y, x) does.
    """
    (z0, y0, x0), (z1, y1, x1) = box
    faces = (ext.z[z0 : z0 + 1], ext.z[z1 : z1 + 1], ext.yx[y0], ext.yx[y1], ext.yx[:, x0], ext.yx[:, x1])
    if ext.above:
        return all(bool((f > thr).any()) for f in faces)
    return all(bool((f < thr).any()) for f in faces)


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
    owner: Any = None
    ext: Extremes | None = None  # the region's extremes, when the resampling took them

    if cfg.interpolation == "linear":  # separable, in float32 (SimpleITK's values, 3–4× faster)
        ratio = np.asarray(grid.spacing_mm, np.float64)[::-1] / np.asarray(src.spacing_mm, np.float64)[::-1]
        lo3 = (int(reg_lo[0]), int(reg_lo[1]), int(reg_lo[2]))
        shape3 = (
            int(reg_hi[0] - reg_lo[0] + 1),
            int(reg_hi[1] - reg_lo[1] + 1),
            int(reg_hi[2] - reg_lo[2] + 1),
        )
        r3 = (float(ratio[0]), float(ratio[1]), float(ratio[2]))
        # the extremes for the crop box taken from each plane as it is made
        ext = Extremes(above)
        region = resample_parallel(
            volume.stored, r3, lo3, shape3, to_stored(cfg.outside_value_hu), extremes=ext
        )
    else:
        owner, region = _resample_region(
            volume.stored, src, grid, reg_lo, reg_hi, to_stored(cfg.outside_value_hu), cfg.interpolation
        )
    v_slope, v_icpt = slope, icpt
    timings["resample"] = time.perf_counter() - t

    # 3. refine the box exactly (loose box, confirmed by strict voxels on its 6 faces)
    t = time.perf_counter()
    exact_fallback = False
    if ext is not None:
        found = _box_of_extremes(ext.z, ext.yx, above, to_stored(thr - tol))
        confirmed = found is None or _faces_of_extremes(ext, found, to_stored(thr + tol))
    else:
        found = _body_box(region, above, to_stored(thr - tol))
        confirmed = found is None or _faces_confirmed(region, found, to_stored(thr + tol), above)
    if not confirmed:
        # threshold ties: redo the region from float32 HU exactly as the reference does
        exact_fallback = True
        ext = None
        del region, owner
        owner, region = _resample_region(
            volume.stored, src, grid, reg_lo, reg_hi, cfg.outside_value_hu, cfg.interpolation, (slope, icpt)
        )  # SimpleITK, as the reference: ties are decided on its exact values
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

    # 4. clip in the region's units: in place when the region is ours, else into a fresh crop
    t = time.perf_counter()
    w_lo, w_hi = cfg.hu_window
    c_lo, c_hi = sorted(((w_lo - v_icpt) / v_slope, (w_hi - v_icpt) / v_slope))
    view = region[rel_lo[0] : rel_hi[0], rel_lo[1] : rel_hi[1], rel_lo[2] : rel_hi[2]]
    if owner is None:  # our region: clipped in place, resized from the (strided) view, no copy
        cropped = np.clip(view, np.float32(c_lo), np.float32(c_hi), out=view)
    else:
        cropped = np.empty(view.shape, dtype=np.float32)
        np.clip(view, np.float32(c_lo), np.float32(c_hi), out=cropped)
    del view, region, owner
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
    offset = torch.tensor((v_icpt - w_lo) * k - 1.0, dtype=torch.float32)
    torch.add(offset, y, alpha=v_slope * k, out=y).clamp_(-1.0, 1.0)  # one pass for the affine map
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
