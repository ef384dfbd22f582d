"""Tests of ml.preprocess: exactness against the plain reference, geometry record, pitfalls."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ml.errors import InputError
from ml.geometry import CTVolume, VolumeGeometry
from ml.preprocess import CropBox, PreprocessConfig, PreprocessGeometry, output_grid, preprocess

_REF_PATH = Path(__file__).resolve().parents[2] / "reference_preprocess.py"
_spec = importlib.util.spec_from_file_location("reference_preprocess", _REF_PATH)
assert _spec is not None and _spec.loader is not None
_ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_ref)
reference_from_config = _ref.reference_from_config

REPO = Path(__file__).resolve().parents[3]
SMALL = PreprocessConfig(target_size=(64, 64, 64))

FLIP_YZ = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0)
# coronal: x index → L, y index (rows) → inferior, z index (slices) → posterior
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0)


def rot_z(deg: float) -> tuple[float, ...]:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)


def chest_hu(
    geom: VolumeGeometry,
    *,
    seed: int = 0,
    body_z_frac: tuple[float, float] = (0.0, 1.0),
    lesion_lps: tuple[float, float, float] | None = None,
) -> np.ndarray[Any, Any]:
    """A chest-like HU volume (z, y, x) on ``geom``, defined in LPS so any direction works.

    Body: elliptic cylinder (~0 HU) along the superior axis, two lung ellipsoids
    (-850 HU), a table slab (+200 HU) posterior to the body (all within ``body_z_frac``), air (-1024) outside,
    noise. Optional bright sphere (+800 HU, r = 6 mm) at ``lesion_lps``.
    """
    rng = np.random.default_rng(seed)
    nx, ny, nz = geom.size
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    idx = np.stack([i, j, k], axis=-1).reshape(-1, 3)
    lps = geom.index_to_lps(idx).reshape(nz, ny, nx, 3)
    # centre of the volume in LPS
    c = geom.index_to_lps(np.asarray(geom.size, float)[None] / 2.0 - 0.5)[0]
    x, y, z = lps[..., 0] - c[0], lps[..., 1] - c[1], lps[..., 2] - c[2]
    ext = np.abs(geom.direction_matrix @ (np.asarray(geom.size) * np.asarray(geom.spacing_mm)))
    ax, ay, az = 0.34 * ext[0], 0.30 * ext[1], ext[2]
    hu = np.full(x.shape, -1024.0)
    zlo, zhi = (-0.5 + body_z_frac[0]) * az, (-0.5 + body_z_frac[1]) * az
    in_z = (z >= zlo) & (z <= zhi)
    body = ((x / ax) ** 2 + (y / ay) ** 2 <= 1.0) & in_z
    hu[body] = 20.0
    for sx in (-0.45, 0.45):
        lung = (((x - sx * ax) / (0.35 * ax)) ** 2 + (y / (0.6 * ay)) ** 2 <= 1.0) & in_z
        hu[lung] = -850.0
    table = (y > 1.08 * ay) & (y < 1.08 * ay + 6.0) & (np.abs(x) < 0.40 * ext[0]) & in_z
    hu[table] = 200.0
    if lesion_lps is not None:
        d2 = sum((lps[..., a] - lesion_lps[a]) ** 2 for a in range(3))
        hu[d2 <= 36.0] = 800.0
    # noise: σ 8 HU in the body, σ 3 HU in air (so that air stays below -1000 and the crop matters)
    hu += rng.normal(0.0, 1.0, hu.shape) * np.where(hu > -1000.0, 8.0, 3.0)
    return hu


def make_volume(
    geom: VolumeGeometry, *, dtype: str = "int16", slope: float = 1.0, intercept: float = -1024.0, **kw: Any
) -> CTVolume:
    hu = chest_hu(geom, **kw)
    stored = (hu - intercept) / slope
    if dtype == "float32":
        arr = stored.astype(np.float32)
    else:
        info = np.iinfo(dtype)
        arr = np.clip(np.rint(stored), info.min, info.max).astype(dtype)
    return CTVolume(stored=arr, slope=slope, intercept=intercept, geometry=geom)


def check_against_reference(vol: CTVolume, cfg: PreprocessConfig = SMALL) -> tuple[Any, torch.Tensor]:
    res = preprocess(vol, cfg)
    ref, ref_box = reference_from_config(vol, cfg)
    t = res.tensor
    assert t.dtype == torch.float32 and t.is_contiguous()
    assert tuple(t.shape) == (1, 1, *cfg.target_size)
    assert float(t.min()) >= -1.0 and float(t.max()) <= 1.0
    assert (res.crop_box.start_zyx, res.crop_box.stop_zyx) == ref_box, f"{res.crop_box} != {ref_box}"
    a, b = t.double().ravel().numpy(), ref.double().ravel().numpy()
    diff = float(np.abs(a - b).max())
    r = float(np.corrcoef(a, b)[0, 1])
    assert r >= 0.99999 and diff < 1e-4, f"r={r:.9f} max_abs={diff:.3g}"
    return res, ref


# --------------------------------------------------------------------------- exactness vs the reference

CASES: dict[str, tuple[VolumeGeometry, dict[str, Any]]] = {
    "axial_identity_int16": (
        VolumeGeometry(size=(96, 96, 48), spacing_mm=(0.7, 0.7, 1.0), origin_mm=(-33.0, -40.0, -120.0)),
        {},
    ),
    "anisotropic_2p5mm_partial_z": (
        VolumeGeometry(size=(96, 90, 40), spacing_mm=(0.7, 0.7, 2.5), origin_mm=(10.0, 20.0, 30.0)),
        {"body_z_frac": (0.1, 0.8)},
    ),
    "flipped_yz_negative_slope": (
        VolumeGeometry(
            size=(80, 96, 40), spacing_mm=(0.8, 0.75, 2.5), origin_mm=(5.0, 60.0, 200.0), direction=FLIP_YZ
        ),
        {"slope": -2.0, "intercept": 1000.0, "body_z_frac": (0.2, 0.9)},
    ),
    "coronal_uint16": (
        VolumeGeometry(
            size=(90, 40, 80), spacing_mm=(0.8, 2.0, 0.9), origin_mm=(-40.0, 0.0, 50.0), direction=CORONAL
        ),
        {"dtype": "uint16", "body_z_frac": (0.15, 0.85)},
    ),
    "oblique_float_hu": (
        VolumeGeometry(
            size=(88, 88, 36), spacing_mm=(0.75, 0.75, 3.0), origin_mm=(1.5, -2.5, 7.0), direction=rot_z(12.0)
        ),
        {"dtype": "float32", "slope": 1.0, "intercept": 0.0, "body_z_frac": (0.0, 0.7)},
    ),
    "odd_spacing_half_slope": (
        VolumeGeometry(size=(70, 66, 31), spacing_mm=(1.35, 1.15, 3.3), origin_mm=(0.0, 0.0, 0.0)),
        {"slope": 0.5, "intercept": -1024.0, "body_z_frac": (0.3, 1.0)},
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_fast_path_matches_reference(name: str) -> None:
    geom, kw = CASES[name]
    vol = make_volume(geom, **kw)
    res, _ = check_against_reference(vol)
    assert not res.exact_fallback
    # the crop must actually remove something in these layouts (the body box matters)
    grid = output_grid(geom, (1.0, 1.0, 1.0))
    assert np.prod(res.crop_box.shape_zyx) < np.prod(grid.shape_zyx)
    assert set(res.timings_s) >= {"resample", "resize", "total"}


def test_default_256_cube_matches_reference() -> None:
    geom = VolumeGeometry(size=(160, 150, 60), spacing_mm=(1.4, 1.4, 2.5), origin_mm=(-110.0, -100.0, -70.0))
    vol = make_volume(geom, body_z_frac=(0.05, 0.9), seed=3)
    res, _ = check_against_reference(vol, PreprocessConfig())
    assert tuple(res.tensor.shape) == (1, 1, 256, 256, 256)


def test_outside_fill_is_air_not_zero() -> None:
    """With round(n·spacing) the last 1 mm slice lies past the data: it must be air, not 0 HU."""
    geom = VolumeGeometry(size=(64, 64, 40), spacing_mm=(1.0, 1.0, 2.5), origin_mm=(0.0, 0.0, 0.0))
    grid = output_grid(geom, (1.0, 1.0, 1.0))
    assert grid.size[2] == 100 and 99 / 2.5 > 40 - 0.5  # last sample is outside ITK's half-voxel border
    for kw in ({}, {"slope": -2.0, "intercept": 1000.0}, {"dtype": "uint16"}):
        vol = make_volume(geom, body_z_frac=(0.1, 0.7), **kw)
        res, _ = check_against_reference(vol)
        assert res.crop_box.stop_zyx[0] < 100, kw
        # the pitfall itself: a 0-HU fill survives the crop and extends the box to the end
        res0, _ = check_against_reference(
            vol, PreprocessConfig(target_size=(32, 32, 32), outside_value_hu=0.0)
        )
        assert res0.crop_box.stop_zyx[0] == 100, kw


def test_threshold_ties_fall_back_to_exact() -> None:
    """A shell at exactly -1000 HU is *not* body (strict >): the fast path must agree exactly."""
    geom = VolumeGeometry(size=(60, 60, 30), spacing_mm=(0.9, 0.9, 1.7), origin_mm=(0.0, 0.0, 0.0))
    hu = np.full(geom.shape_zyx, -1024.0, dtype=np.float32)
    hu[2:-2, 3:-3, 3:-3] = -1000.0  # exact tie everywhere in the shell
    hu[10:20, 20:40, 15:45] = 40.0
    vol = CTVolume(stored=(hu + 1024).astype(np.int16), slope=1.0, intercept=-1024.0, geometry=geom)
    res, _ = check_against_reference(vol)
    assert res.exact_fallback


def test_empty_volume_raises_input_error() -> None:
    geom = VolumeGeometry(size=(32, 32, 10), spacing_mm=(1.0, 1.0, 2.0), origin_mm=(0.0, 0.0, 0.0))
    air = np.zeros(geom.shape_zyx, dtype=np.int16)  # -1024 HU
    for arr in (air, air + 24):  # all air; all exactly -1000 (not > -1000)
        vol = CTVolume(stored=arr, slope=1.0, intercept=-1024.0, geometry=geom)
        with pytest.raises(InputError) as ei:
            preprocess(vol, SMALL)
        assert ei.value.code == "no_usable_series"
        with pytest.raises(InputError):
            reference_from_config(vol, SMALL)


@pytest.mark.parametrize("spacing", [200.0, 1e12, 1e30], ids=["region", "grid", "int64"])
def test_implausible_spacing_is_refused_before_allocating(spacing: float) -> None:
    """Hostile PixelSpacing asks for a huge 1 mm grid: dicom_invalid, never an overflow or a 49 GB array."""
    geom = VolumeGeometry(size=(32, 32, 10), spacing_mm=(spacing, spacing, 2.0), origin_mm=(0.0, 0.0, 0.0))
    stored = np.full(geom.shape_zyx, 1064, dtype=np.int16)  # +40 HU everywhere: all body
    vol = CTVolume(stored=stored, slope=1.0, intercept=-1024.0, geometry=geom)
    with pytest.raises(InputError) as ei:
        preprocess(vol, SMALL)
    assert ei.value.code == "dicom_invalid"


# --------------------------------------------------------------------------- geometry record


def test_model_index_convention() -> None:
    src = VolumeGeometry(size=(10, 10, 10), spacing_mm=(1.0, 1.0, 1.0), origin_mm=(0.0, 0.0, 0.0))
    g = PreprocessGeometry(src, src, CropBox((1, 2, 3), (9, 10, 7)), (4, 16, 8))
    # z: n_crop 8 → 4 (scale 2); y: 8 → 16 (0.5); x: 4 → 8 (0.5)
    got = g.model_to_resampled_index([[0.0, 0.0, 0.0], [3.0, 15.0, 7.0]])
    exp = np.array([[1 + 0.5, 2 - 0.25, 3 - 0.25], [1 + 7.0 - 0.5, 2 + 7.25, 3 + 3.25]])
    np.testing.assert_allclose(got, exp)
    np.testing.assert_allclose(g.resampled_index_to_model(got), [[0, 0, 0], [3, 15, 7]], atol=1e-12)


@pytest.mark.parametrize("name", ["flipped_yz_negative_slope", "coronal_uint16", "oblique_float_hu"])
def test_lesion_maps_back_to_its_lps_position(name: str) -> None:
    geom, kw = CASES[name]
    centre_idx = np.asarray(geom.size, float) / 2.0 - 0.5
    lesion = geom.index_to_lps(centre_idx + np.array([7.3, -4.1, 2.2]) / np.asarray(geom.spacing_mm))
    vol = make_volume(geom, lesion_lps=tuple(lesion), **kw)
    res = preprocess(vol, SMALL)
    g = res.geometry
    t = res.tensor[0, 0].numpy().astype(np.float64)
    w = np.clip(t - 0.6, 0.0, None)  # lesion 800 HU → clipped to 1.0; body ≈ 0.3
    zz, yy, xx = np.indices(t.shape)
    centroid_zyx = np.array([(w * a).sum() for a in (zz, yy, xx)]) / w.sum()
    lps = g.model_to_lps(centroid_zyx[None])[0]
    assert np.linalg.norm(lps - lesion) < 1.0, (lps, lesion)
    # and the lesion's LPS/source position maps to that model voxel
    np.testing.assert_allclose(g.lps_to_model(lesion[None])[0], centroid_zyx, atol=1.0)
    src_zyx = geom.lps_to_index(lesion[None])[0][::-1]
    np.testing.assert_allclose(
        g.source_index_to_model(src_zyx[None])[0], g.lps_to_model(lesion[None])[0], atol=1e-9
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_geometry_round_trips(name: str) -> None:
    geom, kw = CASES[name]
    res = preprocess(make_volume(geom, **kw), SMALL)
    g = res.geometry
    rng = np.random.default_rng(1)
    m = rng.uniform(-0.5, 63.5, size=(200, 3))
    np.testing.assert_allclose(g.source_index_to_model(g.model_to_source_index(m)), m, atol=1e-9)
    np.testing.assert_allclose(g.lps_to_model(g.model_to_lps(m)), m, atol=1e-9)
    # the source index of a model point is the same physical point
    np.testing.assert_allclose(
        geom.index_to_lps(g.model_to_source_index(m)[:, ::-1]), g.model_to_lps(m), atol=1e-9
    )
    # model_grid() describes the same mapping; shapes (..., 3) are kept
    mg = g.model_grid()
    np.testing.assert_allclose(mg.index_to_lps(m[:, ::-1]), g.model_to_lps(m), atol=1e-9)
    assert g.model_to_lps(m.reshape(10, 20, 3)).shape == (10, 20, 3)
    # JSON round trip
    g2 = PreprocessGeometry.from_dict(json.loads(json.dumps(g.to_dict())))
    assert g2 == g


# --------------------------------------------------------------------------- config & imports


def test_config_round_trip_and_validation() -> None:
    cfg = PreprocessConfig(
        target_size=(128, 160, 160),
        spacing_mm=(1.0, 1.0, 1.5),
        hu_window=(-1100.0, 500.0),
        crop_margin_voxels=3,
    )
    assert PreprocessConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert PreprocessConfig.from_dict({}) == PreprocessConfig()
    with pytest.raises(ValueError):
        PreprocessConfig.from_dict({"target_sise": [1, 2, 3]})
    for bad in (
        {"hu_window": (600.0, -1000.0)},
        {"target_size": (0, 1, 1)},
        {"interpolation": "cubic"},
        {"resize_mode": "bicubic"},
        {"spacing_mm": (1.0, 0.0, 1.0)},
    ):
        with pytest.raises(ValueError):
            PreprocessConfig(**bad)


def test_import_does_not_load_torch() -> None:
    code = "import sys, ml.preprocess; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
