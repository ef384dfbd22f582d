"""ml.explain.files / save: NIfTI (world position, ITK), PNG sprite and viewer layers, stats.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
from PIL import Image
from test_explain_source_grid import gaussian_blob
from test_inference import tiny_entry, tiny_model
from test_preprocess import CASES, FLIP_YZ, make_volume

from ml.explain.files import round_mantissa, write_saliency
from ml.explain.methods import explain
from ml.explain.params import CT_PIXEL_FILES
from ml.explain.save import save_explanation
from ml.explain.source_grid import to_source
from ml.explain.stats import map_summary
from ml.geometry import VolumeGeometry
from ml.inference import Predictor
from ml.phantom import PhantomSpec, generate_phantom, write_series


def _blob_on(geom: VolumeGeometry, at_zyx: tuple[int, int, int], sigma: float = 1.5) -> np.ndarray[Any, Any]:
    m = gaussian_blob(geom.shape_zyx, np.asarray(at_zyx, float), sigma)
    m[at_zyx] = 1.0
    return m


NIFTI_GEOMS = {
    "axial": VolumeGeometry(size=(48, 40, 24), spacing_mm=(0.7, 0.7, 2.5), origin_mm=(-17.0, 30.0, 100.0)),
    "flipped_yz": VolumeGeometry(
        size=(48, 40, 24), spacing_mm=(0.8, 0.75, 2.5), origin_mm=(5.0, 60.0, 200.0), direction=FLIP_YZ
    ),
    "coronal": CASES["coronal_uint16"][0],
    # gantry tilt: the row axis leans 15° towards +z (a sheared grid; only the NIfTI sform holds it)
    "tilted": VolumeGeometry(
        size=(40, 36, 20),
        spacing_mm=(0.7, 0.7, 2.5),
        origin_mm=(-14.0, -12.0, 50.0),
        direction=(
            1.0,
            0.0,
            0.0,
            0.0,
            float(np.cos(np.radians(15))),
            0.0,
            0.0,
            float(np.sin(np.radians(15))),
            1.0,
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(NIFTI_GEOMS))
@pytest.mark.parametrize("encoding", ["uint8", "float32"])
def test_nifti_world_position_of_the_peak_equals_the_dicom_geometry(
    name: str, encoding: str, tmp_path: Path
) -> None:
    geom = NIFTI_GEOMS[name]
    nz, ny, nx = geom.shape_zyx
    at = (nz // 3, 2 * ny // 3, nx // 4)
    sal = _blob_on(geom, at)
    hu = make_volume(geom).hu()
    files = write_saliency(
        sal, geom, hu, tmp_path, method="gradcam", params={"layer": "layer4"}, nifti_dtype=encoding
    )

    img = nib.load(str(files.nifti))
    raw = np.asarray(img.dataobj.get_unscaled())
    assert raw.shape == geom.size  # (i, j, k) = (column, row, slice)
    enc = files.stats["nifti"]
    assert enc["dtype"] == encoding and raw.dtype == np.dtype(encoding)
    if encoding == "float32":
        assert np.array_equal(raw, sal.transpose(2, 1, 0))
        data = raw
    else:  # 8 bits: the readers apply scl_slope/scl_inter; the map's zeros stay 0
        slope, inter = float(img.dataobj.slope), float(img.dataobj.inter)
        assert slope == pytest.approx(enc["scl_slope"]) and inter == pytest.approx(enc["scl_inter"]) == 0.0
        assert enc["scl_slope"] == pytest.approx(sal.max() / 255) and raw.max() == 255
        data = img.get_fdata(dtype=np.float32)
        assert np.abs(data - sal.transpose(2, 1, 0)).max() <= enc["max_error"] * (1 + 1e-5)
        assert np.all(data[sal.transpose(2, 1, 0) == 0] == 0)
    ijk = np.unravel_index(np.argmax(data), data.shape)
    assert ijk == (at[2], at[1], at[0])
    ras = img.affine @ np.array([*ijk, 1.0])
    lps_from_nifti = ras[:3] * np.array([-1.0, -1.0, 1.0])
    lps_dicom = geom.index_to_lps(np.array(ijk, float))
    np.testing.assert_allclose(lps_from_nifti, lps_dicom, atol=1e-4)
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    np.testing.assert_allclose(img.get_sform(), geom.affine_ras(), atol=1e-5)
    if name == "tilted":
        return  # ITK cannot hold a sheared grid (its DICOM reader resamples tilted series)
    np.testing.assert_allclose(img.get_qform(), img.get_sform(), atol=1e-4)

    # ITK (3D Slicer's reader) sees the same grid as the DICOM geometry
    its = sitk.ReadImage(str(files.nifti))
    np.testing.assert_allclose(sitk.GetArrayFromImage(its), data.transpose(2, 1, 0), atol=1e-6)
    np.testing.assert_allclose(its.GetOrigin(), geom.origin_mm, atol=1e-4)
    np.testing.assert_allclose(its.GetSpacing(), geom.spacing_mm, atol=1e-5)
    np.testing.assert_allclose(its.GetDirection(), geom.direction, atol=1e-5)

    stats = json.loads(files.stats_json.read_text())
    assert stats == files.stats
    assert stats["peak"]["index_zyx"] == list(at) and stats["peak"]["index_ijk"] == [at[2], at[1], at[0]]
    np.testing.assert_allclose(stats["peak"]["lps_mm"], lps_dicom, atol=1e-6)
    assert stats["max"] == pytest.approx(1.0) and stats["method"] == "gradcam"
    assert stats["params"] == {"layer": "layer4"}
    top = stats["regions"][0]
    assert top["rank"] == 1 and top["peak_index_zyx"] == list(at)
    assert np.linalg.norm(np.asarray(top["centroid_lps_mm"]) - lps_dicom) < 1.0
    voxel_mm3 = float(np.prod(geom.spacing_mm))
    assert top["volume_mm3"] == pytest.approx(top["voxels"] * voxel_mm3)
    assert top["voxels"] == int((sal > 0.5).sum())
    assert top["sum"] == pytest.approx(float(sal[sal > 0.5].sum()), rel=1e-5)
    assert np.linalg.norm(np.asarray(top["weighted_centroid_lps_mm"]) - lps_dicom) < 0.5


def test_nifti_matches_a_dicom_series_read_by_simpleitk(tmp_path: Path) -> None:
    """A phantom written as real DICOM: SimpleITK reads the series and our NIfTI onto the same voxels."""
    ph = generate_phantom(
        PhantomSpec(
            seed=7,
            label=1,
            kinds=("nodule",),
            rows=48,
            cols=48,
            pixel_spacing_mm=7.0,
            slice_spacing_mm=6.0,
            orientation="coronal",
            noise_hu=0.0,
        )
    )
    geom = ph.geometry
    write_series(ph, tmp_path / "dcm")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "dcm")))
    dicom = reader.Execute()
    assert np.array_equal(sitk.GetArrayFromImage(dicom), ph.hu)  # same voxel order as the arrays

    lesion = np.asarray(ph.lesions[0].centre_lps_mm)
    at_xyz = np.rint(geom.lps_to_index(lesion)).astype(int)
    at = (int(at_xyz[2]), int(at_xyz[1]), int(at_xyz[0]))
    files = write_saliency(_blob_on(geom, at), geom, None, tmp_path / "out", peak_png=False)
    nii = sitk.ReadImage(str(files.nifti))
    assert nii.GetSize() == dicom.GetSize()
    np.testing.assert_allclose(nii.GetOrigin(), dicom.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(nii.GetSpacing(), dicom.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(nii.GetDirection(), dicom.GetDirection(), atol=1e-6)
    peak_xyz = tuple(
        int(v) for v in np.unravel_index(np.argmax(sitk.GetArrayFromImage(nii)), ph.hu.shape)[::-1]
    )
    p_nii = np.asarray(nii.TransformIndexToPhysicalPoint(peak_xyz))
    p_dcm = np.asarray(dicom.TransformIndexToPhysicalPoint(peak_xyz))
    np.testing.assert_allclose(p_nii, p_dcm, atol=1e-3)
    assert np.linalg.norm(p_nii - lesion) <= np.linalg.norm(geom.spacing_mm) / 2 + 1e-6
    assert files.peak_png is None and [p.name for p, _ in files.files()] == [
        "saliency.nii.gz",
        "saliency_sprite.png",
        "stats.json",
        "layer_saliency.png",  # viewer layers (no CT given: no CT layer)
        "layer_heat.png",
    ]
    assert files.named()["nifti"] == (files.nifti, "application/gzip") and "peak_png" not in files.named()


def test_pngs_sprite_layout_and_content_types(tmp_path: Path) -> None:
    geom = VolumeGeometry(size=(60, 40, 90), spacing_mm=(0.6, 0.9, 1.0), origin_mm=(0.0, 0.0, 0.0))
    at = (70, 10, 45)
    sal = _blob_on(geom, at, sigma=3.0)
    vol = make_volume(geom)
    files = write_saliency(sal, geom, vol, tmp_path, max_tiles=16, sprite_width=512, window="mediastinal")
    st = files.stats
    sp = st["sprite"]
    assert len(sp["slices"]) == 16 and at[0] in sp["slices"] and sp["slices"] == sorted(sp["slices"])
    assert (sp["columns"], sp["rows"]) == (4, 4)
    tw, th = sp["tile_px"]
    assert tw == 60 and th == round(60 * (40 * 0.9) / (60 * 0.6))  # physical aspect kept
    sprite = np.asarray(Image.open(files.sprite_png))
    assert sprite.shape == (4 * th, 4 * tw, 3) and sprite.shape[1] <= 512
    peak = np.asarray(Image.open(files.peak_png))
    assert peak.shape == (round(40 * 0.9 / 0.6), 60, 3)
    # the heatmap is on the peak tile and not on a tile far from it
    k = sp["slices"].index(at[0])
    r, c = divmod(k, 4)
    tile = sprite[r * th : (r + 1) * th, c * tw : (c + 1) * tw].astype(int)
    first = sprite[:th, :tw].astype(int)
    colourful = lambda a: int((np.ptp(a, axis=2) > 60).sum())  # noqa: E731  (gray CT has R = G = B)
    assert colourful(tile) > 20 and colourful(first) == 0
    assert st["overlay"]["window"] == "mediastinal" and st["overlay"]["window_hu"] == [-160.0, 240.0]
    assert files.content_types == {
        "saliency.nii.gz": "application/gzip",
        "saliency_sprite.png": "image/png",
        "saliency_peak.png": "image/png",
        "stats.json": "application/json",
        "layer_ct.png": "image/png",
        "layer_saliency.png": "image/png",
        "layer_heat.png": "image/png",
    }
    # a CTVolume and its HU array give the same overlay; no CT → heatmap on black
    again = write_saliency(
        sal, geom, vol.hu(), tmp_path / "hu", max_tiles=16, sprite_width=512, window="mediastinal"
    )
    assert np.array_equal(np.asarray(Image.open(again.sprite_png)), sprite)
    bare = write_saliency(sal, geom, None, tmp_path / "bare", max_tiles=16, sprite_width=512)
    b = np.asarray(Image.open(bare.sprite_png))
    assert (
        b[:th, :tw].max() == 0 and colourful(b[r * th : (r + 1) * th, c * tw : (c + 1) * tw].astype(int)) > 20
    )


def test_ct_pixel_files_are_exactly_those_that_change_with_the_ct(tmp_path: Path) -> None:
    """CT_PIXEL_FILES (what deleting a study deletes) = the files that differ when the CT differs."""
    geom = VolumeGeometry(size=(24, 20, 12), spacing_mm=(1.0, 1.0, 2.0), origin_mm=(0.0, 0.0, 0.0))
    sal = _blob_on(geom, (6, 10, 12), sigma=2.0)
    vol = make_volume(geom).hu()
    a = write_saliency(sal, geom, vol, tmp_path / "a", max_tiles=8, sprite_width=256, layer_tile_px=32)
    b = write_saliency(
        sal, geom, vol + 300.0, tmp_path / "b", max_tiles=8, sprite_width=256, layer_tile_px=32
    )
    names = {p.name for p, _ in a.named().values()}
    assert names == {p.name for p, _ in b.named().values()} and names >= CT_PIXEL_FILES
    changed = {
        n
        for n in names
        if n != "stats.json" and (a.nifti.parent / n).read_bytes() != (b.nifti.parent / n).read_bytes()
    }
    assert changed == CT_PIXEL_FILES


def test_mantissa_rounding_keeps_float32_within_its_bound(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((20, 8, 8)) * 10.0 ** rng.integers(-8, 3, (20, 8, 8))).astype(np.float32)
    a[0] = 0.0
    for bits in (1, 7, 10, 23):
        r = round_mantissa(a, bits)
        assert r.dtype == np.float32 and r is not a and np.all(r[0] == 0)
        assert np.all(np.abs(r - a) <= np.abs(a) * 2.0 ** -(bits + 1) * (1 + 1e-6))
        assert np.all(r.view(np.uint32) & np.uint32((1 << (23 - bits)) - 1) == 0)
    geom = VolumeGeometry(size=(8, 8, 20), spacing_mm=(1.0, 1.0, 1.0), origin_mm=(0.0, 0.0, 0.0))
    files = write_saliency(np.abs(a), geom, None, tmp_path, nifti_dtype="float32", nifti_mantissa_bits=10)
    data = np.asarray(nib.load(str(files.nifti)).dataobj)
    np.testing.assert_allclose(data, np.abs(a).transpose(2, 1, 0), rtol=2.0**-11)
    assert files.stats["nifti"]["mantissa_bits"] == 10 and files.stats["max"] == float(np.abs(a).max())
    with pytest.raises(ValueError, match="mantissa"):
        write_saliency(a, geom, None, tmp_path, nifti_mantissa_bits=0)


def test_empty_map_and_argument_errors(tmp_path: Path) -> None:
    geom = VolumeGeometry(size=(16, 16, 8), spacing_mm=(1.0, 1.0, 2.0), origin_mm=(0.0, 0.0, 0.0))
    zero = np.zeros(geom.shape_zyx, np.float32)
    files = write_saliency(zero, geom, None, tmp_path)
    st = json.loads(files.stats_json.read_text())
    assert st["max"] == 0 and st["regions"] == [] and st["region_count"] == 0
    assert st["peak"]["index_zyx"] == [0, 0, 0]
    with pytest.raises(ValueError, match="source_map shape"):
        write_saliency(np.zeros((8, 16, 15), np.float32), geom, None, tmp_path)
    with pytest.raises(ValueError, match="window must be one of"):
        write_saliency(zero, geom, None, tmp_path, window="bone")
    with pytest.raises(ValueError, match="same"):
        write_saliency(zero, geom, np.zeros((8, 16, 15)), tmp_path)


def test_save_explanation_end_to_end(tmp_path: Path) -> None:
    predictor = Predictor(tiny_entry(), tiny_model(seed=3), device="cpu")
    geom, kw = CASES["flipped_yz_negative_slope"]
    vol = make_volume(geom, **kw)
    _, res = predictor.predict_volume(vol)
    files = save_explanation(predictor, res, tmp_path, "gradcam", ct=vol)
    st = json.loads(files.stats_json.read_text())
    assert set(st["seconds"]) == {"explain", "to_source", "write"}
    assert st["method"] == "gradcam" and st["params"] == {
        "target": "margin",
        "layer": "layer4",
        "nifti": "uint8",
    }
    assert st["nifti"]["dtype"] == "uint8"
    data = np.asarray(nib.load(str(files.nifti)).dataobj)
    assert data.shape == geom.size and np.isfinite(data).all() and data.max() > 0
    ex = explain(predictor, res.tensor, "gradcam")
    assert ex.outside_body_fraction is not None and 0.0 <= ex.outside_body_fraction <= 1.0
    assert st["outside_body_fraction"] == pytest.approx(ex.outside_body_fraction)
    assert 0 < st["max"] <= float(ex.map.max()) * (1 + 1e-6)  # interpolation never overshoots
    err = st["nifti"]["max_error"]  # the 8-bit NIfTI: within half a step of the map
    np.testing.assert_allclose(
        data.transpose(2, 1, 0), to_source(ex, res.geometry), rtol=0, atol=err * (1 + 1e-5)
    )
    again = save_explanation(predictor, res, tmp_path / "f", "gradcam", {"nifti": "float32"}, ct=vol)
    exact = np.asarray(nib.load(str(again.nifti)).dataobj)
    assert exact.dtype == np.float32 and again.stats["params"]["nifti"] == "float32"
    np.testing.assert_array_equal(to_source(ex, res.geometry), exact.transpose(2, 1, 0))
    assert all(p.grad is None for p in predictor.model.parameters()) and not predictor.model.training


# --------------------------------------------------------------------------- viewer layers


def _tile(img: np.ndarray[Any, Any], layout: dict[str, Any], t: int) -> np.ndarray[Any, Any]:
    tw, th = layout["tile_px"]
    r, c = divmod(t, layout["columns"])
    return img[r * th : (r + 1) * th, c * tw : (c + 1) * tw]


def _pil_resize(a: np.ndarray[Any, Any], w: int, h: int) -> np.ndarray[Any, Any]:
    img = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32), mode="F")
    return np.asarray(img.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float64)


def _jet_lut() -> np.ndarray[Any, Any]:
    import matplotlib as mpl

    lut: np.ndarray[Any, Any] = mpl.colormaps["jet"](np.linspace(0.0, 1.0, 256))[:, :3]
    return lut


def test_viewer_layers_grid_slices_values_and_roles(tmp_path: Path) -> None:
    # anisotropic pixels (0.5 × 1.0 mm): 32 × 40 mm → tiles of 1.25 mm square pixels, 26 × 32 px
    geom = VolumeGeometry(size=(64, 40, 90), spacing_mm=(0.5, 1.0, 1.5), origin_mm=(10.0, -20.0, 300.0))
    nz, ny, nx = geom.shape_zyx
    at = (70, 12, 45)
    sal = _blob_on(geom, at, sigma=3.0)
    z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    hu = (-1100.0 + 8.0 * z + 10.0 * x - 4.0 * y).astype(np.float32)  # slice, column and row tell apart
    files = write_saliency(sal, geom, hu, tmp_path, layer_max_slices=16, layer_tile_px=32)

    named = files.named()
    assert {r: named[r] for r in ("ct_layer", "saliency_layer", "heat_layer")} == {
        "ct_layer": (tmp_path / "layer_ct.png", "image/png"),
        "saliency_layer": (tmp_path / "layer_saliency.png", "image/png"),
        "heat_layer": (tmp_path / "layer_heat.png", "image/png"),
    }
    L = files.stats["layers"]
    assert json.loads(files.stats_json.read_text())["layers"] == L
    assert L["files"] == {
        "ct_layer": "layer_ct.png",
        "saliency_layer": "layer_saliency.png",
        "heat_layer": "layer_heat.png",
    }
    assert len(L["slices"]) == 16 and at[0] in L["slices"] and L["slices"] == sorted(L["slices"])
    assert L["slices"][0] == 0 and L["slices"][-1] == nz - 1
    assert L["slices"][L["peak_tile"]] == at[0] == files.stats["peak"]["index_zyx"][0]
    assert (L["columns"], L["rows"]) == (4, 4) and L["tile_px"] == [26, 32] and L["image_px"] == [104, 128]
    np.testing.assert_allclose(L["pixel_mm"], [32.0 / 26, 40.0 / 32])
    assert L["source_shape_zyx"] == [nz, ny, nx]
    np.testing.assert_allclose(L["slices_origin_lps_mm"][5], geom.index_to_lps([0.0, 0.0, L["slices"][5]]))
    assert L["ct"]["window_hu"] == [-1350.0, 150.0] and L["saliency"]["scale"] == pytest.approx(1.0)

    ct = np.asarray(Image.open(files.ct_layer))
    s8 = np.asarray(Image.open(files.saliency_layer))
    heat = np.asarray(Image.open(files.heat_layer))
    assert ct.dtype == np.uint8 and ct.shape == (128, 104) and s8.shape == (128, 104)
    assert heat.shape == (128, 104, 4)
    tw, th = L["tile_px"]
    # every tile of the CT layer is its slice in the lung window (an independent resize + window)
    for t in (0, 5, L["peak_tile"], 15):
        want = np.clip((_pil_resize(hu[L["slices"][t]], tw, th) + 1350.0) / 1500.0, 0, 1) * 255.0
        assert np.abs(_tile(ct, L, t).astype(float) - want).max() <= 1.0, t
    # the saliency peak sits on the blob: tile pixel → source (column, row) with the documented formula
    peak_tile = _tile(s8, L, L["peak_tile"])
    v, u = np.unravel_index(int(np.argmax(peak_tile)), peak_tile.shape)
    col, row = (u + 0.5) * nx / tw - 0.5, (v + 0.5) * ny / th - 0.5
    assert abs(col - at[2]) <= nx / tw and abs(row - at[1]) <= ny / th
    assert peak_tile.max() >= 200 and _tile(s8, L, 0).max() == 0  # far from the blob: nothing
    # the heat layer: jet of the 8-bit saliency, transparent up to the threshold, opaque at the top
    lut = np.rint(_jet_lut() * 255.0).astype(np.uint8)
    shown = heat[..., 3] > 0
    assert np.array_equal(heat[..., :3][shown], lut[s8[shown]]) and not heat[~shown].any()
    assert np.all(s8[shown] > 0.2 * 255 - 1) and np.all(heat[..., 3][s8 > 0.2 * 255 + 1] > 0)
    assert heat[..., 3].max() >= 0.9 * 255 and heat[..., 3][shown].min() >= 0.35 * 255 - 1


def test_viewer_layers_all_slices_no_ct_and_opt_out(tmp_path: Path) -> None:
    geom = VolumeGeometry(size=(300, 300, 12), spacing_mm=(0.8, 0.8, 5.0), origin_mm=(0.0, 0.0, 0.0))
    at = (7, 150, 100)
    sal = _blob_on(geom, at, sigma=6.0)
    files = write_saliency(sal, geom, None, tmp_path / "a")
    L = files.stats["layers"]
    assert L["slices"] == list(range(12)) and L["peak_tile"] == 7  # ≤ layer_max_slices: every slice
    assert L["tile_px"] == [256, 256] and (L["columns"], L["rows"]) == (4, 3)  # ≤ 256 px, never upsampled
    assert L["ct"] is None and files.ct_layer is None and "ct_layer" not in files.named()
    assert {"saliency_layer", "heat_layer"} <= set(files.named())
    small = VolumeGeometry(size=(48, 40, 6), spacing_mm=(6.0, 6.0, 5.0), origin_mm=(0.0, 0.0, 0.0))
    coarse = write_saliency(_blob_on(small, (3, 20, 20)), small, None, tmp_path / "b")
    assert coarse.stats["layers"]["tile_px"] == [48, 40]  # coarse pixels are not upsampled

    off = write_saliency(sal, geom, None, tmp_path / "c", viewer_layers=False)
    assert off.stats["layers"] is None and off.heat_layer is None and off.saliency_layer is None
    assert set(off.named()) == {"nifti", "sprite_png", "peak_png", "stats_json"}
    assert not list((tmp_path / "c").glob("layer_*"))
    with pytest.raises(ValueError, match="layer_max_slices"):
        write_saliency(sal, geom, None, tmp_path / "d", layer_max_slices=0)
    with pytest.raises(ValueError, match="layer_tile_px"):
        write_saliency(sal, geom, None, tmp_path / "d", layer_tile_px=1024)


def test_map_summary_matches_numpy() -> None:
    """Max, first peak, min, float64 sum and nonzero count (-0.0 is zero) in one helper."""
    rng = np.random.default_rng(3)
    a = np.where(rng.random((19, 23, 17)) < 0.6, rng.normal(0, 1, (19, 23, 17)), 0.0).astype(np.float32)
    a[0, 0, :3] = -0.0
    a[4, 5, 6] = a[11, 2, 3] = 9.0  # two equal maxima: the first in C order is the peak
    m = map_summary(a)
    assert (m.max, m.min, m.peak_zyx) == (9.0, float(a.min()), (4, 5, 6))
    assert m.nonzero == np.count_nonzero(a)
    assert m.sum == pytest.approx(float(a.sum(dtype=np.float64)), rel=1e-12)
    assert map_summary(np.zeros((2, 3, 4), np.float32)).nonzero == 0
