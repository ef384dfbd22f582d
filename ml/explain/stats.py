"""Summary statistics of a source-space saliency map (``stats.json``): peak, regions, JSON values."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ml.geometry import VolumeGeometry

__all__ = ["MapSummary", "jsonable", "map_summary", "saliency_stats"]

F32Array = npt.NDArray[np.float32]


def jsonable(v: Any) -> Any:
    """``v`` with NumPy scalars/arrays as Python values and non-finite floats as None (JSON)."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [jsonable(x) for x in v]
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating | float):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, np.ndarray):
        return jsonable(v.tolist())
    return v


@dataclass(frozen=True)
class MapSummary:
    """Whole-map figures of :func:`saliency_stats` (map units; ``peak_zyx``: first maximum, C order)."""

    max: float
    min: float
    sum: float
    nonzero: int
    peak_zyx: tuple[int, int, int]


#: slices per step of :func:`map_summary`'s nonzero count (a few MB of temporary)
_SLAB = 8


def map_summary(source_map: F32Array) -> MapSummary:
    """Maximum, its first position, minimum, sum (float64) and nonzero count of a float32 map.

    The nonzero count reads the float bits (``-0.0`` counts as zero, like ``np.count_nonzero``),
    ≈ 7× faster than ``np.count_nonzero`` on float32.
    """
    a = np.ascontiguousarray(source_map, dtype=np.float32)
    flat = int(np.argmax(a))
    peak = np.unravel_index(flat, a.shape)
    bits = a.reshape(a.shape[0], -1).view(np.uint32)
    tmp = np.empty((min(_SLAB, a.shape[0]), bits.shape[1]), dtype=np.uint32)
    nonzero = 0
    for z in range(0, a.shape[0], _SLAB):
        t = tmp[: min(_SLAB, a.shape[0] - z)]
        np.bitwise_and(bits[z : z + _SLAB], np.uint32(0x7FFFFFFF), out=t)
        nonzero += int(np.count_nonzero(t))
    return MapSummary(
        max=float(a.reshape(-1)[flat]),
        min=float(a.min()),
        sum=float(a.sum(dtype=np.float64)),
        nonzero=nonzero,
        peak_zyx=(int(peak[0]), int(peak[1]), int(peak[2])),
    )


def _voxel_record(geom: VolumeGeometry, zyx: tuple[int, int, int]) -> dict[str, Any]:
    """Index (z, y, x) and (i, j, k) = (x, y, z), LPS and RAS mm of one voxel."""
    z, y, x = (int(v) for v in zyx)
    lps = geom.index_to_lps([float(x), float(y), float(z)])
    return {
        "index_zyx": [z, y, x],
        "index_ijk": [x, y, z],
        "lps_mm": [float(v) for v in lps],
        "ras_mm": [-float(lps[0]), -float(lps[1]), float(lps[2])],
    }


def _bbox_above(a: F32Array, threshold: float) -> tuple[slice, slice, slice] | None:
    """Slices (z, y, x) of the bounding box of ``a > threshold`` (two reductions, no mask copy)."""
    nz = a.shape[0]
    z_hit = np.flatnonzero(a.reshape(nz, -1).max(axis=1) > threshold)
    if z_hit.size == 0:
        return None
    z0, z1 = int(z_hit[0]), int(z_hit[-1]) + 1
    yx = a[z0:z1].max(axis=0) > threshold
    ys, xs = np.flatnonzero(yx.any(axis=1)), np.flatnonzero(yx.any(axis=0))
    return slice(z0, z1), slice(int(ys[0]), int(ys[-1]) + 1), slice(int(xs[0]), int(xs[-1]) + 1)


