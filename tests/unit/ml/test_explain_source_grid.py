"""ml.explain.source_grid: model-space maps back on the source series grid (compared with SimpleITK)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
import torch
from test_preprocess import CASES, SMALL, make_volume

from ml.explain.source_grid import to_source
from ml.geometry import VolumeGeometry
from ml.preprocess import CropBox, PreprocessGeometry, preprocess


def gaussian_blob(
    shape: tuple[int, int, int], centre_zyx: np.ndarray[Any, Any], sigma: float
) -> np.ndarray[Any, Any]:
    """exp(-d² / 2σ²) around ``centre_zyx`` (voxels), float32 of ``shape``."""
    zz, yy, xx = np.indices(shape, dtype=np.float64)
    d2 = (zz - centre_zyx[0]) ** 2 + (yy - centre_zyx[1]) ** 2 + (xx - centre_zyx[2]) ** 2
    return np.exp(-d2 / (2 * sigma**2)).astype(np.float32)


def _weighted_centroid(a: np.ndarray[Any, Any], frac: float = 0.5) -> np.ndarray[Any, Any]:
    w = np.where(a > frac * a.max(), a, 0).astype(np.float64)
    idx = np.indices(a.shape, dtype=np.float64)
    return np.array([(w * i).sum() for i in idx]) / w.sum()


def _sitk_reference(m: np.ndarray[Any, Any], g: PreprocessGeometry) -> np.ndarray[Any, Any]:
    """Independent reference: the model map on model_grid(), resampled by SimpleITK onto the source."""
    mg, src = g.model_grid(), g.source
    img = sitk.GetImageFromArray(m)
    img.SetSpacing(mg.spacing_mm)
    img.SetOrigin(mg.origin_mm)
    img.SetDirection(mg.direction)
    out = sitk.Resample(
        img, src.size, sitk.Transform(), sitk.sitkLinear, src.origin_mm, src.spacing_mm, src.direction, 0.0
    )
    return sitk.GetArrayFromImage(out)


BLOB_CASES = [
    "axial_identity_int16",
    "anisotropic_2p5mm_partial_z",
    "flipped_yz_negative_slope",
    "coronal_uint16",
    "oblique_float_hu",
]


@pytest.mark.parametrize("name", BLOB_CASES)
def test_blob_on_a_lesion_maps_back_to_the_lesion(name: str) -> None:
    """A lesion at a known LPS point: a blob where it shows in the model input lands on it in the source."""
    geom, kw = CASES[name]
    centre_idx = np.asarray(geom.size, float) / 2.0 - 0.5
    lesion = geom.index_to_lps(centre_idx + np.array([9.3, -6.1, 4.2]) / np.asarray(geom.spacing_mm))
    res = preprocess(make_volume(geom, lesion_lps=tuple(lesion), **kw), SMALL)
    t = res.tensor[0, 0].numpy()
    seen_zyx = _weighted_centroid(np.clip(t - 0.6, 0, None), frac=0.0)  # lesion 800 HU → 1.0, body ≈ 0.3
    blob = gaussian_blob(res.geometry.model_size_zyx, seen_zyx, sigma=1.5)

    src = to_source(blob, res.geometry)
    assert src.dtype == np.float32 and src.shape == geom.shape_zyx and src.flags.c_contiguous
    found = geom.index_to_lps(_weighted_centroid(src)[::-1])
    peak = geom.index_to_lps(np.array(np.unravel_index(np.argmax(src), src.shape), float)[::-1])
    assert np.linalg.norm(found - lesion) <= 2.0, (found, lesion)
    assert np.linalg.norm(peak - lesion) <= 2.0 + np.linalg.norm(geom.spacing_mm) / 2, (peak, lesion)

    # the same values as SimpleITK's linear resample of the map on model_grid()
    np.testing.assert_allclose(src, _sitk_reference(blob, res.geometry), atol=2e-6)


@pytest.mark.parametrize("name", ["axial_identity_int16", "flipped_yz_negative_slope"])
def test_to_source_is_zero_outside_the_crop_box_and_positive_inside(name: str) -> None:
    geom, kw = CASES[name]
    res = preprocess(make_volume(geom, **kw), SMALL)
    g = res.geometry
    src = to_source(torch.ones((1, 1, *g.model_size_zyx)), g)  # tensor input, batch dims dropped
    assert src.shape == geom.shape_zyx
    # 1 mm-grid continuous index of every source voxel (same origin/direction: per-axis scaling)
    ratio = np.asarray(geom.spacing_mm)[::-1] / np.asarray(g.resampled.spacing_mm)[::-1]
    strict = np.ones(src.shape, dtype=bool)
    loose = np.ones(src.shape, dtype=bool)
    for axis in range(3):
        r = np.arange(src.shape[axis]) * ratio[axis]
        lo, hi = g.crop.start_zyx[axis] - 0.5, g.crop.stop_zyx[axis] - 0.5  # the crop's voxel edges
        shape = [1, 1, 1]
        shape[axis] = -1
        strict &= ((r > lo + 1e-6) & (r < hi - 1e-6)).reshape(shape)
        loose &= ((r >= lo - 1e-6) & (r <= hi + 1e-6)).reshape(shape)
    assert np.all(src[~loose] == 0) and np.allclose(src[strict], 1.0)
    assert 0 < strict.sum() < strict.size  # the crop removed something
    with pytest.raises(ValueError, match="model map must have shape"):
        to_source(np.zeros((4, 4, 4), np.float32), g)
    buf = np.full(geom.shape_zyx, 7.0, np.float32)  # a reused buffer: filled, zeros outside
    assert to_source(np.ones(g.model_size_zyx, np.float32), g, out=buf) is buf
    np.testing.assert_array_equal(buf, src)
    # runs of slices filled by threads: the same bits as one thread (this crop spans ≥ 32 slices)
    blob = gaussian_blob(g.model_size_zyx, np.asarray(g.model_size_zyx) / 2.0, sigma=9.0)
    one = to_source(blob, g, threads=1)
    for threads in (2, 3):
        np.testing.assert_array_equal(to_source(blob, g, out=np.full_like(buf, np.nan), threads=threads), one)
    with pytest.raises(ValueError, match="out must be"):
        to_source(np.ones(g.model_size_zyx, np.float32), g, out=np.zeros(geom.shape_zyx, np.float64))


def test_to_source_general_path_for_non_parallel_grids() -> None:
    """A 1 mm grid rotated against the source (not produced by the pipeline) goes through SimpleITK."""
    src = VolumeGeometry(size=(40, 36, 20), spacing_mm=(0.8, 0.8, 2.0), origin_mm=(-16.0, -14.0, -20.0))
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    rot = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)
    grid = VolumeGeometry(
        size=(40, 40, 40), spacing_mm=(1.0, 1.0, 1.0), origin_mm=(-20.0, -20.0, -20.0), direction=rot
    )
    g = PreprocessGeometry(src, grid, CropBox((2, 3, 4), (38, 37, 36)), (16, 16, 16))
    target = np.array([3.0, -2.0, 1.0])  # LPS mm
    blob = gaussian_blob((16, 16, 16), g.lps_to_model(target[None])[0], sigma=1.2)
    out = to_source(blob, g)
    assert out.shape == src.shape_zyx
    found = src.index_to_lps(_weighted_centroid(out)[::-1])
    assert np.linalg.norm(found - target) <= 2.0, found
