"""Out-of-distribution phantom families: studies a chest-CT model was never meant to see.

Each family has a stable name (:data:`OOD_FAMILIES`) and is generated from a seed,
deterministically, on the same grid machinery and DICOM writer as the chest phantoms
(the bodies other than the chest are in :mod:`ml.phantom.regions`;
:func:`~ml.phantom.generate.phantom_geometry`, :func:`~ml.phantom.generate.sample_grid`,
:func:`~ml.phantom.writer.write_series`). Units: LPS millimetres, Hounsfield units (HU).

``abdomen``
    The chest phantom's patient scanned below the diaphragm (abdomen and pelvis, 260–320 mm):
    liver, spleen, kidneys, bowel loops in mesenteric fat with some bowel gas, iliac bones,
    bladder; spine, fat rim and table of the chest anatomy. No lungs.
``head``
    A head: scalp, a skull of outer bone and diploe, brain with ventricles, small air
    sinuses (frontal, maxillary, mastoid) in thin bone walls, the neck below; 140–180 mm.
``water_cylinder``
    A CT QA phantom: a water cylinder (0 HU) of 190–210 mm diameter in a 3 mm acrylic
    wall (120 HU), four rods (air, bone-like, polyethylene, acrylic) along it, on the table.
``unit_fault``
    A chest phantom written without the rescale: RescaleIntercept 0, slope 1 while the
    stored values are HU + 1024, so a reader sees air at about 0 "HU" (the classic fault).
    Its :attr:`FamilyCase.phantom` ``hu`` holds those declared values, not the true HU.
``noisy_sharp``
    A chest phantom with heavy noise (150–220 HU before sharpening) and the look of a
    sharp reconstruction kernel: an in-plane unsharp mask (edge overshoot, noise amplified).
``partial_chest``
    A chest phantom covering only 60–80 mm cranio-caudally, in the middle of the chest.

Every family is label 0 (no lesion) except the chest-based ones when asked for label 1.
Studies carry the chest phantoms' DICOM header (BodyPartExamined CHEST, same
manufacturer), with family-specific series descriptions and UIDs salted by the family
name: a detector must tell them apart from the pixels, not from the tags.

Random streams: a family's own parameters come from ``[seed, 7, family index]``, the
grid defaults from ``[seed, 1]`` and the voxel noise from ``[seed, 2]`` as for a chest
phantom; the chest-based families and the abdomen reuse the chest anatomy ``[seed, 0]``.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from ml.geometry import CTVolume
from ml.phantom.anatomy import Region, SmoothField
from ml.phantom.archive import write_study_zip
from ml.phantom.generate import Phantom, generate_phantom, make_anatomy, phantom_geometry, sample_grid
from ml.phantom.options import SeriesOptions, study_uid_for
from ml.phantom.regions import AbdomenRegion, HeadRegion, WaterCylinder
from ml.phantom.spec import HU_MAX, HU_MIN, PhantomSpec
from ml.phantom.study import StudyInfo, series_info
from ml.phantom.writer import phantom_volume, write_series

__all__ = [
    "CHEST_FAMILIES",
    "OOD_FAMILIES",
    "FamilyCase",
    "make_family",
    "sharpen_in_plane",
    "write_family_study",
]

OOD_FAMILIES: Final[tuple[str, ...]] = (
    "abdomen",
    "head",
    "water_cylinder",
    "unit_fault",
    "noisy_sharp",
    "partial_chest",
)
"""Stable names of the out-of-distribution families."""

CHEST_FAMILIES: Final[tuple[str, ...]] = ("unit_fault", "noisy_sharp", "partial_chest")
"""The families built on a chest phantom (they may carry lesions, ``label=1``)."""

#: how a reader sees the stored values of ``unit_fault``: stored = HU + 1024, intercept 0
UNIT_FAULT_OFFSET_HU: Final[int] = 1024


@dataclass(frozen=True)
class FamilyCase:
    """One generated study of a family: the phantom and how to write it.

    ``phantom.hu`` holds what the written files declare as HU (for ``unit_fault``: the
    true HU + 1024); ``options`` carries the family's series description, UID salt and,
    for ``unit_fault``, the missing rescale.
    """

    family: str
    seed: int
    phantom: Phantom
    options: SeriesOptions

    def volume(self) -> CTVolume:
        """The volume ingestion reads back from the written series (no files written)."""
        return phantom_volume(self.phantom, self.options)

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write the series into ``out_dir`` (see :func:`~ml.phantom.writer.write_series`)."""
        return write_series(self.phantom, out_dir, self.options)


def _sampled(region: Region, spec: PhantomSpec) -> Phantom:
    geom, thick = phantom_geometry(spec, region)
    hu, mask, lung = sample_grid(region, geom, noise_seed=(spec.seed, 2), noise_hu=spec.noise_hu)
    return Phantom(hu, mask, lung, geom, spec.label, [], spec, thick, region)