def _regions(
    source_map: F32Array, geom: VolumeGeometry, threshold: float, top_k: int
) -> tuple[int, list[dict[str, Any]]]:
    """Connected components (26-connected) of ``source_map > threshold``: (count, top_k by max).

    SimpleITK labels the components inside the bounding box of the mask and
    gives their sizes, centroids and boxes; maxima, peaks and saliency-weighted
    centroids come from NumPy on each component's own box.
    """
    import SimpleITK as sitk  # noqa: N813

    box = _bbox_above(source_map, threshold)
    if box is None:
        return 0, []
    sub = source_map[box]
    mask = np.greater(sub, threshold)
    labels_img = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.view(np.uint8)), True)
    del mask
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.Execute(labels_img)
    labels = sitk.GetArrayViewFromImage(labels_img)  # (z, y, x), unit geometry: physical == index

    def own(lab: int) -> tuple[tuple[slice, slice, slice], npt.NDArray[np.bool_]]:
        bx, by, bz, sx, sy, sz = shape.GetBoundingBox(lab)
        sl = (slice(bz, bz + sz), slice(by, by + sy), slice(bx, bx + sx))
        return sl, labels[sl] == lab

    ranked: list[tuple[float, int, int]] = []
    for lab in shape.GetLabels():
        sl, m = own(lab)
        ranked.append(
            (float(np.max(sub[sl], where=m, initial=-np.inf)), int(shape.GetNumberOfPixels(lab)), lab)
        )
    ranked.sort(key=lambda t: (-t[0], -t[1], t[2]))

    voxel_mm3 = abs(float(np.linalg.det(geom.affine_lps()[:3, :3])))
    offset_zyx = np.array([box[0].start, box[1].start, box[2].start], dtype=np.float64)
    rows: list[dict[str, Any]] = []
    for rank, (vmax, n, lab) in enumerate(ranked[:top_k], start=1):
        sl, m = own(lab)
        w = np.where(m, sub[sl], np.float32(0.0))  # float32, this component's box only
        total = float(w.sum(dtype=np.float64))
        corner = offset_zyx + np.array([sl[0].start, sl[1].start, sl[2].start], dtype=np.float64)
        profiles = [w.sum(axis=tuple(b for b in range(3) if b != a), dtype=np.float64) for a in range(3)]
        cog_zyx = corner + np.array([(p * np.arange(p.size)).sum() for p in profiles]) / max(total, 1e-300)
        peak_zyx = corner + np.array(np.unravel_index(int(np.argmax(w)), w.shape), dtype=np.float64)
        centroid_xyz = np.asarray(shape.GetCentroid(lab)) + offset_zyx[::-1]
        rows.append(
            {
                "rank": rank,
                "max": vmax,
                "mean": total / n,
                "sum": total,
                "voxels": n,
                "volume_mm3": n * voxel_mm3,
                "centroid_index_ijk": centroid_xyz.tolist(),
                "centroid_lps_mm": geom.index_to_lps(centroid_xyz).tolist(),
                "weighted_centroid_lps_mm": geom.index_to_lps(cog_zyx[::-1]).tolist(),
                "peak_index_zyx": [int(v) for v in peak_zyx],
                "peak_lps_mm": geom.index_to_lps(peak_zyx[::-1]).tolist(),
            }
        )
    return len(ranked), rows


def saliency_stats(
    source_map: F32Array,
    geometry: VolumeGeometry,
    *,
    region_fraction: float = 0.5,
    top_k: int = 5,
    summary: MapSummary | None = None,
) -> dict[str, Any]:
    """Summary of a source-space map (values in the map's own units).

    Keys: ``max``, ``min``, ``mean`` (whole volume), ``mean_nonzero``,
    ``nonzero_fraction``, ``peak`` (index_zyx, index_ijk, lps_mm, ras_mm, value; the
    first maximum in C order), ``regions`` (26-connected components of
    ``map > region_fraction · max``, at most ``top_k``, largest maximum first:
    max, mean, sum, voxels, volume_mm3, centroid_index_ijk, centroid_lps_mm,
    weighted_centroid_lps_mm, peak_index_zyx, peak_lps_mm, rank), ``region_count``,
    ``region_threshold``. With a maximum ≤ 0 there are no regions. ``summary``: the map's
    :func:`map_summary`, when the caller has it already.
    """
    if not 0.0 < region_fraction <= 1.0:
        raise ValueError(f"region_fraction must be in (0, 1], got {region_fraction}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    m = map_summary(source_map) if summary is None else summary
    vmax, total, nonzero, peak = m.max, m.sum, m.nonzero, m.peak_zyx
    threshold = region_fraction * vmax
    count, regions = _regions(source_map, geometry, threshold, top_k) if vmax > 0 else (0, [])
    return {
        "max": vmax,
        "min": m.min,
        "mean": total / source_map.size,
        "mean_nonzero": total / nonzero if nonzero else 0.0,
        "nonzero_fraction": nonzero / source_map.size,
        "peak": {**_voxel_record(geometry, peak), "value": vmax},
        "region_fraction": region_fraction,
        "region_threshold": threshold if vmax > 0 else None,
        "region_count": count,
        "regions": regions,
    }
