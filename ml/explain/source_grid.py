"""A model-space map back on the source series grid (:func:`to_source`).

The inverse of the seed pipeline's resize (model grid → 1 mm crop), uncropping
(0 outside the crop box) and the 1 mm grid → source voxels, as one trilinear
sampling at each source voxel's continuous model coordinate (the same values as
a SimpleITK linear resample of the model map placed on
:meth:`~ml.preprocess.PreprocessGeometry.model_grid`; 0 where the source voxel
lies outside the model grid's voxel edges).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch

from ml.explain.methods import ExplainOutput
from ml.geometry import VolumeGeometry
from ml.preprocess.resample import AxisLerp, axis_lerp

if TYPE_CHECKING:
    from ml.preprocess import PreprocessGeometry

__all__ = ["source_to_model_affine", "to_source"]

F32Array = npt.NDArray[np.float32]
F64Array = npt.NDArray[np.float64]
Size3 = tuple[int, int, int]


def source_to_model_affine(geometry: PreprocessGeometry) -> tuple[F64Array, F64Array]:
    """(A, b) with model index = A @ source index + b, both (z, y, x), continuous voxels.

    Built from :meth:`~ml.preprocess.PreprocessGeometry.source_index_to_model`
    (the chain source → LPS → 1 mm grid → crop → resize is affine).
    """
    pts = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    m = geometry.source_index_to_model(pts)
    b = m[0]
    a = (m[1:] - b).T  # column k = image of source axis k
    return a, b


def _as_model_map(map_model: ExplainOutput | npt.NDArray[Any] | torch.Tensor, size: Size3) -> torch.Tensor:
    if isinstance(map_model, ExplainOutput):
        map_model = map_model.map
    if isinstance(map_model, torch.Tensor):
        t = map_model.detach()
    else:
        arr = np.asarray(map_model, dtype=np.float32)
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    while t.ndim > 3 and t.shape[0] == 1:
        t = t[0]
    if tuple(t.shape) != tuple(size):
        raise ValueError(f"model map must have shape {list(size)} (D, H, W), got {list(map_model.shape)}")
    return t.to(device="cpu", dtype=torch.float32).contiguous()


def to_source(
    map_model: ExplainOutput | npt.NDArray[Any] | torch.Tensor,
    geometry: PreprocessGeometry,
    *,
    out: F32Array | None = None,
    threads: int = 2,
) -> F32Array:
    """Resample a model-space map [D, H, W] onto the source series grid.

    Args:
        map_model: float map on the model grid, shape ``geometry.model_size_zyx``
            (leading singleton dims are dropped; any device), or an
            :class:`ExplainOutput` (its ``map``).
        geometry: the preprocessing record of the volume.
        out: optional C-contiguous float32 array of the source shape to fill and
            return (a worker can reuse one buffer: first-touching ~300 MB of fresh
            memory costs more than the resampling itself in these VMs).
        threads: fill this many runs of slices at once (Python threads; at least 16
            slices each).

    Returns:
        float32 array with the source series' shape (z, y, x) = (slices, rows,
        columns). Each voxel is the trilinear sample of the map at that voxel's
        continuous model coordinate; voxels outside the model grid (i.e. outside
        the body crop box, to within half a model voxel) are 0.

    The seed pipeline keeps the source's origin and direction on the 1 mm grid,
    so the source → model map is a per-axis scaling and shift; then the map is
    interpolated separably, one model plane at a time, into the region of the
    output that the crop covers (≈0.15 s for 300×512² from 256³ on a 2-core Intel Xeon VM,
    no full-volume temporaries). A geometry whose axes are not parallel falls
    back to a SimpleITK linear resample (same values).
    """
    size = geometry.model_size_zyx
    m = _as_model_map(map_model, size)
    a, b = source_to_model_affine(geometry)
    out_shape = geometry.source.shape_zyx
    if out is None:
        out = np.empty(out_shape, dtype=np.float32)
    elif out.shape != out_shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {out_shape}")
    off = np.abs(a - np.diag(np.diag(a))).max()
    if off > 1e-9 * np.abs(np.diag(a)).max():
        out[...] = _to_source_sitk(m, geometry)
        return out
    # source index s → model coordinate a·s + b; the half-voxel edge of F.interpolate and ITK
    az, ay, ax = (axis_lerp(float(a[k, k]), float(b[k]), out_shape[k], size[k]) for k in range(3))
    if az.hi <= az.lo or ay.hi <= ay.lo or ax.hi <= ax.lo:
        out.fill(0.0)
        return out
    # 0 outside the region filled below (the rest is written once)
    out[: az.lo] = 0.0
    out[az.hi :] = 0.0
    inside = out[az.lo : az.hi]
    inside[:, : ay.lo] = 0.0
    inside[:, ay.hi :] = 0.0
    inside[:, ay.lo : ay.hi, : ax.lo] = 0.0
    inside[:, ay.lo : ay.hi, ax.hi :] = 0.0
    # NumPy on planes: each step is a 512² plane, too small for torch's thread pool, whose
    # hand-offs cost more than the arithmetic (seconds when other processes load the cores);
    # ``threads`` Python threads fill runs of slices apart (NumPy releases the GIL)
    mm = m.numpy()
    n = az.hi - az.lo
    parts = max(1, min(threads, n // 16))
    cuts = [az.lo + n * k // parts for k in range(parts + 1)]
    if parts == 1:
        _fill_slices(out, mm, az, ay, ax, cuts[0], cuts[1])
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=parts, thread_name_prefix="s4ct-to-source") as pool:
            jobs = [pool.submit(_fill_slices, out, mm, az, ay, ax, a, b) for a, b in itertools.pairwise(cuts)]
            for job in jobs:
                job.result()
    return out


def _fill_slices(
    out: F32Array, mm: F32Array, az: AxisLerp, ay: AxisLerp, ax: AxisLerp, lo: int, hi: int
) -> None:
    """Source slices ``lo:hi`` of :func:`to_source`: model planes interpolated in (x, y), then in z."""
    xw, yw = ax.w1, ay.w1[:, None]
    cache: dict[int, F32Array] = {}

    def plane(i: int) -> F32Array:
        """Model plane i interpolated onto the source (rows, columns) region."""
        p = cache.get(i)
        if p is None:
            q = mm[i]
            q0 = np.take(q, ax.i0, axis=1)  # np.take: far faster than fancy indexing on columns
            q = q0 + (np.take(q, ax.i1, axis=1) - q0) * xw
            r0 = np.take(q, ay.i0, axis=0)
            p = r0 + (np.take(q, ay.i1, axis=0) - r0) * yw
            cache[i] = p
        return p

    for s in range(lo, hi):
        i0, i1 = int(az.i0[s - az.lo]), int(az.i1[s - az.lo])
        p0, p1 = plane(i0), plane(i1)
        for k in [k for k in cache if k not in (i0, i1)]:
            del cache[k]
        dst = out[s, ay.lo : ay.hi, ax.lo : ax.hi]
        np.subtract(p1, p0, out=dst)
        dst *= az.w1[s - az.lo]
        dst += p0


def _sitk_image(array_zyx: npt.NDArray[Any], geom: VolumeGeometry) -> Any:
    import SimpleITK as sitk  # noqa: N813

    img = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx))
    img.SetSpacing([float(v) for v in geom.spacing_mm])
    img.SetOrigin([float(v) for v in geom.origin_mm])
    img.SetDirection([float(v) for v in geom.direction])
    return img


def _to_source_sitk(m: torch.Tensor, geometry: PreprocessGeometry) -> F32Array:
    """General path of :func:`to_source`: SimpleITK linear resample, 0 outside."""
    import SimpleITK as sitk  # noqa: N813

    src = geometry.source
    img = _sitk_image(m.numpy(), geometry.model_grid())
    out = sitk.Resample(
        img,
        [int(v) for v in src.size],
        sitk.Transform(),
        sitk.sitkLinear,
        [float(v) for v in src.origin_mm],
        [float(v) for v in src.spacing_mm],
        [float(v) for v in src.direction],
        0.0,
        sitk.sitkFloat32,
    )
    arr: F32Array = sitk.GetArrayFromImage(out)
    return arr
