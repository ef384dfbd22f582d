"""Chest-CT plausibility from the pixels: lungs present, chest coverage, HU sanity."""

from __future__ import annotations

import numpy as np
import pytest

from ml.ood.plausibility import (
    PLAUSIBILITY_REASONS,
    PlausibilityConfig,
    check_plausibility,
    check_plausibility_hu,
)

VOX = (2.0, 2.0, 2.0)  # mm (z, y, x)


def _torso(n_z: int = 150, lung_z: tuple[int, int] = (20, 130), lungs: bool = True) -> np.ndarray:
    """Air around an elliptic soft-tissue body (2 mm voxels); two air-density lungs in slices lung_z."""
    z, y, x = np.mgrid[0:n_z, 0:128, 0:128]
    hu = np.full((n_z, 128, 128), -1000.0, dtype=np.float32)
    body = ((y - 64) / 50.0) ** 2 + ((x - 64) / 60.0) ** 2 <= 1.0
    hu[body] = 40.0
    if lungs:
        in_z = (z >= lung_z[0]) & (z < lung_z[1])
        for cx in (40, 88):
            lung = ((y - 62) / 30.0) ** 2 + ((x - cx) / 18.0) ** 2 <= 1.0
            hu[in_z & lung] = -850.0
    return hu


def test_a_chest_is_plausible_and_measured_in_millilitres() -> None:
    rep = check_plausibility_hu(_torso(), VOX)
    assert rep.plausible and rep.reasons == ()
    # two ellipses of π·30·18 voxels² each, 110 slices of 8 mm³ voxels
    want_ml = 2 * np.pi * 30 * 18 * 110 * 8 / 1000
    assert rep.lung_volume_ml == pytest.approx(want_ml, rel=0.05)
    assert rep.lung_extent_mm == pytest.approx(220.0)
    assert rep.scan_extent_mm == 300.0
    assert 0.2 < rep.max_lung_area_fraction < 0.4


def test_no_lungs_is_named() -> None:
    rep = check_plausibility_hu(_torso(lungs=False), VOX)  # a water/soft-tissue cylinder, e.g. a QA phantom
    assert rep.reasons == ("no_lungs_found",)
    assert rep.lung_volume_ml == 0.0


def test_a_little_gas_is_not_lungs() -> None:
    hu = _torso(lungs=False)
    hu[60:70, 60:66, 60:66] = -900.0  # 36 cm³ of bowel gas
    assert check_plausibility_hu(hu, VOX).reasons == ("no_lungs_found",)


def test_air_outside_the_body_is_not_lungs() -> None:
    hu = _torso(lungs=False)
    hu[:, 64:, :] = -1000.0  # half the body cut open to the outside: no enclosed air
    assert "no_lungs_found" in check_plausibility_hu(hu, VOX).reasons


def test_partial_coverage_is_named() -> None:
    rep = check_plausibility_hu(_torso(n_z=40, lung_z=(0, 40)), VOX)  # 80 mm of chest
    assert rep.reasons == ("incomplete_chest_coverage",)
    assert rep.lung_extent_mm == 80.0
    assert check_plausibility_hu(
        _torso(n_z=40, lung_z=(0, 40)), VOX, PlausibilityConfig(min_lung_extent_mm=60)
    ).plausible


def test_values_that_are_not_hu_are_named() -> None:
    hu = _torso() + 1024.0  # stored values read without the rescale intercept
    rep = check_plausibility_hu(hu, VOX)
    assert rep.reasons[0] == "implausible_hu"
    assert "no_lungs_found" not in rep.reasons  # one reason for one fault


def test_model_input_is_mapped_back_to_hu() -> None:
    hu = _torso()
    lo, hi = -1000.0, 600.0
    x = (np.clip(hu, lo, hi) - lo) / (hi - lo) * 2 - 1
    a = check_plausibility(x[None, None], VOX, (lo, hi))
    b = check_plausibility_hu(np.clip(hu, lo, hi), VOX)
    assert a.reasons == b.reasons == ()
    assert a.lung_volume_ml == pytest.approx(b.lung_volume_ml)


def test_reasons_are_documented_and_inputs_checked() -> None:
    assert set(PLAUSIBILITY_REASONS) == {"implausible_hu", "no_lungs_found", "incomplete_chest_coverage"}
    with pytest.raises(ValueError):
        check_plausibility_hu(np.zeros((4, 4)), VOX)
    with pytest.raises(ValueError):
        check_plausibility_hu(np.zeros((4, 4, 4)), (0.0, 1.0, 1.0))


def test_a_generated_phantom_chest_is_plausible() -> None:
    from ml.phantom import PhantomSpec, generate_phantom, phantom_volume
    from ml.preprocess import PreprocessConfig, preprocess

    cfg = PreprocessConfig(target_size=(96, 96, 96))
    res = preprocess(phantom_volume(generate_phantom(PhantomSpec(seed=3))), cfg)
    g = res.geometry
    vox = tuple(c / m for c, m in zip(g.crop.shape_zyx, g.model_size_zyx, strict=True))
    rep = check_plausibility(res.tensor.numpy(), vox, cfg.hu_window)  # type: ignore[arg-type]
    assert rep.plausible, rep
    assert 2000 < rep.lung_volume_ml < 8000
