"""From a spec to a sampled :class:`Phantom`, one seeded random stream per part.

``[seed, 0]`` draws the anatomy and the lesions (:func:`make_anatomy`), ``[seed, 1]``
the sampling grid defaults (:func:`phantom_geometry`), ``[seed, 2]`` the voxel noise
(:func:`sample_grid`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from ml.geometry import VolumeGeometry
from ml.phantom.anatomy import F32, Anatomy, Lung, Region, SmoothField
from ml.phantom.lesions import describe_lesions, draw_lesions
from ml.phantom.spec import HU_MAX, HU_MIN, SLICE_SPACING_CHOICES_MM, Lesion, PhantomSpec


def make_anatomy(spec: PhantomSpec) -> Anatomy:
    """Draw the patient (body, organs, lesions) of ``spec`` from stream ``[seed, 0]``.

    Only ``seed``, ``label``, ``kinds``, ``n_lesions`` and ``difficulty`` matter here,
    so specs differing only in their sampling grid give the same anatomy.
    """
    rng = np.random.default_rng([spec.seed, 0])
    body_ax = float(rng.uniform(150.0, 185.0))
    body_ay = float(rng.uniform(105.0, 130.0))
    fat = float(rng.uniform(7.0, 14.0))
    centre = (float(rng.uniform(-15, 15)), float(rng.uniform(-10, 10)), float(rng.uniform(-200, 60)))
    wall_x = body_ax - fat - 14.0
    wall_y = body_ay - fat - 14.0
    spine_y = body_ay - float(rng.uniform(58.0, 68.0))
    z_dia_base = float(rng.uniform(-135.0, -110.0))
    lungs: list[Lung] = []
    for side in (-1, 1):
        medial = float(rng.uniform(18.0, 28.0))
        a = (wall_x - medial) / 2.0
        b = float(rng.uniform(0.78, 0.86)) * wall_y
        cy = min(float(rng.uniform(4.0, 12.0)), wall_y - b)
        lungs.append(
            Lung(
                side=side,
                cx=side * (medial + a),
                cy=cy,
                cz=float(rng.uniform(-10.0, 20.0)),
                a=a,
                b=b,
                c=float(rng.uniform(120.0, 145.0)),
                z_dia=z_dia_base + (12.0 if side < 0 else 0.0) + float(rng.uniform(-5, 5)),
                dome=float(rng.uniform(30.0, 50.0)),
            )
        )
    heart = (
        float(rng.uniform(10.0, 30.0)),
        float(rng.uniform(-45.0, -25.0)),
        z_dia_base + float(rng.uniform(55.0, 75.0)),
        float(rng.uniform(50.0, 65.0)),
        float(rng.uniform(40.0, 50.0)),
        float(rng.uniform(50.0, 62.0)),
    )
    vessels = (SmoothField.draw(rng, 5, (28.0, 55.0)), SmoothField.draw(rng, 5, (28.0, 55.0)))
    bronchi = (SmoothField.draw(rng, 4, (60.0, 110.0)), SmoothField.draw(rng, 4, (60.0, 110.0)))
    anat = Anatomy(
        centre=centre,
        body_ax=body_ax,
        body_ay=body_ay,
        fat_mm=fat,
        lungs=(lungs[0], lungs[1]),
        heart=heart,
        spine_y=spine_y,
        carina_z=float(rng.uniform(30.0, 60.0)),
        table_gap_mm=float(rng.uniform(15.0, 40.0)),
        table_thick_mm=float(rng.uniform(10.0, 20.0)),
        table_hu=float(rng.uniform(170.0, 230.0)),
        rib_period=float(rng.uniform(24.0, 28.0)),
        rib_slope=float(rng.uniform(0.25, 0.4)),
        rib_phase=float(rng.uniform(0.0, 25.0)),
        vessels=vessels,
        bronchi=bronchi,
        lesion_models=(),
    )
    if spec.label == 0:
        return anat
    return replace(anat, lesion_models=draw_lesions(anat, rng, spec))


@dataclass
class Phantom:
    """A sampled phantom.

    Attributes:
        hu: int16 HU volume (z, y, x), clipped to [-1024, 3071].
        mask: uint8 lesion label map (z, y, x); 0 = none, else ``Lesion.mask_value``.
        lung_mask: bool lung membership (z, y, x) before lesions.
        geometry: grid of the arrays (LPS mm); for gantry tilt the z index axis is
            (0, 0, 1) while the column axis is tilted, i.e. a sheared grid.
        label: 0 = normal, 1 = pathology.
        lesions: ground truth, one record per mask value.
        spec: the spec it was generated from.
        slice_thickness_mm: nominal slice thickness (mm) for the DICOM header.
        anatomy: the analytic model (to resample, e.g. for a localizer): the chest
            :class:`Anatomy`, or the region of an out-of-distribution family.
    """

    hu: npt.NDArray[np.int16]
    mask: npt.NDArray[np.uint8]
    lung_mask: npt.NDArray[np.bool_]
    geometry: VolumeGeometry
    label: int
    lesions: list[Lesion]
    spec: PhantomSpec
    slice_thickness_mm: float
    anatomy: Region


def phantom_geometry(spec: PhantomSpec, anat: Region) -> tuple[VolumeGeometry, float]:
    """Sampling grid of ``spec`` (defaults from stream ``[seed, 1]``) and slice thickness (mm)."""
    rng = np.random.default_rng([spec.seed, 1])
    ps = spec.pixel_spacing_mm if spec.pixel_spacing_mm else round(float(rng.uniform(0.6, 0.9)), 4)
    if spec.slice_spacing_mm:
        sz = float(spec.slice_spacing_mm)
    else:
        sz = SLICE_SPACING_CHOICES_MM[int(rng.integers(len(SLICE_SPACING_CHOICES_MM)))]
    thick = float(spec.slice_thickness_mm) if spec.slice_thickness_mm else sz
    cov_draw = float(rng.uniform(280.0, 320.0))
    jitter = rng.uniform(-3.0, 3.0, size=3)
    cx, cy, cz = anat.centre
    zlo, zhi = anat.scan_z_range
    zmid = cz + (zlo + zhi) / 2.0 + float(jitter[2])
    fx = cx + spec.fov_offset_mm[0] + float(jitter[0])
    fy = cy + 12.0 + spec.fov_offset_mm[1] + float(jitter[1])
    if spec.orientation == "axial":
        t = math.radians(spec.gantry_tilt_deg)
        u = np.array([1.0, 0.0, 0.0])
        v = np.array([0.0, math.cos(t), math.sin(t)])
        w = np.array([0.0, 0.0, 1.0])
        cov = spec.coverage_mm if spec.coverage_mm else cov_draw
        n = spec.n_slices if spec.n_slices else max(1, round(cov / sz) + 1)
        centre = np.array([fx, fy, zmid])
    else:
        u = np.array([1.0, 0.0, 0.0])
        v = np.array([0.0, 0.0, -1.0])
        w = np.array([0.0, 1.0, 0.0])
        depth = 2.0 * anat.body_ay + anat.table_gap_mm + anat.table_thick_mm + 10.0
        cov = spec.coverage_mm if spec.coverage_mm else depth
        n = spec.n_slices if spec.n_slices else max(1, round(cov / sz) + 1)
        y_mid = cy - anat.body_ay - 5.0 + cov / 2.0
        centre = np.array([fx, y_mid, zmid])
    origin = centre - u * ps * (spec.cols - 1) / 2.0 - v * ps * (spec.rows - 1) / 2.0 - w * sz * (n - 1) / 2.0
    direction = np.column_stack([u, v, w])
    geom = VolumeGeometry(
        size=(spec.cols, spec.rows, int(n)),
        spacing_mm=(ps, ps, sz),
        origin_mm=(round(float(origin[0]), 4), round(float(origin[1]), 4), round(float(origin[2]), 4)),
        direction=tuple(round(float(a), 12) + 0.0 for a in direction.reshape(-1)),
    )
    return geom, thick


def sample_grid(
    anat: Region, geom: VolumeGeometry, *, noise_seed: Sequence[int] | None = None, noise_hu: float = 12.0
) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.uint8], npt.NDArray[np.bool_]]:
    """Sample ``anat`` at the voxel centres of ``geom``: (HU int16, lesion mask, lung mask), (z, y, x).

    Works in blocks of slices of about 2**18 voxels; noise (if ``noise_seed``) is drawn
    block by block from ``default_rng(noise_seed)``, so it depends only on the grid.
    """
    nx, ny, nz = geom.size
    hu = np.empty((nz, ny, nx), dtype=np.int16)
    mask = np.empty((nz, ny, nx), dtype=np.uint8)
    lung = np.empty((nz, ny, nx), dtype=bool)
    m = geom.direction_matrix * np.asarray(geom.spacing_mm)[None, :]
    org = np.asarray(geom.origin_mm)
    rng = np.random.default_rng(list(noise_seed)) if noise_seed is not None else None
    block = max(1, (1 << 18) // (nx * ny))
    ii = np.arange(nx, dtype=np.float64)
    jj = np.arange(ny, dtype=np.float64)
    for k0 in range(0, nz, block):
        kk = np.arange(k0, min(nz, k0 + block), dtype=np.float64)
        coords: list[F32] = []
        for a in range(3):
            c = np.full((1, 1, 1), org[a], dtype=np.float64)
            if m[a, 2] != 0:
                c = c + kk[:, None, None] * m[a, 2]
            if m[a, 1] != 0:
                c = c + jj[None, :, None] * m[a, 1]
            if m[a, 0] != 0:
                c = c + ii[None, None, :] * m[a, 0]
            coords.append(c.astype(np.float32))
        shape = (kk.size, ny, nx)
        noise = rng.standard_normal(shape, dtype=np.float32) if rng is not None else None
        h, mk, lg = anat.sample(coords[0], coords[1], coords[2], noise=noise, noise_hu=noise_hu)
        sl = slice(k0, k0 + kk.size)
        hu[sl] = np.clip(np.rint(h), HU_MIN, HU_MAX).astype(np.int16)
        mask[sl] = mk
        lung[sl] = lg
    return hu, mask, lung


def generate_phantom(spec: PhantomSpec) -> Phantom:
    """Generate the phantom described by ``spec`` (deterministic in ``spec``)."""
    anat = make_anatomy(spec)
    geom, thick = phantom_geometry(spec, anat)
    hu, mask, lung = sample_grid(anat, geom, noise_seed=(spec.seed, 2), noise_hu=spec.noise_hu)
    return Phantom(hu, mask, lung, geom, spec.label, describe_lesions(anat), spec, thick, anat)