def _abdomen(spec: PhantomSpec, rng: np.random.Generator) -> Phantom:
    chest = make_anatomy(replace(spec, label=0))
    ax, ay = chest.body_ax - chest.fat_mm, chest.body_ay - chest.fat_mm
    top = min(lg.z_dia for lg in chest.lungs) - 10.0
    sy = chest.spine_y
    u = rng.uniform
    kz, kx = top - float(u(100.0, 130.0)), float(u(0.38, 0.45)) * ax
    kidney = (kx, sy - 20.0, kz, float(u(24.0, 30.0)), float(u(20.0, 25.0)), float(u(45.0, 55.0)))
    pz = top - float(u(190.0, 215.0))
    wing = (0.55 * ax, 0.3 * ay, pz, float(u(25.0, 32.0)), float(u(45.0, 55.0)), float(u(50.0, 65.0)))
    cov = float(u(260.0, 320.0))

    def bowel() -> SmoothField:
        return SmoothField.draw(rng, 5, (45.0, 80.0))

    region = AbdomenRegion(
        chest=chest,
        top_z=top,
        coverage_mm=cov,
        liver=(-0.35 * ax, -0.1 * ay, top - float(u(50.0, 70.0)), 0.55 * ax, 0.6 * ay, float(u(70.0, 85.0))),
        spleen=(0.55 * ax, 0.25 * ay, top - float(u(40.0, 60.0)), 0.22 * ax, 0.3 * ay, float(u(40.0, 50.0))),
        kidneys=(kidney, (-kx, *kidney[1:])),
        bladder=(0.0, -0.4 * ay, top - cov + float(u(35.0, 50.0)), 45.0, 35.0, 35.0),
        iliac=(wing, (-wing[0], *wing[1:])),
        bowel=(bowel(), bowel(), bowel()),
        gas_level=float(u(1.5, 1.8)),
    )
    return _sampled(region, replace(spec, coverage_mm=cov))


def _head(spec: PhantomSpec, rng: np.random.Generator) -> Phantom:
    u = rng.uniform
    a, b, c = float(u(68.0, 78.0)), float(u(88.0, 100.0)), float(u(80.0, 92.0))
    maxillary = (float(u(16.0, 22.0)), -0.72 * b, -0.55 * c, 12.0, 14.0, 14.0)
    mastoid = (0.8 * a, 0.05 * b, -0.5 * c, 7.0, 7.0, 9.0)
    region = HeadRegion(
        centre=(float(u(-10, 10)), float(u(-10, 10)), float(u(-150, 150))),
        a=a,
        b=b,
        c=c,
        scalp_mm=float(u(4.0, 6.0)),
        skull_mm=float(u(6.0, 8.0)),
        sinuses=(
            (0.0, -(b - 12.0), 0.2 * c, 14.0, 7.0, 10.0),  # frontal
            maxillary,
            (-maxillary[0], *maxillary[1:]),
            mastoid,
            (-mastoid[0], *mastoid[1:]),
        ),
        ventricles=((7.0, -5.0, 0.1 * c, 5.0, 22.0, 10.0), (-7.0, -5.0, 0.1 * c, 5.0, 22.0, 10.0)),
        brain=SmoothField.draw(rng, 6, (15.0, 40.0)),
        table_gap_mm=float(u(5.0, 15.0)),
        table_thick_mm=float(u(8.0, 12.0)),
        coverage_mm=float(u(140.0, 180.0)),
    )
    return _sampled(region, replace(spec, coverage_mm=region.coverage_mm))


def _water_cylinder(spec: PhantomSpec, rng: np.random.Generator) -> Phantom:
    u = rng.uniform
    ring, phase = float(u(50.0, 60.0)), float(u(0.0, math.pi / 2))
    materials = rng.permutation(np.array([-1000.0, 900.0, -95.0, 120.0]))  # air, bone-like, PE, acrylic
    angles = phase + np.arange(4) * (math.pi / 2)
    rods = tuple(
        (ring * math.cos(t), ring * math.sin(t), float(r), float(m))
        for t, r, m in zip(angles, u(10.0, 14.0, size=4), materials, strict=True)
    )
    region = WaterCylinder(
        centre=(float(u(-10, 10)), float(u(-10, 10)), float(u(-100, 100))),
        radius_mm=float(u(95.0, 105.0)),
        wall_mm=3.0,
        length_mm=float(u(180.0, 240.0)),
        rods=rods,
        table_gap_mm=float(u(0.0, 10.0)),
        table_thick_mm=float(u(10.0, 20.0)),
        coverage_mm=float(u(120.0, 160.0)),
    )
    return _sampled(region, replace(spec, coverage_mm=region.coverage_mm))


def _unit_fault(spec: PhantomSpec, rng: np.random.Generator) -> Phantom:
    ph = generate_phantom(spec)
    declared = ph.hu.astype(np.int32) + UNIT_FAULT_OFFSET_HU
    return replace(ph, hu=np.clip(declared, HU_MIN, HU_MAX).astype(np.int16))


