"""The separable linear resampling of the preprocessing: SimpleITK's values, its edges and fill."""

from __future__ import annotations

import numpy as np
import pytest

from ml.geometry import VolumeGeometry
from ml.preprocess.geometry import output_grid
from ml.preprocess.pipeline import _resample_region
from ml.preprocess.resample import Extremes, axis_lerp, resample_parallel

CASES = [
    ((40, 36, 20), (0.7, 0.7, 2.0)),  # 2 mm slices: the last 1 mm plane lies exactly on the buffer's edge
    ((33, 31, 17), (1.35, 1.15, 3.3)),
    ((64, 64, 30), (0.5, 0.5, 2.5)),
    ((50, 40, 31), (2.0, 2.0, 2.0)),  # upsampling
    ((47, 52, 23), (0.63, 0.63, 1.0)),
]


@pytest.mark.parametrize(("size", "spacing"), CASES)
def test_matches_simpleitk_with_its_edges_and_fill(
    size: tuple[int, int, int], spacing: tuple[float, ...]
) -> None:
    rng = np.random.default_rng(sum(size))
    geom = VolumeGeometry(size=size, spacing_mm=spacing, origin_mm=(1.0, 2.0, 3.0))
    grid = output_grid(geom, (1.0, 1.0, 1.0))
    arr = rng.integers(0, 3000, geom.shape_zyx).astype(np.uint16)
    ratio = tuple(float(o / s) for o, s in zip(grid.spacing_mm[::-1], geom.spacing_mm[::-1], strict=True))
    n = np.asarray(grid.shape_zyx, np.int64)
    for lo, hi in ((np.zeros(3, np.int64), n - 1), (np.array([2, 3, 1]), n - np.array([2, 3, 4]))):
        _, ref = _resample_region(arr, geom, grid, lo, hi, -5.0, "linear")
        shape = tuple(int(v) for v in hi - lo + 1)
        got = resample_parallel(arr, ratio, tuple(int(v) for v in lo), shape, -5.0)  # type: ignore[arg-type]
        assert got.dtype == np.float32 and got.shape == ref.shape
        assert np.array_equal(got == -5.0, ref == -5.0)  # the same points outside
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-3)  # float32 round-off of values ≤ 3000
        one = resample_parallel(arr, ratio, tuple(int(v) for v in lo), shape, -5.0, threads=1)  # type: ignore[arg-type]
        assert np.array_equal(one, got)


def test_scale_converts_to_hu_first() -> None:
    geom = VolumeGeometry(size=(30, 28, 12), spacing_mm=(0.8, 0.8, 2.5), origin_mm=(0.0, 0.0, 0.0))
    grid = output_grid(geom, (1.0, 1.0, 1.0))
    arr = np.random.default_rng(1).integers(0, 4000, geom.shape_zyx).astype(np.int16)
    ratio = tuple(float(o / s) for o, s in zip(grid.spacing_mm[::-1], geom.spacing_mm[::-1], strict=True))
    n = np.asarray(grid.shape_zyx, np.int64)
    _, ref = _resample_region(
        arr, geom, grid, np.zeros(3, np.int64), n - 1, -1024.0, "linear", (0.5, -1024.0)
    )
    got = resample_parallel(arr, ratio, (0, 0, 0), grid.shape_zyx, -1024.0, scale=(0.5, -1024.0))  # type: ignore[arg-type]
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-3)
    assert arr.dtype == np.int16 and int(arr.max()) < 4000  # the caller's array is untouched


def test_axis_lerp_upper_edge() -> None:
    inside = axis_lerp(0.5, 0.0, 10, 5)  # index 9 → source 4.5 = n − 0.5: the edge value
    itk = axis_lerp(0.5, 0.0, 10, 5, upper_inclusive=False)  # ITK: just outside
    assert (inside.lo, inside.hi, itk.hi) == (0, 10, 9)
    assert int(inside.i1[-1]) == 4 and float(inside.w1[-1]) == 1.0


@pytest.mark.parametrize("above", [True, False])
@pytest.mark.parametrize("threads", [1, 2])
def test_extremes_are_the_regions_projections(above: bool, threads: int) -> None:
    """The plane extremes and (y, x) projection taken while resampling, fill points included."""
    geom = VolumeGeometry(size=(30, 28, 12), spacing_mm=(0.8, 0.8, 2.5), origin_mm=(0.0, 0.0, 0.0))
    grid = output_grid(geom, (1.0, 1.0, 1.0))
    arr = np.random.default_rng(3).integers(0, 3000, geom.shape_zyx).astype(np.int16)
    ratio = tuple(float(o / s) for o, s in zip(grid.spacing_mm[::-1], geom.spacing_mm[::-1], strict=True))
    shape = tuple(int(n) + 4 for n in grid.shape_zyx)  # points beyond the source: fill planes and lines
    ext = Extremes(above)
    got = resample_parallel(arr, ratio, (0, 0, 0), shape, -5.0, extremes=ext, threads=threads)  # type: ignore[arg-type]
    assert (got == -5.0).any()
    reduce = np.max if above else np.min
    np.testing.assert_array_equal(ext.z, reduce(got, axis=(1, 2)))
    np.testing.assert_array_equal(ext.yx, reduce(got, axis=0))
