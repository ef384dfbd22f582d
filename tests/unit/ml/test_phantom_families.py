"""Out-of-distribution phantom families: seeded, written as DICOM that ingestion reads back,
and each has the property it claims (checked with the chest-CT plausibility check)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ml.io import load_volume, open_study, rank_series
from ml.ood.plausibility import PlausibilityReport, check_plausibility
from ml.phantom import (
    OOD_FAMILIES,
    FamilyCase,
    PhantomSpec,
    generate_phantom,
    make_family,
    write_family_study,
)
from ml.phantom.families import UNIT_FAULT_OFFSET_HU, sharpen_in_plane
from ml.preprocess import PreprocessConfig, preprocess

#: coarse grids keep these fast; 2.5 mm slices for the partial chest so QC keeps its 25+ slices
GRID = {"rows": 48, "cols": 48, "pixel_spacing_mm": 8.0, "slice_spacing_mm": 5.0}
GRIDS = {f: {**GRID, "slice_spacing_mm": 2.5} if f == "partial_chest" else GRID for f in OOD_FAMILIES}
PP = PreprocessConfig(target_size=(64, 64, 64))

EXPECTED_REASONS = {
    "abdomen": {("no_lungs_found",)},
    "head": {("no_lungs_found",)},
    "water_cylinder": {("no_lungs_found",)},
    "unit_fault": {("implausible_hu",), ("no_lungs_found",)},
    "noisy_sharp": {()},
    "partial_chest": {("incomplete_chest_coverage",)},
}


def _case(family: str, seed: int = 5, label: int = 0) -> FamilyCase:
    return make_family(family, seed, label=label, **GRIDS[family])


def _model_input_report(case: FamilyCase) -> PlausibilityReport:
    res = preprocess(case.volume(), PP)
    g = res.geometry
    vox = tuple(c / m for c, m in zip(g.crop.shape_zyx, g.model_size_zyx, strict=True))
    return check_plausibility(res.tensor.numpy(), vox, PP.hu_window)


@pytest.mark.parametrize("family", OOD_FAMILIES)
def test_family_is_deterministic_in_its_seed(family: str) -> None:
    a, b, c = _case(family), _case(family), _case(family, seed=6)
    assert np.array_equal(a.phantom.hu, b.phantom.hu) and a.phantom.geometry == b.phantom.geometry
    assert a.options == b.options and a.phantom.hu.dtype == np.int16
    assert a.phantom.hu.shape != c.phantom.hu.shape or not np.array_equal(a.phantom.hu, c.phantom.hu)
    assert not a.phantom.mask.any() and a.phantom.label == 0


@pytest.mark.parametrize("family", OOD_FAMILIES)
def test_family_dicom_is_read_back_by_ingestion(family: str, tmp_path: Path) -> None:
    case = _case(family)
    info = write_family_study(tmp_path / f"{family}.zip", case)
    assert info.variant == family and info.series[0].role == "primary"
    with open_study(info.zip_path) as st:
        rep = rank_series(st)
        vol = load_volume(rep.selected.series)
    assert rep.selected.series.series_uid == info.primary_series_uid
    assert vol.geometry.shape_zyx == case.phantom.hu.shape
    assert np.allclose(vol.geometry.origin_mm, case.phantom.geometry.origin_mm, atol=1e-3)
    expected = case.volume()
    assert (vol.slope, vol.intercept) == (expected.slope, expected.intercept)
    assert np.array_equal(vol.hu(), expected.hu())
    assert np.array_equal(vol.hu(), case.phantom.hu.astype(np.float32))  # what the files declare as HU


def test_family_studies_do_not_share_uids_with_the_chest_phantom_of_the_seed() -> None:
    uids = {make_family(f, 5, **GRIDS[f]).volume().series_uid for f in OOD_FAMILIES}
    assert len(uids) == len(OOD_FAMILIES)


@pytest.mark.parametrize("family", OOD_FAMILIES)
def test_family_trips_the_plausibility_check_it_claims(family: str) -> None:
    rep = _model_input_report(_case(family))
    assert rep.reasons in EXPECTED_REASONS[family], rep


def test_abdomen_has_some_bowel_gas_but_no_lungs() -> None:
    case = _case("abdomen")
    assert not case.phantom.lung_mask.any()
    rep = _model_input_report(case)
    assert 5.0 < rep.lung_volume_ml < 250.0  # enclosed gas, mL
    hu = case.phantom.hu
    assert (hu > 400).any()  # spine and iliac bones
    assert -100 < float(np.median(hu[hu > -300])) < 100  # mostly soft tissue


def test_head_has_a_skull_brain_and_small_sinuses() -> None:
    case = _case("head")
    hu = case.phantom.hu
    mid = hu[hu.shape[0] // 2]
    assert (mid > 700).sum() > 20  # skull ring
    cy, cx = hu.shape[1] // 2, hu.shape[2] // 2
    assert -20 < float(np.median(mid[cy - 3 : cy + 3, cx - 3 : cx + 3])) < 80  # brain, HU
    extent_mm = case.phantom.geometry.extent_mm()
    assert 130 <= extent_mm[2] <= 190


def test_water_cylinder_is_water_in_air() -> None:
    case = _case("water_cylinder")
    hu = case.phantom.hu
    mid = hu[hu.shape[0] // 2]
    water = np.abs(mid.astype(np.float64)) < 60
    assert 0.5 * np.pi * 95**2 < water.sum() * 8.0**2 < 1.1 * np.pi * 105**2  # ~200 mm cylinder, mm²
    assert float(np.median(mid[water])) == pytest.approx(0.0, abs=5.0)
    assert (mid < -900).mean() > 0.4  # air around it


def test_unit_fault_is_a_chest_written_without_the_rescale() -> None:
    case = _case("unit_fault", label=1)
    chest = generate_phantom(PhantomSpec(seed=5, label=1, **GRID))
    assert np.array_equal(case.phantom.hu.astype(np.int32), chest.hu.astype(np.int32) + UNIT_FAULT_OFFSET_HU)
    vol = case.volume()
    assert (vol.slope, vol.intercept) == (1.0, 0.0)
    assert float(vol.hu().min()) >= 0.0  # "air" at about 0 HU
    assert case.phantom.lesions == chest.lesions and case.phantom.label == 1


def test_noisy_sharp_is_a_plausible_chest_with_heavy_noise() -> None:
    case = _case("noisy_sharp")
    rep = _model_input_report(case)
    assert rep.reasons == ()
    clean = generate_phantom(PhantomSpec(seed=5, label=0, noise_hu=0.0, **GRID))
    soft = clean.hu == 40  # plain soft tissue, away from its edges (the sharpening's overshoot)
    for axis in (1, 2):
        soft &= np.roll(soft, 1, axis=axis) & np.roll(soft, -1, axis=axis)
    assert soft.sum() > 500
    assert float(case.phantom.hu[soft].std()) >= 150.0  # HU


def test_partial_chest_covers_60_to_80_mm() -> None:
    case = _case("partial_chest")
    g = case.phantom.geometry
    assert 60.0 <= (g.size[2] - 1) * g.spacing_mm[2] <= 82.5
    assert case.phantom.lung_mask.mean() > 0.1


def test_sharpen_in_plane_keeps_flat_regions_and_overshoots_edges() -> None:
    hu = np.zeros((2, 8, 8), dtype=np.int16)
    hu[:, :, 4:] = 1000
    out = sharpen_in_plane(hu, 1.0)
    assert out[0, 4, 0] == 0 and out[0, 4, 7] == 1000  # flat: unchanged
    assert out[0, 4, 3] < 0 and out[0, 4, 4] > 1000  # edge: undershoot and overshoot
    assert np.array_equal(out[0], out[1])  # in-plane only


def test_unknown_family_and_lesions_outside_the_chest_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown family"):
        make_family("knee", 1)
    with pytest.raises(ValueError, match="no lesions"):
        make_family("head", 1, label=1)
