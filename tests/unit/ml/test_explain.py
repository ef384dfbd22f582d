"""Tests of ml.explain: Captum methods, mapping back to the source grid, NIfTI/PNG/JSON outputs.

Small sizes on CPU: a random ResNet-10 at 32³ where the model does not matter, and
a "region model" (pathology logit = mean of the input over a box) where exact
attributions are known in closed form.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
import torch
from PIL import Image
from test_inference import tiny_entry, tiny_model
from test_preprocess import CASES, FLIP_YZ, SMALL, make_volume

from ml.explain import (
    METHODS,
    explain,
    gaussian_smooth,
    gradcam_map,
    occlusion_evaluations,
    resolve_params,
    round_mantissa,
    save_explanation,
    to_source,
    write_saliency,
)
from ml.geometry import VolumeGeometry
from ml.inference import Predictor
from ml.model import ModelSpec
from ml.model.network import ResNet3D
from ml.phantom import PhantomSpec, generate_phantom, write_series
from ml.preprocess import CropBox, PreprocessGeometry, preprocess

SIZE = 32
FAST = {
    "gradcam": {},
    "integrated_gradients": {"steps": 4, "internal_batch_size": 2},
    "saliency": {},
    "occlusion": {"window": 8},
}


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(tiny_entry(), tiny_model(seed=3), device="cpu")


def _volume(seed: int = 1, size: int = SIZE) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((1, 1, size, size, size), generator=g) * 2 - 1


class RegionModel(ResNet3D):
    """Logits (0, mean of the input over ``box``): every attribution is known exactly."""

    def __init__(self, box: tuple[slice, slice, slice]) -> None:
        super().__init__(ModelSpec(arch="resnet10"))
        self.box = box

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = x[:, 0][(slice(None), *self.box)].mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(r), r], dim=1)


BOX = (slice(8, 16), slice(16, 24), slice(4, 12))  # (z, y, x) model voxels, aligned to 4-voxel patches


@pytest.fixture(scope="module")
def region_predictor() -> Predictor:
    return Predictor(tiny_entry(), RegionModel(BOX).eval(), device="cpu")


def _inside(shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    m = np.zeros(shape, dtype=bool)
    m[BOX] = True
    return m


# --------------------------------------------------------------------------- methods


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("mode", ["plain", "inference_mode", "no_grad"])
def test_methods_shape_finite_and_rule_8(predictor: Predictor, method: str, mode: str) -> None:
    model = predictor.model
    seen: list[tuple[bool, bool]] = []  # (training, grad enabled) at each forward
    hook = model.layer1.register_forward_pre_hook(
        lambda _m, _i: seen.append((model.training, torch.is_grad_enabled())) and None
    )
    try:
        out = _explain_in_mode(predictor, method, mode)
    finally:
        hook.remove()
    assert seen and not any(training for training, _ in seen)  # BatchNorm never in training mode
    assert all(grad == (method != "occlusion") for _, grad in seen)  # gradients only where needed
    m = out.map
    assert m.dtype == torch.float32 and m.device.type == "cpu" and tuple(m.shape) == (SIZE,) * 3
    assert bool(torch.isfinite(m).all()) and not m.requires_grad
    assert float(m.min()) >= 0.0  # all defaults keep positive evidence only (or |gradient|)
    assert out.method == method and out.seconds > 0
    json.dumps(out.params)  # resolved params are JSON-able
    assert not model.training
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def _explain_in_mode(predictor: Predictor, method: str, mode: str) -> Any:
    """explain() plainly, under an outer inference_mode (inference tensor input) or under no_grad."""
    x = _volume()
    if mode == "inference_mode":
        with torch.inference_mode():
            x = x.clone()  # an inference tensor, as the worker's batch would be
            out = explain(predictor, x, method, FAST[method])
            assert torch.is_inference_mode_enabled()
    elif mode == "no_grad":
        with torch.no_grad():
            out = explain(predictor, x, method, FAST[method])
            assert not torch.is_grad_enabled()
    else:
        out = explain(predictor, x, method, FAST[method])
        assert torch.is_grad_enabled()
    return out


def test_gradcam_explain_matches_legacy_gradcam_map() -> None:
    """64³ input → a 2³ layer4 map; fc weights ≥ 0 for pathology, 0 for normal: the CAM is positive."""
    model = tiny_model(seed=2)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.weight[1].fill_(1.0)
    pr = Predictor(tiny_entry(size=64), model, device="cpu")
    x = _volume(seed=4, size=64)
    legacy = gradcam_map(pr, x)[0]
    via = explain(pr, x, "gradcam", {"target": "pathology"}).map
    margin = explain(pr, x, "gradcam").map  # logit1 - logit0 = logit1 + const here
    assert float(legacy.max()) > 0 and float(legacy.std()) > 0
    assert torch.allclose(legacy, via, atol=1e-6) and torch.allclose(legacy, margin, rtol=1e-5, atol=1e-7)
    l3 = explain(pr, x, "gradcam", {"layer": "layer3"}).map
    assert l3.shape == legacy.shape and bool(torch.isfinite(l3).all())


def _region_input() -> torch.Tensor:
    """A volume whose BOX lies clearly above the air baseline (inputs of the region model's tests)."""
    x = _volume(seed=5)
    x[0, 0][BOX] = x[0, 0][BOX].abs() * 0.5 + 0.2
    return x


def test_exact_attributions_of_a_region_model(region_predictor: Predictor) -> None:
    """Mean over a box of N voxels: gradient 1/N inside, 0 outside; IG = (x - baseline)/N; occlusion."""
    x = _region_input()
    inside = _inside((SIZE,) * 3)
    n = int(inside.sum())
    xs = x[0, 0].numpy()

    sal = explain(region_predictor, x, "saliency", {"smooth_voxels": 0}).map.numpy()
    np.testing.assert_allclose(sal[inside], 1.0 / n, rtol=1e-5)
    assert np.all(sal[~inside] == 0)

    raw = {"steps": 3, "smooth_voxels": 0}
    ig = explain(region_predictor, x, "integrated_gradients", {**raw, "sign": "signed"}).map.numpy()
    np.testing.assert_allclose(ig[inside], (xs[inside] + 1.0) / n, rtol=1e-4)
    assert np.all(ig[~inside] == 0)
    # completeness: the attributions sum to f(x) - f(baseline)
    assert ig.sum() == pytest.approx(float(xs[inside].mean()) + 1.0, rel=1e-4)

    body = explain(region_predictor, x, "integrated_gradients", {**raw, "baseline": "body_mean"})
    in_body = xs > -1 + 1e-3
    expected = np.where(inside, np.clip((xs - xs[in_body].mean()) / n, 0, None), 0)
    np.testing.assert_allclose(body.map.numpy(), expected, atol=1e-7)

    occ = explain(region_predictor, x, "occlusion", {"window": 4}).map.numpy()
    assert np.all(occ[inside] > 0) and np.all(occ[~inside] == 0)
    # window = stride: each voxel gets the score drop of its one patch, Σ(x + 1)/N over the patch
    patch = (slice(8, 12), slice(16, 20), slice(4, 8))
    np.testing.assert_allclose(occ[patch], float((xs[patch] + 1).sum()) / n, rtol=1e-4)


def test_gaussian_smoothing_kernel() -> None:
    """A normalised separable Gaussian: an impulse keeps its mass and peak; a constant stays constant."""
    sigma = 1.5
    impulse = torch.zeros(1, 1, 21, 21, 21)
    impulse[0, 0, 10, 9, 11] = 1.0
    out = gaussian_smooth(impulse, sigma)[0, 0]
    taps = np.exp(-0.5 * (np.arange(-5, 6) / sigma) ** 2)  # radius ceil(3σ) = 5
    k = taps / taps.sum()
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(out[10, 9, 11]) == pytest.approx(float(k[5] ** 3), rel=1e-5)
    assert float(out[10, 9, 13]) == pytest.approx(float(k[5] ** 2 * k[7]), rel=1e-5)
    assert float(out[10, 9, 17]) == 0.0  # truncated at 3σ
    assert tuple(int(v) for v in np.unravel_index(int(out.argmax()), out.shape)) == (10, 9, 11)
    flat = torch.full((1, 1, 6, 7, 8), 0.25)  # replicated edges: no darkened border
    torch.testing.assert_close(gaussian_smooth(flat, 3.0), flat)
    assert gaussian_smooth(impulse, 0.0) is impulse


def test_gradient_maps_are_smoothed_before_the_sign(region_predictor: Predictor) -> None:
    """IG/saliency with ``smooth_voxels`` equal the raw signed map, blurred, then signed."""
    x = _region_input()
    ig = {"steps": 3, "smooth_voxels": 0, "sign": "signed"}
    raw = explain(region_predictor, x, "integrated_gradients", ig).map
    smoothed = explain(
        region_predictor, x, "integrated_gradients", {**ig, "smooth_voxels": 2, "sign": "positive"}
    )
    expected = gaussian_smooth(raw[None, None], 2.0)[0, 0].clamp_min(0.0)
    torch.testing.assert_close(smoothed.map, expected, rtol=1e-5, atol=1e-9)
    assert smoothed.params["smooth_voxels"] == 2.0
    # the default smooths too: the box's mass spreads past its edge
    assert (
        explain(region_predictor, x, "integrated_gradients", {"steps": 3}).map[tuple(s.stop for s in BOX)] > 0
    )
    sal_raw = explain(region_predictor, x, "saliency", {"smooth_voxels": 0}).map
    sal = explain(region_predictor, x, "saliency", {"smooth_voxels": 3.5}).map
    torch.testing.assert_close(sal, gaussian_smooth(sal_raw[None, None], 3.5)[0, 0], rtol=1e-5, atol=1e-9)


def test_integrated_gradients_completeness_on_a_resnet(predictor: Predictor) -> None:
    x = _volume(seed=6)
    ig = explain(
        predictor,
        x,
        "integrated_gradients",
        {"steps": 48, "internal_batch_size": 16, "sign": "signed", "smooth_voxels": 0},
    )
    margins = predictor.margins(predictor.logits(torch.cat([x, torch.full_like(x, -1.0)])))
    delta = float(margins[0] - margins[1])
    assert float(ig.map.double().sum()) == pytest.approx(delta, rel=0.05, abs=1e-3)


@pytest.mark.parametrize(
    ("method", "params", "match"),
    [
        ("nope", {}, "unknown saliency method"),
        ("gradcam", {"steps": 3}, r"unknown parameter\(s\) \['steps'\]"),
        ("gradcam", {"layer": "layer9"}, "layer must be one of"),
        ("saliency", {"target": "normal"}, "target must be one of"),
        ("integrated_gradients", {"steps": 0}, r"steps must be in \[1, 512\]"),
        ("integrated_gradients", {"steps": 2.5}, "steps must be an integer"),
        ("integrated_gradients", {"steps": True}, "steps must be an integer"),
        ("integrated_gradients", {"internal_batch_size": 0}, "internal_batch_size must be in"),
        ("integrated_gradients", {"baseline": "white"}, "baseline must be one of"),
        ("integrated_gradients", {"baseline": 1.5}, r"baseline must be in \[-1, 1\]"),
        ("integrated_gradients", {"sign": "negative"}, "sign must be one of"),
        ("integrated_gradients", {"smooth_voxels": -1}, r"smooth_voxels must be in \[0, 8\]"),
        ("saliency", {"smooth_voxels": "wide"}, "smooth_voxels must be a number"),
        ("occlusion", {"window": 0}, r"window\[0\] must be in \[1, 32\]"),
        ("occlusion", {"window": [4, 4, 33]}, r"window\[2\] must be in \[1, 32\]"),
        ("occlusion", {"window": [4, 4]}, "window must be an int or 3 ints"),
        ("occlusion", {"window": 8, "stride": 9}, r"stride\[0\] must be in \[1, 8\]"),
        ("occlusion", {"window": 2, "stride": 1}, "needs 29791 forward passes"),
        ("occlusion", {"baseline": float("nan")}, "baseline must be in"),
        ("occlusion", {"perturbations_per_eval": 0}, "perturbations_per_eval must be in"),
    ],
)
def test_parameter_validation(predictor: Predictor, method: str, params: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        explain(predictor, _volume(), method, params)


def test_resolved_defaults_and_shape_checks(predictor: Predictor) -> None:
    p = resolve_params("occlusion", None, (32, 64, 40))
    assert p["window"] == [4, 8, 5] and p["stride"] == [4, 8, 5] and p["baseline"] == -1.0
    assert occlusion_evaluations((32, 64, 40), (4, 8, 5), (4, 8, 5)) == 512
    assert occlusion_evaluations((10, 10, 10), (4, 4, 4), (3, 3, 3)) == 27  # ceil: the last patch is clipped
    ig = resolve_params("integrated_gradients", {"baseline": 0}, (32, 32, 32))
    assert ig == {
        "target": "margin",
        "steps": 32,
        "internal_batch_size": 4,
        "baseline": 0.0,
        "sign": "positive",
        "smooth_voxels": 3.0,
    }
    assert resolve_params("saliency", None, (32, 32, 32))["smooth_voxels"] == 0.0  # raw by default
    with pytest.raises(ValueError, match="one volume"):
        explain(predictor, torch.zeros(2, 1, SIZE, SIZE, SIZE), "saliency")
    with pytest.raises(ValueError, match="expected a batch of shape"):
        explain(predictor, torch.zeros(1, 1, SIZE, SIZE, SIZE + 1), "saliency")


# --------------------------------------------------------------------------- back to the source grid


def _gaussian(
    shape: tuple[int, int, int], centre_zyx: np.ndarray[Any, Any], sigma: float
) -> np.ndarray[Any, Any]:
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
    blob = _gaussian(res.geometry.model_size_zyx, seen_zyx, sigma=1.5)

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
    blob = _gaussian((16, 16, 16), g.lps_to_model(target[None])[0], sigma=1.2)
    out = to_source(blob, g)
    assert out.shape == src.shape_zyx
    found = src.index_to_lps(_weighted_centroid(out)[::-1])
    assert np.linalg.norm(found - target) <= 2.0, found


# --------------------------------------------------------------------------- files


def _blob_on(geom: VolumeGeometry, at_zyx: tuple[int, int, int], sigma: float = 1.5) -> np.ndarray[Any, Any]:
    m = _gaussian(geom.shape_zyx, np.asarray(at_zyx, float), sigma)
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
def test_nifti_world_position_of_the_peak_equals_the_dicom_geometry(name: str, tmp_path: Path) -> None:
    geom = NIFTI_GEOMS[name]
    nz, ny, nx = geom.shape_zyx
    at = (nz // 3, 2 * ny // 3, nx // 4)
    sal = _blob_on(geom, at)
    hu = make_volume(geom).hu()
    files = write_saliency(sal, geom, hu, tmp_path, method="gradcam", params={"layer": "layer4"})

    img = nib.load(str(files.nifti))
    data = np.asarray(img.dataobj)
    assert data.dtype == np.float32 and data.shape == geom.size  # (i, j, k) = (column, row, slice)
    assert np.array_equal(data, sal.transpose(2, 1, 0))
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
    files = write_saliency(np.abs(a), geom, None, tmp_path, nifti_mantissa_bits=10)
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


def test_save_explanation_end_to_end(predictor: Predictor, tmp_path: Path) -> None:
    geom, kw = CASES["flipped_yz_negative_slope"]
    vol = make_volume(geom, **kw)
    _, res = predictor.predict_volume(vol)
    files = save_explanation(predictor, res, tmp_path, "gradcam", ct=vol)
    st = json.loads(files.stats_json.read_text())
    assert set(st["seconds"]) == {"explain", "to_source", "write"}
    assert st["method"] == "gradcam" and st["params"] == {"target": "margin", "layer": "layer4"}
    data = np.asarray(nib.load(str(files.nifti)).dataobj)
    assert data.shape == geom.size and np.isfinite(data).all() and data.max() > 0
    ex = explain(predictor, res.tensor, "gradcam")
    assert 0 < st["max"] <= float(ex.map.max()) * (1 + 1e-6)  # interpolation never overshoots
    np.testing.assert_array_equal(to_source(ex, res.geometry), data.transpose(2, 1, 0))
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
