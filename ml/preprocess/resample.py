"""Linear resampling onto a grid with the same origin and direction: separable, in float32.

The seed pipeline's 1 mm grid keeps the source series' origin and direction, so grid index
``j`` along an axis is the source's continuous index ``j · out_mm / source_mm``: trilinear
interpolation is three 1-D linear interpolations, one axis after the other, computed here with
NumPy one slice at a time, runs of slices on a few threads (no full-volume float64 or boolean temporaries;
``np.take`` gathers along the last axis ~40× faster than torch's ``index_select``). The values
are SimpleITK's linear ``Resample`` (what the reference pipeline runs) to float32 round-off:
a point whose continuous index lies within half a voxel outside the first or last source
voxel takes the edge value (ITK's buffer with its half-voxel margin), points further out take
``default_value``; ITK's upper bound is exclusive (a point exactly half a voxel beyond the
last voxel is outside).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["AxisLerp", "Extremes", "axis_lerp", "resample_parallel"]

F32Array = npt.NDArray[np.float32]
_TOL = 1e-6  # continuous-index slack for round-off in the spacing ratio


@dataclass(frozen=True)
class AxisLerp:
    """Linear interpolation along one axis for output indices [lo, hi) (the others are outside).

    Output index ``lo + i`` is ``(1 − w1[i]) · v[i0[i]] + w1[i] · v[i1[i]]`` of the source line ``v``.
    """

    lo: int
    hi: int
    i0: npt.NDArray[np.int64]
    i1: npt.NDArray[np.int64]
    w1: F32Array


@dataclass
class Extremes:
    """The largest (``above``) or smallest values of a resampled region, taken before its clip.

    ``z[j]``: the extreme of plane ``j``; ``yx``: the extreme along z of each (y, x) line. Filled
    by :func:`resample_parallel` while each plane is in cache (no pass over the region after it).
    """

    above: bool
    z: F32Array = field(default_factory=lambda: np.zeros(0, np.float32))
    yx: F32Array = field(default_factory=lambda: np.zeros((0, 0), np.float32))


def axis_lerp(a: float, b: float, n_out: int, n_src: int, *, upper_inclusive: bool = True) -> AxisLerp:
    """Output indices whose source coordinate ``a·j + b`` lies within [−0.5, n_src − 0.5].

    Inside the half-voxel border the coordinate is clamped to the edge voxel (the behaviour
    of ``F.interpolate(align_corners=False)`` and ITK). ``upper_inclusive=False``: ITK's
    resampling, whose buffer ends just before ``n_src − 0.5``.
    """
    c = a * np.arange(n_out, dtype=np.float64) + b
    upper = n_src - 0.5 + _TOL if upper_inclusive else n_src - 0.5 - _TOL
    ok = np.flatnonzero((c >= -0.5 - _TOL) & (c <= upper))
    if ok.size == 0:
        z = np.zeros(0, np.int64)
        return AxisLerp(0, 0, z, z, np.zeros(0, np.float32))
    lo, hi = int(ok[0]), int(ok[-1]) + 1
    c = np.clip(c[lo:hi], 0.0, n_src - 1.0)
    i0 = np.minimum(np.floor(c).astype(np.int64), max(n_src - 2, 0))
    i1 = np.minimum(i0 + 1, n_src - 1)
    w1 = (c - i0).astype(np.float32)
    return AxisLerp(lo, hi, i0, i1, w1)


def _lerp_axis(a: F32Array, ax: AxisLerp, axis: int) -> F32Array:
    """Linear interpolation of ``a`` along ``axis`` (the valid output range only), float32."""
    shape = [1] * a.ndim
    shape[axis] = -1
    v0 = np.take(a, ax.i0, axis=axis)  # np.take: a fast gather, also along the last axis
    v1 = np.take(a, ax.i1, axis=axis)
    v1 -= v0
    v1 *= ax.w1.reshape(shape)
    v1 += v0
    return v1


def resample_parallel(
    array_zyx: npt.NDArray[Any],
    ratio_zyx: tuple[float, float, float],
    lo_zyx: tuple[int, int, int],
    shape_zyx: tuple[int, int, int],
    default_value: float,
    *,
    scale: tuple[float, float] | None = None,
    extremes: Extremes | None = None,
    threads: int = 2,
) -> F32Array:
    """Grid points ``lo + (0 … shape − 1)`` (z, y, x) of a grid whose index j is source index j · ratio.

    Returns float32 (z, y, x) of ``shape_zyx``: SimpleITK's linear resample of ``array_zyx``
    onto those points with ``default_value`` outside. ``scale=(slope, intercept)`` converts each
    source value to ``value · slope + intercept`` in float32 first (as :meth:`CTVolume.hu`).
    ``extremes``: filled with the region's plane and (y, x) extremes, each plane's as soon as
    it is made (while it is in cache).
    ``threads``: slabs computed concurrently (the result does not depend on it).
    """
    n_src = array_zyx.shape
    axes = [
        axis_lerp(ratio_zyx[k], ratio_zyx[k] * lo_zyx[k], shape_zyx[k], n_src[k], upper_inclusive=False)
        for k in range(3)
    ]
    az, ay, ax = axes
    if extremes is not None:
        extremes.z = np.empty(shape_zyx[0], np.float32)
    if az.hi <= az.lo or ay.hi <= ay.lo or ax.hi <= ax.lo:
        out = np.full(shape_zyx, np.float32(default_value), dtype=np.float32)
        _finish(out, range(0, 0), [], extremes)
        return out
    out = np.empty(shape_zyx, dtype=np.float32)  # written once: the valid points below, the rest here
    fill = np.float32(default_value)
    out[: az.lo] = fill
    out[az.hi :] = fill
    out[az.lo : az.hi, : ay.lo] = fill
    out[az.lo : az.hi, ay.hi :] = fill
    out[az.lo : az.hi, ay.lo : ay.hi, : ax.lo] = fill
    out[az.lo : az.hi, ay.lo : ay.hi, ax.hi :] = fill
    # the source rows and columns the valid points need
    y_lo, y_hi = int(min(ay.i0.min(), ay.i1.min())), int(max(ay.i0.max(), ay.i1.max())) + 1
    x_lo, x_hi = int(min(ax.i0.min(), ax.i1.min())), int(max(ax.i0.max(), ax.i1.max())) + 1
    ay_rel = AxisLerp(ay.lo, ay.hi, ay.i0 - y_lo, ay.i1 - y_lo, ay.w1)
    ax_rel = AxisLerp(ax.lo, ax.hi, ax.i0 - x_lo, ax.i1 - x_lo, ax.w1)

    def in_plane(z: int) -> F32Array:
        """Source slice ``z`` interpolated onto the output's (y, x) points."""
        plane = np.array(array_zyx[z, y_lo:y_hi, x_lo:x_hi], dtype=np.float32)  # a copy, never a view
        if scale is not None and scale[0] != 1.0:
            plane *= np.float32(scale[0])
        if scale is not None and scale[1] != 0.0:
            plane += np.float32(scale[1])
        return _lerp_axis(_lerp_axis(plane, ay_rel, 0), ax_rel, 1)

    accs: list[F32Array] = []

    def plane(j: int, cache: dict[int, F32Array]) -> None:
        """Output plane j from two interpolated source slices (``cache`` keeps the last two)."""
        k = j - az.lo
        z0, z1 = int(az.i0[k]), int(az.i1[k])
        for z in [z for z in cache if z not in (z0, z1)]:
            del cache[z]
        p0 = cache[z0] if z0 in cache else cache.setdefault(z0, in_plane(z0))
        dst = out[j, ay.lo : ay.hi, ax.lo : ax.hi]
        if az.w1[k] == 0:  # on a source slice (e.g. the same slice spacing): (p1 − p0)·0 + p0
            np.copyto(dst, p0)
            return
        p1 = cache[z1] if z1 in cache else cache.setdefault(z1, in_plane(z1))
        np.subtract(p1, p0, out=dst)
        dst *= az.w1[k]
        dst += p0

    def along_z(j0: int, j1: int) -> None:
        """Output planes j0 … j1 − 1 (and their extremes when asked)."""
        cache: dict[int, F32Array] = {}
        acc = None if extremes is None else _start_projection(shape_zyx, extremes.above)
        if acc is not None:
            accs.append(acc)
        for j in range(j0, j1):
            plane(j, cache)
            if acc is not None and extremes is not None:
                _plane_done(out[j], j, acc, extremes)

    # NumPy releases the GIL in these loops: runs of output planes on ``threads`` threads, each
    # holding two interpolated slices at a time (no array of every interpolated source slice)
    n = max(1, threads)
    bounds = np.linspace(az.lo, az.hi, n + 1).astype(int)
    if n == 1:
        along_z(az.lo, az.hi)
    else:
        with ThreadPoolExecutor(max_workers=n) as pool:
            list(pool.map(along_z, bounds[:-1], bounds[1:]))
    _finish(out, range(az.lo, az.hi), accs, extremes)
    return out


def _start_projection(shape_zyx: tuple[int, int, int], above: bool) -> F32Array:
    return np.full(shape_zyx[1:], -np.inf if above else np.inf, np.float32)


def _plane_done(plane: F32Array, j: int, acc: F32Array, extremes: Extremes) -> None:
    """Plane ``j`` of the region is written: its extreme into ``extremes.z``, its values into ``acc``."""
    if extremes.above:
        extremes.z[j] = plane.max()
        np.maximum(acc, plane, out=acc)
    else:
        extremes.z[j] = plane.min()
        np.minimum(acc, plane, out=acc)


def _finish(out: F32Array, made: range, accs: list[F32Array], extremes: Extremes | None) -> None:
    """The planes outside ``made`` (all fill) into the extremes; the threads' projections joined."""
    if extremes is None:
        return
    acc = _start_projection((out.shape[0], out.shape[1], out.shape[2]), extremes.above)
    for j in range(out.shape[0]):
        if j not in made:
            _plane_done(out[j], j, acc, extremes)
    join = np.maximum if extremes.above else np.minimum
    for a in accs:
        join(acc, a, out=acc)
    extremes.yx = acc
