"""Seeded synthetic chest-CT phantoms with ground-truth lesions, written as real DICOM.

The anatomy is an analytic function of DICOM LPS patient coordinates in mm
(x → patient Left, y → Posterior, z → Superior), so one phantom can be sampled on
any grid: any pixel/slice spacing, axial or coronal planes, or gantry-tilted planes.
Intensities are Hounsfield units (HU). Everything is derived from ``PhantomSpec.seed``
through NumPy ``Generator`` streams, so the same spec gives bit-identical voxels,
masks and DICOM UIDs.

Three random streams keep the parts independent: ``[seed, 0]`` draws the anatomy and
the lesions, ``[seed, 1]`` the sampling grid defaults, ``[seed, 2]`` the voxel noise.
Two specs that differ only in their grid therefore describe the *same* patient
(``make_study(variant="multi_series")`` relies on it).

Typical use::

    ph = generate_phantom(PhantomSpec(seed=3, label=1, rows=96, cols=96, pixel_spacing_mm=4.5))
    files = write_series(ph, out_dir, SeriesOptions(transfer_syntax="jpeg_lossless"))
    info = make_study(tmp / "study.zip", seed=3, variant="shuffled")
"""

from __future__ import annotations

import csv
import math
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from ml.geometry import VolumeGeometry

F32 = npt.NDArray[np.float32]
Orientation = Literal["axial", "coronal"]
TransferSyntaxName = Literal["explicit_le", "implicit_le", "jpeg_lossless", "jpeg_ls", "jpeg2000", "rle"]
InstanceNumbering = Literal["ordered", "shuffled", "absent"]

LESION_KINDS: Final[tuple[str, ...]] = ("ggo", "consolidation", "nodule", "effusion")
SLICE_SPACING_CHOICES_MM: Final[tuple[float, ...]] = (0.625, 1.0, 1.25, 2.0, 2.5, 3.0, 5.0)

CT_IMAGE_STORAGE: Final[str] = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE: Final[str] = "1.2.840.10008.5.1.4.1.1.2.1"
MR_IMAGE_STORAGE: Final[str] = "1.2.840.10008.5.1.4.1.1.4"
PET_IMAGE_STORAGE: Final[str] = "1.2.840.10008.5.1.4.1.1.128"
SECONDARY_CAPTURE_STORAGE: Final[str] = "1.2.840.10008.5.1.4.1.1.7"
MEDIA_STORAGE_DIRECTORY: Final[str] = "1.2.840.10008.1.3.10"

TRANSFER_SYNTAX_UIDS: Final[dict[str, str]] = {
    "explicit_le": str(ExplicitVRLittleEndian),
    "implicit_le": str(ImplicitVRLittleEndian),
    "jpeg_lossless": str(JPEGLosslessSV1),
    "jpeg_ls": str(JPEGLSLossless),
    "jpeg2000": str(JPEG2000Lossless),
    "rle": str(RLELossless),
}

STUDY_VARIANTS: Final[tuple[str, ...]] = (
    "standard",
    "shuffled",
    "multiframe",
    "jpeg_lossless",
    "jpeg_ls",
    "jpeg2000",
    "rle",
    "multi_series",
    "gantry_tilt",
    "missing_slice",
    "duplicate_slice",
    "non_ct",
    "coronal",
    "mixed_sizes",
    "thick",
    "few_slices",
    "phi",
    "real_like",
)