def sharpen_in_plane(hu: npt.NDArray[np.int16], amount: float) -> npt.NDArray[np.int16]:
    """A sharp reconstruction kernel's look: in-plane unsharp mask ``hu + amount · (hu − blur)``.

    ``blur`` is the separable [1, 2, 1] / 4 kernel over rows and columns (edges repeated);
    the result is rounded and clipped to the HU range.
    """
    f = hu.astype(np.float32)
    blur = f
    for axis in (1, 2):
        p = np.pad(blur, [(1, 1) if a == axis else (0, 0) for a in range(3)], mode="edge")
        lo, mid, hi = (np.take(p, np.arange(i, i + hu.shape[axis]), axis=axis) for i in range(3))
        blur = (lo + 2.0 * mid + hi) / 4.0
    out = f + np.float32(amount) * (f - blur)
    return np.clip(np.rint(out), HU_MIN, HU_MAX).astype(np.int16)


def _noisy_sharp(spec: PhantomSpec, rng: np.random.Generator) -> Phantom:
    noise = float(rng.uniform(150.0, 220.0))
    ph = generate_phantom(replace(spec, noise_hu=noise))
    return replace(ph, hu=sharpen_in_plane(ph.hu, float(rng.uniform(0.6, 1.0))))


def _partial_chest(spec: PhantomSpec, rng: np.random.Generator) -> Phantom:
    return generate_phantom(replace(spec, coverage_mm=float(rng.uniform(60.0, 80.0))))


_BUILDERS: Final[dict[str, Callable[[PhantomSpec, np.random.Generator], Phantom]]] = {
    "abdomen": _abdomen,
    "head": _head,
    "water_cylinder": _water_cylinder,
    "unit_fault": _unit_fault,
    "noisy_sharp": _noisy_sharp,
    "partial_chest": _partial_chest,
}

_DESCRIPTIONS: Final[dict[str, str]] = {
    "abdomen": "ABDOMEN PELVIS",
    "head": "HEAD",
    "water_cylinder": "QA WATER PHANTOM",
    "unit_fault": "CHEST",
    "noisy_sharp": "CHEST SHARP",
    "partial_chest": "CHEST LIMITED",
}


def make_family(
    family: str,
    seed: int,
    *,
    label: int = 0,
    rows: int = 128,
    cols: int = 128,
    pixel_spacing_mm: float = 3.0,
    slice_spacing_mm: float = 2.5,
) -> FamilyCase:
    """Generate study ``seed`` of ``family`` (one of :data:`OOD_FAMILIES`), deterministically.

    The default grid is the demo corpus's: ``rows`` × ``cols`` pixels of
    ``pixel_spacing_mm`` (mm), slices every ``slice_spacing_mm`` (mm); each family
    draws its own cranio-caudal coverage. ``label`` 1 (a lesion) is only for
    :data:`CHEST_FAMILIES`.
    """
    if family not in OOD_FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {OOD_FAMILIES}")
    if label and family not in CHEST_FAMILIES:
        raise ValueError(f"family {family!r} has no lesions (label 1 needs one of {CHEST_FAMILIES})")
    rng = np.random.default_rng([seed, 7, OOD_FAMILIES.index(family)])
    spec = PhantomSpec(seed=seed, label=label, rows=rows, cols=cols)
    spec = replace(spec, pixel_spacing_mm=pixel_spacing_mm, slice_spacing_mm=slice_spacing_mm)
    phantom = _BUILDERS[family](spec, rng)
    desc = f"{_DESCRIPTIONS[family]} {slice_spacing_mm:g}"
    options = SeriesOptions(series_number=2, series_description=desc, uid_salt=f"ood-{family}")
    if family == "unit_fault":
        options = replace(options, rescale_intercept=0.0)
    elif family == "noisy_sharp":
        options = replace(options, convolution_kernel="B70f")
    return FamilyCase(family, seed, phantom, options)


def write_family_study(zip_path: str | Path, case: FamilyCase) -> StudyInfo:
    """Write ``case`` as a ZIP study (one series, nested layout as :func:`make_study` writes it).

    ``StudyInfo.variant`` is the family name.
    """
    zp = Path(zip_path)
    with tempfile.TemporaryDirectory(prefix="s4ct-phantom-") as td:
        folder = Path(td) / f"SER{case.options.series_number:03d}"
        files = case.write(folder)
        write_study_zip(zp, [folder])
    return StudyInfo(
        zip_path=zp,
        variant=case.family,
        seed=case.seed,
        label=case.phantom.label,
        lesions=case.phantom.lesions,
        study_uid=study_uid_for(case.seed, case.options.uid_salt),
        series=[series_info(case.phantom, case.options, "primary", len(files))],
        identifiers=case.options.identifiers,
        phantom=case.phantom,
    )