HU_MIN: Final[int] = -1024
HU_MAX: Final[int] = 3071
_UID_ROOT: Final[str] = "1.2.826.0.1.3680043.8.498."  # pydicom's root: generated UIDs, never real ones


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class PhantomSpec:
    """What to generate. ``None`` fields are drawn from the seed (grid stream ``[seed, 1]``).

    Attributes:
        seed: master seed of anatomy, lesions, grid defaults and noise.
        label: 0 = normal (no lesion, empty mask), 1 = at least one pathology.
        kinds: lesion kinds among ``LESION_KINDS`` (label 1 only); ``None`` → a random
            non-empty subset.
        n_lesions: number of lesions (label 1); ``None`` → ``max(len(kinds), 1..3)``.
        difficulty: range in [0, 1] from which each lesion draws its conspicuity
            (0 = small and low-contrast, 1 = large and obvious).
        rows, cols: image matrix in pixels.
        pixel_spacing_mm: square in-plane pixel pitch in mm (default U(0.6, 0.9)).
        slice_spacing_mm: distance between slice centres in mm (default from
            ``SLICE_SPACING_CHOICES_MM``).
        slice_thickness_mm: nominal thickness in mm (default = slice spacing).
        n_slices: number of slices; default covers ``coverage_mm``.
        coverage_mm: length covered by the slices in mm (default U(280, 320) axial;
            the body depth plus table for coronal).
        orientation: "axial" (slices along z) or "coronal" (slices along y).
        gantry_tilt_deg: axial only; column vector tilted about x by this angle,
            slice positions still advance along z (table motion).
        noise_hu: standard deviation of voxel noise in HU for tissue.
        fov_offset_mm: in-plane shift (x, y) of the field-of-view centre from the
            body centre, mm.
    """

    seed: int = 0
    label: int = 1
    kinds: tuple[str, ...] | None = None
    n_lesions: int | None = None
    difficulty: tuple[float, float] = (0.3, 1.0)
    rows: int = 512
    cols: int = 512
    pixel_spacing_mm: float | None = None
    slice_spacing_mm: float | None = None
    slice_thickness_mm: float | None = None
    n_slices: int | None = None
    coverage_mm: float | None = None
    orientation: Orientation = "axial"
    gantry_tilt_deg: float = 0.0
    noise_hu: float = 12.0
    fov_offset_mm: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if self.label not in (0, 1):
            raise ValueError(f"label must be 0 or 1, got {self.label}")
        if self.label == 0 and (self.kinds or self.n_lesions):
            raise ValueError("a label-0 phantom cannot have lesions")
        if self.kinds is not None:
            bad = [k for k in self.kinds if k not in LESION_KINDS]
            if bad or not self.kinds:
                raise ValueError(f"kinds must be a non-empty subset of {LESION_KINDS}, got {self.kinds}")
        lo, hi = self.difficulty
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"difficulty must satisfy 0 <= lo <= hi <= 1, got {self.difficulty}")
        if self.rows < 2 or self.cols < 2:
            raise ValueError("rows and cols must be >= 2")
        if self.orientation not in ("axial", "coronal"):
            raise ValueError(f"orientation must be axial or coronal, got {self.orientation}")
        if self.gantry_tilt_deg and self.orientation != "axial":
            raise ValueError("gantry tilt applies to axial acquisitions only")
        if abs(self.gantry_tilt_deg) >= 45:
            raise ValueError("gantry tilt must be below 45 degrees")


@dataclass(frozen=True)
class Lesion:
    """One ground-truth lesion.

    Attributes:
        kind: one of ``LESION_KINDS``.
        centre_lps_mm: LPS centre in mm (for effusions: centroid of the fluid).
        size_mm: extent (x, y, z) in mm of the mask region (diameters for blobs).
        mean_hu: nominal HU of the lesion core.
        mask_value: value of this lesion in ``Phantom.mask`` (1-based instance id).
        difficulty: conspicuity drawn from the spec range (0 subtle … 1 obvious).
    """

    kind: str
    centre_lps_mm: tuple[float, float, float]
    size_mm: tuple[float, float, float]
    mean_hu: float
    mask_value: int
    difficulty: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "centre_lps_mm": list(self.centre_lps_mm),
            "size_mm": list(self.size_mm),
            "mean_hu": self.mean_hu,
            "mask_value": self.mask_value,
            "difficulty": self.difficulty,
        }


# --------------------------------------------------------------------------- anatomy


@dataclass(frozen=True)
class _Field:
    """Smooth random scalar field: sum of cosines (unit variance), argument in mm."""

    k: tuple[tuple[float, float, float], ...]  # wave vectors, rad/mm
    phase: tuple[float, ...]

    @classmethod
    def draw(cls, rng: np.random.Generator, n: int, wavelength_mm: tuple[float, float]) -> _Field:
        dirs = rng.normal(size=(n, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        lam = rng.uniform(*wavelength_mm, size=n)
        k = dirs * (2 * np.pi / lam)[:, None]
        return cls(
            k=tuple((float(a), float(b), float(c)) for a, b, c in k),
            phase=tuple(float(p) for p in rng.uniform(0, 2 * np.pi, size=n)),
        )

    def __call__(self, x: F32, y: F32, z: F32) -> F32:
        amp = np.float32(math.sqrt(2.0 / len(self.k)))
        out = np.zeros_like(x)
        for (kx, ky, kz), ph in zip(self.k, self.phase, strict=True):
            out += np.cos(np.float32(kx) * x + np.float32(ky) * y + np.float32(kz) * z + np.float32(ph))
        out *= amp
        return out


@dataclass(frozen=True)
class _Lung:
    side: int  # -1 = right lung (patient right, x < 0), +1 = left lung
    cx: float
    cy: float
    cz: float
    a: float  # x semi-axis, mm
    b: float  # y semi-axis, mm
    c: float  # z semi-axis of the apex dome, mm
    z_dia: float  # diaphragm level at the lung periphery (body-centred z), mm
    dome: float  # diaphragm dome height, mm


@dataclass(frozen=True)
class _LesionModel:
    """Analytic lesion in body-centred coordinates (mm)."""

    kind: str
    centre: tuple[float, float, float]  # body-centred
    radii: tuple[float, float, float]
    hu: float
    edge: float  # soft-edge half-width, as a fraction of the normalised radius
    side: int  # lung side (effusion)
    fuzz: _Field | None
    fuzz_amp: float
    eff_height: float = 0.0
    eff_depth: float = 0.0
    eff_ztop: float = 0.0

    def bbox(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        m = 1.0 + self.edge + self.fuzz_amp + 0.05
        lo = tuple(c - r * m for c, r in zip(self.centre, self.radii, strict=True))
        hi = tuple(c + r * m for c, r in zip(self.centre, self.radii, strict=True))
        return (lo[0], lo[1], lo[2]), (hi[0], hi[1], hi[2])


@dataclass(frozen=True)
class Anatomy:
    """One seeded patient: analytic body, organs and lesions (mm, HU).

    ``centre`` is the LPS position (mm) of the body-centred origin (mid-chest, on the
    body's L-R / A-P centre). Use :meth:`sample` to evaluate it at points.
    """

    centre: tuple[float, float, float]
    body_ax: float
    body_ay: float
    fat_mm: float
    lungs: tuple[_Lung, _Lung]
    heart: tuple[float, float, float, float, float, float]  # cx, cy, cz, rx, ry, rz
    spine_y: float
    carina_z: float
    table_gap_mm: float
    table_thick_mm: float
    table_hu: float
    rib_period: float
    rib_slope: float
    rib_phase: float
    vessels: tuple[_Field, _Field]
    bronchi: tuple[_Field, _Field]
    lesion_models: tuple[_LesionModel, ...]

    @property
    def chest_z_range(self) -> tuple[float, float]:
        """Body-centred z range (mm) from the lowest diaphragm to the highest apex."""
        lo = min(lg.z_dia for lg in self.lungs) - 15.0
        hi = max(lg.cz + lg.c for lg in self.lungs) + 20.0
        return lo, hi

    # -- pieces --------------------------------------------------------------

    def _body(self, X: F32, Y: F32, Z: F32) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        taper = 1.0 - 0.05 * np.clip(Z / 200.0, -1.0, 1.0) ** 2
        r2 = (X / (self.body_ax * taper)) ** 2 + (Y / self.body_ay) ** 2
        fx = 1.0 - self.fat_mm / self.body_ax
        fy = 1.0 - self.fat_mm / self.body_ay
        r2_in = (X / (self.body_ax * taper * fx)) ** 2 + (Y / (self.body_ay * fy)) ** 2
        return r2 <= 1.0, r2_in <= 1.0

    def _lung(self, lg: _Lung, X: F32, Y: F32, Z: F32) -> npt.NDArray[np.bool_]:
        u = (X - np.float32(lg.cx)) / np.float32(lg.a)
        v = (Y - np.float32(lg.cy)) / np.float32(lg.b)
        rr = u * u + v * v
        dz = np.maximum(Z - np.float32(lg.cz), 0) / np.float32(lg.c)
        scale2 = 1.0 - dz * dz
        zdia = np.float32(lg.z_dia) + np.float32(lg.dome) * np.clip(1.0 - rr, 0.0, 1.0)
        inside: npt.NDArray[np.bool_] = (rr < scale2) & (zdia < Z)
        hx, hy, hz, rx, ry, rz = self.heart
        hr = ((X - hx) / rx) ** 2 + ((Y - hy) / ry) ** 2 + ((Z - hz) / rz) ** 2
        inside &= hr > 1.0
        return inside

    def _lesion_weight(self, les: _LesionModel, X: F32, Y: F32, Z: F32) -> F32:
        if les.kind == "effusion":
            lg = self.lungs[0] if les.side == self.lungs[0].side else self.lungs[1]
            t = np.clip((np.float32(les.eff_ztop) - Z) / np.float32(les.eff_height), 0.0, 1.0)
            y_level = np.float32(lg.cy) + np.float32(lg.b) * (1.0 - 2.0 * np.float32(les.eff_depth) * t)
            w = np.clip(0.5 + (Y - y_level) / np.float32(3.0), 0.0, 1.0)
            w[t <= 0] = 0.0
            return w.astype(np.float32, copy=False)
        cx, cy, cz = les.centre
        rx, ry, rz = les.radii
        rho = np.sqrt(((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2 + ((Z - cz) / rz) ** 2)
        if les.fuzz is not None and les.fuzz_amp > 0:
            rho = rho + np.float32(les.fuzz_amp) * les.fuzz(X, Y, Z)
        w = np.clip(0.5 + (1.0 - rho) / np.float32(2.0 * les.edge), 0.0, 1.0)
        return w.astype(np.float32, copy=False)

    # -- evaluation ----------------------------------------------------------

    def sample(
        self,
        x: F32,
        y: F32,
        z: F32,
        noise: F32 | None = None,
        noise_hu: float = 12.0,
    ) -> tuple[F32, npt.NDArray[np.uint8], npt.NDArray[np.bool_]]:
        """Evaluate HU, lesion label and lung membership at LPS points (mm).

        Args:
            x, y, z: float32 arrays (any equal shape) of LPS coordinates in mm.
            noise: optional standard-normal array of the same shape; tissue gets
                ``noise * noise_hu`` HU, air a small clipped fraction of it.
            noise_hu: tissue noise standard deviation in HU.

        Returns:
            (hu float32, lesion mask uint8 (0 = none, else ``Lesion.mask_value``),
            lung bool) arrays of the input shape. HU is not yet clipped/rounded.
        """
        X = x - np.float32(self.centre[0])
        Y = y - np.float32(self.centre[1])
        Z = z - np.float32(self.centre[2])
        shape = X.shape
        hu = np.full(shape, -1020.0, dtype=np.float32)
        mask = np.zeros(shape, dtype=np.uint8)
        body, inner = self._body(X, Y, Z)
        zlo, zhi = float(Z.min()), float(Z.max())

        # table (separate object below the patient, with an air gap)
        ty0 = self.body_ay + self.table_gap_mm
        table = (Y >= ty0) & (Y <= ty0 + self.table_thick_mm) & (np.abs(X) <= 230.0)
        hu[table] = self.table_hu
        # body: fat rim, muscle/soft tissue inside
        hu[body] = -100.0
        hu[inner] = 40.0

        # sternum and spine
        ax_in = self.body_ax - self.fat_mm
        ay_in = self.body_ay - self.fat_mm
        sternum = inner & (np.abs(X) < 14.0) & (Y < -(ay_in - 14.0)) & (Y > -(ay_in - 2.0))
        hu[sternum] = 450.0
        dx2 = X * X
        rv = np.sqrt(dx2 + (Y - np.float32(self.spine_y)) ** 2)
        disc = np.mod(Z + 500.0, 27.0) < 5.0
        vb = rv < 18.0
        hu[vb] = np.where(disc[vb], 80.0, 380.0)
        hu[vb & (rv >= 15.5)] = 900.0
        rc = np.sqrt(dx2 + (Y - np.float32(self.spine_y + 27.0)) ** 2)
        hu[(rc >= 8.0) & (rc < 13.0)] = 650.0
        hu[rc < 8.0] = 30.0
        spinous = (np.abs(X) < 4.0) & (Y > self.spine_y + 34.0) & (Y < self.spine_y + 58.0)
        hu[spinous & inner] = 650.0

        # ribs: an elliptic ring just inside the chest wall, periodic in a sloped z
        chest_lo, chest_hi = self.chest_z_range
        if zhi > chest_lo - 20 and zlo < chest_hi:
            rho = np.sqrt((X / (ax_in - 7.0)) ** 2 + (Y / (ay_in - 7.0)) ** 2)
            ring = np.abs(rho - 1.0) < 5.5 / ((ax_in + ay_in) / 2.0)
            phase = np.mod(Z + self.rib_slope * (ay_in - Y) + self.rib_phase, self.rib_period)
            ribs = ring & (phase < 10.0) & (Z > chest_lo - 10) & (Z < chest_hi - 10)
            ribs &= ~((np.abs(X) < 28.0) & (Y < 0))
            hu[ribs] = 700.0

        # trachea and main bronchi (air with a soft-tissue wall)
        tx, ty = 0.0, self.spine_y - 52.0
        if zhi > self.carina_z - 60:
            rt = np.sqrt(dx2 + (Y - np.float32(ty)) ** 2)
            up = self.carina_z < Z
            hu[up & (rt < 11.0)] = 40.0
            hu[up & (rt < 9.0)] = -1000.0
            for s in (-1.0, 1.0):
                p0 = np.array([tx, ty, self.carina_z])
                p1 = np.array([s * 48.0, ty + 12.0, self.carina_z - 42.0])
                d = _segment_distance(X, Y, Z, p0, p1)
                hu[(d < 8.0) & inner] = np.maximum(hu[(d < 8.0) & inner], 40.0)
                hu[(d < 6.0) & inner] = -1000.0

        # lungs: parenchyma with a posterior density gradient, vessels, bronchi
        lung = np.zeros(shape, dtype=bool)
        for lg in self.lungs:
            lung |= self._lung(lg, X, Y, Z) & inner
        idx = np.nonzero(lung)
        if idx[0].size:
            lx, ly, lz = X[idx], Y[idx], Z[idx]
            v = -870.0 + 25.0 * np.clip(ly / 100.0, -1.0, 1.0)
            # distance-from-hilum factor: vessels thicker centrally
            hil = np.sqrt((np.abs(lx) - 45.0) ** 2 + (ly - (self.spine_y - 40.0)) ** 2 + (lz - self.carina_z + 30.0) ** 2)
            central = np.clip(1.0 - hil / 130.0, 0.15, 1.0)
            f1, f2 = self.vessels[0](lx, ly, lz), self.vessels[1](lx, ly, lz)
            sig = 0.16 * central
            g = np.exp(-(f1 * f1 + f2 * f2) / (2.0 * sig * sig))
            g[g < 0.05] = 0.0
            v = v + (40.0 + 870.0) * g
            b1, b2 = self.bronchi[0](lx, ly, lz), self.bronchi[1](lx, ly, lz)
            rb = np.sqrt(b1 * b1 + b2 * b2)
            t = 0.12 * np.clip(central - 0.35, 0.0, 1.0)
            wall = (rb < 1.6 * t) & (t > 0)
            v[wall] = -150.0
            v[(rb < t) & (t > 0)] = -1000.0
            hu[idx] = v.astype(np.float32)

        # noise (before lesions so lesion HU means stay close to nominal)
        if noise is not None:
            tissue = hu > -1000.5
            hu += np.where(tissue, noise * np.float32(noise_hu), 0.0).astype(np.float32)
            air = ~tissue
            hu[air] = np.clip(-1017.0 + 4.0 * noise[air], HU_MIN, -1001.0)

        # lesions (replace lung, inside the pre-lesion lung only)
        for value, les in enumerate(self.lesion_models, start=1):
            lo, hi = les.bbox()
            if zhi < lo[2] or zlo > hi[2]:
                continue
            if float(X.max()) < lo[0] or float(X.min()) > hi[0]:
                continue
            w = self._lesion_weight(les, X, Y, Z)
            w[~lung] = 0.0
            sel = w > 0
            if not sel.any():
                continue
            target = np.float32(les.hu)
            if noise is not None:
                target = target + noise[sel] * np.float32(noise_hu)
            ws = w[sel]
            hu[sel] = hu[sel] * (1.0 - ws) + target * ws
            mask[w >= 0.5] = value
        return hu, mask, lung


def _segment_distance(X: F32, Y: F32, Z: F32, p0: npt.NDArray[Any], p1: npt.NDArray[Any]) -> F32:
    """Euclidean distance (mm) from points to the segment p0–p1."""
    d = p1 - p0
    L2 = float(d @ d)
    t = ((X - p0[0]) * d[0] + (Y - p0[1]) * d[1] + (Z - p0[2]) * d[2]) / L2
    t = np.clip(t, 0.0, 1.0)
    dist: F32 = np.sqrt(
        (X - (p0[0] + t * d[0])) ** 2 + (Y - (p0[1] + t * d[1])) ** 2 + (Z - (p0[2] + t * d[2])) ** 2
    ).astype(np.float32)
    return dist
