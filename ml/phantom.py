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
import hashlib
import json
import math
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from ml.geometry import CTVolume, VolumeGeometry

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
    difficulty: float = 0.0

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
        """(body, inside the fat rim) at body-centred points (mm), broadcast."""
        taper = 1.0 - 0.05 * np.clip(Z / 200.0, -1.0, 1.0) ** 2
        ax = np.float32(self.body_ax) * taper
        ax_in = ax - np.float32(self.fat_mm)
        ry2 = (Y / np.float32(self.body_ay)) ** 2
        ry2_in = (Y / np.float32(self.body_ay - self.fat_mm)) ** 2
        return (X / ax) ** 2 + ry2 <= 1.0, (X / ax_in) ** 2 + ry2_in <= 1.0

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
            w[(t <= 0) | (X * np.float32(les.side) <= 0)] = 0.0
            out: F32 = np.asarray(w, dtype=np.float32)
            return out
        cx, cy, cz = les.centre
        rx, ry, rz = les.radii
        rho = np.sqrt(((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2 + ((Z - cz) / rz) ** 2)
        if les.fuzz is not None and les.fuzz_amp > 0:
            rho = rho + np.float32(les.fuzz_amp) * les.fuzz(X, Y, Z)
        w = np.clip(0.5 + (1.0 - rho) / np.float32(2.0 * les.edge), 0.0, 1.0)
        res: F32 = np.asarray(w, dtype=np.float32)
        return res

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
            x, y, z: float32 arrays of LPS coordinates in mm; they only need to
                broadcast together (pass the minimal shapes of a separable grid:
                that is much faster than full arrays).
            noise: optional standard-normal array of the broadcast shape; tissue
                gets ``noise * noise_hu`` HU, air a small clipped fraction of it.
            noise_hu: tissue noise standard deviation in HU.

        Returns:
            (hu float32, lesion mask uint8 (0 = none, else ``Lesion.mask_value``),
            lung bool) arrays of the broadcast shape. HU is not yet clipped/rounded.
        """
        X = np.asarray(x, dtype=np.float32) - np.float32(self.centre[0])
        Y = np.asarray(y, dtype=np.float32) - np.float32(self.centre[1])
        Z = np.asarray(z, dtype=np.float32) - np.float32(self.centre[2])
        shape = np.broadcast_shapes(X.shape, Y.shape, Z.shape)
        hu = np.full(shape, -1020.0, dtype=np.float32)
        mask = np.zeros(shape, dtype=np.uint8)
        zlo, zhi = float(Z.min()), float(Z.max())
        X2 = X * X

        # table (separate object below the patient, with an air gap)
        ty0 = self.body_ay + self.table_gap_mm
        table = ((ty0 <= Y) & (ty0 + self.table_thick_mm >= Y)) & (np.abs(X) <= 230.0)
        hu[np.broadcast_to(table, shape)] = self.table_hu
        # body: fat rim, muscle/soft tissue inside
        body, inner = self._body(X, Y, Z)
        hu[body] = -100.0
        hu[inner] = 40.0
        inner = np.broadcast_to(inner, shape)

        # sternum and spine
        ax_in = self.body_ax - self.fat_mm
        ay_in = self.body_ay - self.fat_mm
        sternum = (np.abs(X) < 14.0) & ((-(ay_in - 14.0) > Y) & (-(ay_in - 2.0) < Y))
        hu[inner & sternum] = 450.0
        dy = Y - np.float32(self.spine_y)
        rv2 = X2 + dy * dy
        disc = _fmod(Z + 500.0, 27.0) < 5.0
        vb = np.broadcast_to(rv2 < 18.0**2, shape)
        if vb.any():
            hu[vb] = np.broadcast_to(np.where(disc, np.float32(80.0), np.float32(380.0)), shape)[vb]
            hu[vb & (rv2 >= 15.5**2)] = 900.0
        dc = dy - np.float32(27.0)
        rc2 = X2 + dc * dc
        hu[np.broadcast_to((rc2 >= 64.0) & (rc2 < 169.0), shape)] = 650.0
        hu[np.broadcast_to(rc2 < 64.0, shape)] = 30.0
        spinous = (np.abs(X) < 4.0) & ((dy > 34.0) & (dy < 58.0))
        hu[inner & spinous] = 650.0

        # ribs: an elliptic ring just inside the chest wall, periodic in a sloped z
        chest_lo, chest_hi = self.chest_z_range
        if zhi > chest_lo - 20 and zlo < chest_hi:
            rho = np.sqrt(X2 / np.float32((ax_in - 7.0) ** 2) + (Y * Y) / np.float32((ay_in - 7.0) ** 2))
            ring = np.abs(rho - 1.0) < 5.5 / ((ax_in + ay_in) / 2.0)
            ring &= ~((np.abs(X) < 28.0) & (Y < 0))
            zs = np.asarray(
                Z + np.float32(self.rib_slope) * (np.float32(ay_in) - Y) + self.rib_phase, np.float32
            )
            phase = _fmod(zs, self.rib_period)
            ribs = ring & (phase < 10.0) & ((chest_lo - 10 < Z) & (chest_hi - 10 > Z))
            hu[np.broadcast_to(ribs, shape)] = 700.0

        # trachea and main bronchi (air with a soft-tissue wall)
        ty = self.spine_y - 52.0
        if zhi > self.carina_z - 60:
            dt = Y - np.float32(ty)
            rt2 = X2 + dt * dt
            up = self.carina_z < Z
            hu[np.broadcast_to(up & (rt2 < 121.0), shape)] = 40.0
            hu[np.broadcast_to(up & (rt2 < 81.0), shape)] = -1000.0
            near = (
                (np.abs(X) < 60.0)
                & (np.abs(dt) < 30.0)
                & ((self.carina_z + 8 > Z) & (self.carina_z - 55 < Z))
            )
            near_b = np.broadcast_to(near, shape)
            if near_b.any():
                sel = np.flatnonzero(near_b)
                px, py, pz = (np.broadcast_to(a, shape).ravel()[sel] for a in (X, Y, Z))
                vals = hu.ravel()[sel]
                ins = inner.ravel()[sel]
                for s in (-1.0, 1.0):
                    p0 = np.array([0.0, ty, self.carina_z])
                    p1 = np.array([s * 48.0, ty + 12.0, self.carina_z - 42.0])
                    d = _segment_distance(px, py, pz, p0, p1)
                    wall = (d < 8.0) & ins
                    vals[wall] = np.maximum(vals[wall], 40.0)
                    vals[(d < 6.0) & ins] = -1000.0
                hu.ravel()[sel] = vals

        # lungs: parenchyma with a posterior density gradient, vessels, bronchi
        lung = self._lung(self.lungs[0], X, Y, Z) | self._lung(self.lungs[1], X, Y, Z)
        lung = np.broadcast_to(lung, shape) & inner
        idx = np.flatnonzero(lung)
        if idx.size:
            lx, ly, lz = (np.broadcast_to(a, shape).ravel()[idx] for a in (X, Y, Z))
            v = -870.0 + 25.0 * np.clip(ly / 100.0, -1.0, 1.0)
            # distance-from-hilum factor: vessels and airways thicker centrally
            hil = np.sqrt(
                (np.abs(lx) - 45.0) ** 2
                + (ly - (self.spine_y - 40.0)) ** 2
                + (lz - self.carina_z + 30.0) ** 2
            )
            central = np.clip(1.0 - hil / 130.0, 0.15, 1.0)
            f1, f2 = self.vessels[0](lx, ly, lz), self.vessels[1](lx, ly, lz)
            sig = 0.3 * central
            g = np.exp(-(f1 * f1 + f2 * f2) / (2.0 * sig * sig))
            g[g < 0.05] = 0.0
            v = v + (40.0 + 870.0) * g
            b1, b2 = self.bronchi[0](lx, ly, lz), self.bronchi[1](lx, ly, lz)
            rb = np.sqrt(b1 * b1 + b2 * b2)
            t = 0.12 * np.clip(central - 0.35, 0.0, 1.0)
            v[(rb < 1.6 * t) & (t > 0)] = -150.0
            v[(rb < t) & (t > 0)] = -1000.0
            hu.ravel()[idx] = v

        # noise (before lesions so lesion HU means stay close to nominal)
        if noise is not None:
            air = hu < -1000.5
            hu += noise * np.float32(noise_hu)
            hu[air] = np.clip(-1017.0 + 4.0 * noise[air], HU_MIN, -1001.0)

        # lesions (replace lung, inside the pre-lesion lung only)
        for value, les in enumerate(self.lesion_models, start=1):
            lo, hi = les.bbox()
            if zhi < lo[2] or zlo > hi[2] or float(X.max()) < lo[0] or float(X.min()) > hi[0]:
                continue
            if float(Y.max()) < lo[1] or float(Y.min()) > hi[1]:
                continue
            boxed = ((lo[0] < X) & (hi[0] > X)) & ((lo[1] < Y) & (hi[1] > Y)) & ((lo[2] < Z) & (hi[2] > Z))
            sel = np.flatnonzero(np.broadcast_to(boxed, shape) & lung)
            if not sel.size:
                continue
            px, py, pz = (np.broadcast_to(a, shape).ravel()[sel] for a in (X, Y, Z))
            w = self._lesion_weight(les, px, py, pz)
            target = np.float32(les.hu)
            tv = target + noise.ravel()[sel] * np.float32(noise_hu) if noise is not None else target
            flat = hu.ravel()
            flat[sel] = flat[sel] * (1.0 - w) + tv * w
            mask.ravel()[sel[w >= 0.5]] = value
        return hu, mask, lung


def _fmod(a: F32, p: float) -> F32:
    """``a mod p`` (non-negative), much faster than ``np.mod`` for float32."""
    q = np.floor(a * np.float32(1.0 / p))
    out: F32 = a - q * np.float32(p)
    return out


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


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


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
    lungs: list[_Lung] = []
    for side in (-1, 1):
        medial = float(rng.uniform(18.0, 28.0))
        a = (wall_x - medial) / 2.0
        b = float(rng.uniform(0.78, 0.86)) * wall_y
        cy = min(float(rng.uniform(4.0, 12.0)), wall_y - b)
        lungs.append(
            _Lung(
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
    vessels = (_Field.draw(rng, 5, (28.0, 55.0)), _Field.draw(rng, 5, (28.0, 55.0)))
    bronchi = (_Field.draw(rng, 4, (60.0, 110.0)), _Field.draw(rng, 4, (60.0, 110.0)))
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
    kinds = list(spec.kinds) if spec.kinds else _draw_kinds(rng)
    n = spec.n_lesions if spec.n_lesions else max(len(kinds), int(rng.integers(1, 4)))
    order = kinds + [kinds[int(rng.integers(len(kinds)))] for _ in range(n - len(kinds))]
    models: list[_LesionModel] = []
    eff_sides: set[int] = set()
    for kind in order:
        d = float(rng.uniform(*spec.difficulty))
        if kind == "effusion":
            free = [s for s in (-1, 1) if s not in eff_sides] or [-1, 1]
            side = free[int(rng.integers(len(free)))]
            eff_sides.add(side)
            models.append(_effusion(anat, rng, side, d))
        else:
            models.append(_blob(anat, rng, kind, d))
    return replace(anat, lesion_models=tuple(models))


def _draw_kinds(rng: np.random.Generator) -> list[str]:
    n = int(rng.integers(1, 3))
    picks = rng.choice(len(LESION_KINDS), size=n, replace=False)
    return [LESION_KINDS[int(i)] for i in sorted(picks)]


def _in_lung(anat: Anatomy, pts: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    X, Y, Z = (pts[:, i].astype(np.float32) for i in range(3))
    _, inner = anat._body(X, Y, Z)
    out = np.zeros(len(pts), dtype=bool)
    for lg in anat.lungs:
        out |= anat._lung(lg, X, Y, Z)
    return out & inner


def _blob(anat: Anatomy, rng: np.random.Generator, kind: str, d: float) -> _LesionModel:
    if kind == "nodule":
        diam = 4.0 + 26.0 * d**1.3
        hu = _lerp(-250.0, 20.0, min(1.0, 0.35 + d))
        ratios = rng.uniform(0.85, 1.15, size=3)
        edge_mm, fuzz_amp, fill = 0.8, 0.0, 0.7
    elif kind == "ggo":
        diam = 18.0 + 50.0 * d
        hu = _lerp(-680.0, -360.0, d)
        ratios = rng.uniform(0.75, 1.25, size=3)
        edge_mm, fuzz_amp, fill = 0.3 * diam / 2.0, 0.12, 0.5
    else:  # consolidation
        diam = 25.0 + 50.0 * d
        hu = _lerp(-90.0, 40.0, d)
        ratios = rng.uniform(0.7, 1.3, size=3)
        edge_mm, fuzz_amp, fill = 0.1 * diam / 2.0, 0.08, 0.4
    radii = (diam / 2.0) * ratios
    offs = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.float64)
    lo_z = min(lg.z_dia for lg in anat.lungs)
    hi_z = max(lg.cz + lg.c for lg in anat.lungs)
    centre = np.zeros(3)
    for _ in range(2000):
        lg = anat.lungs[int(rng.integers(2))]
        c = np.array(
            [
                rng.uniform(lg.cx - lg.a, lg.cx + lg.a),
                rng.uniform(lg.cy - lg.b, lg.cy + lg.b),
                rng.uniform(lo_z, hi_z),
            ]
        )
        probe = np.vstack([c[None, :], c[None, :] + offs * radii[None, :] * fill])
        if _in_lung(anat, probe).all():
            centre = c
            break
    else:  # pragma: no cover - lungs are large; never reached for plausible anatomy
        raise RuntimeError("could not place a lesion inside the lungs")
    fuzz = _Field.draw(rng, 4, (15.0, 30.0)) if fuzz_amp > 0 else None
    edge = edge_mm / float(np.mean(radii))
    return _LesionModel(
        kind=kind,
        centre=(float(centre[0]), float(centre[1]), float(centre[2])),
        radii=(float(radii[0]), float(radii[1]), float(radii[2])),
        hu=hu,
        edge=edge,
        side=0,
        fuzz=fuzz,
        fuzz_amp=fuzz_amp,
        difficulty=d,
    )


def _effusion(anat: Anatomy, rng: np.random.Generator, side: int, d: float) -> _LesionModel:
    lg = anat.lungs[0] if anat.lungs[0].side == side else anat.lungs[1]
    height = 30.0 + 60.0 * d
    depth = 0.2 + 0.45 * d
    ztop = lg.z_dia + lg.dome + height * 0.6
    # bounding box of the fluid, in body-centred mm
    centre = (lg.cx, lg.cy + lg.b * (1.0 - depth), (lg.z_dia + ztop) / 2.0)
    radii = (lg.a, lg.b * depth + 2.0, (ztop - lg.z_dia) / 2.0 + 2.0)
    return _LesionModel(
        kind="effusion",
        centre=centre,
        radii=radii,
        hu=float(rng.uniform(5.0, 18.0)),
        edge=0.0,
        side=side,
        fuzz=None,
        fuzz_amp=0.0,
        eff_height=height,
        eff_depth=depth,
        eff_ztop=ztop,
        difficulty=d,
    )


def describe_lesions(anat: Anatomy) -> list[Lesion]:
    """Measure each lesion's mask region (centroid, extent) on a fine random point cloud."""
    out: list[Lesion] = []
    rng = np.random.default_rng(12345)
    for i, les in enumerate(anat.lesion_models, start=1):
        lo, hi = les.bbox()
        pts = rng.uniform(lo, hi, size=(40000, 3)).astype(np.float32)
        X, Y, Z = pts[:, 0], pts[:, 1], pts[:, 2]
        w = anat._lesion_weight(les, X, Y, Z)
        sel = (w >= 0.5) & _in_lung(anat, pts.astype(np.float64))
        if sel.sum() < 10:
            c = np.asarray(les.centre)
            size = np.asarray(les.radii) * 2.0
        else:
            p = pts[sel].astype(np.float64)
            c = p.mean(axis=0)
            size = p.max(axis=0) - p.min(axis=0)
        ctr = np.asarray(anat.centre) + c
        out.append(
            Lesion(
                kind=les.kind,
                centre_lps_mm=(round(float(ctr[0]), 3), round(float(ctr[1]), 3), round(float(ctr[2]), 3)),
                size_mm=(round(float(size[0]), 3), round(float(size[1]), 3), round(float(size[2]), 3)),
                mean_hu=round(les.hu, 1),
                mask_value=i,
                difficulty=round(les.difficulty, 4),
            )
        )
    return out


# --------------------------------------------------------------------------- sampling


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
        anatomy: the analytic model (to resample, e.g. for a localizer).
    """

    hu: npt.NDArray[np.int16]
    mask: npt.NDArray[np.uint8]
    lung_mask: npt.NDArray[np.bool_]
    geometry: VolumeGeometry
    label: int
    lesions: list[Lesion]
    spec: PhantomSpec
    slice_thickness_mm: float
    anatomy: Anatomy


def phantom_geometry(spec: PhantomSpec, anat: Anatomy) -> tuple[VolumeGeometry, float]:
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
    zlo, zhi = anat.chest_z_range
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
    anat: Anatomy, geom: VolumeGeometry, *, noise_seed: Sequence[int] | None = None, noise_hu: float = 12.0
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
    return Phantom(
        hu=hu,
        mask=mask,
        lung_mask=lung,
        geometry=geom,
        label=spec.label,
        lesions=describe_lesions(anat),
        spec=spec,
        slice_thickness_mm=thick,
        anatomy=anat,
    )


# --------------------------------------------------------------------------- DICOM


@dataclass(frozen=True)
class FakeIdentifiers:
    """Patient/study identifiers written into the DICOM (all fake, obviously so by default)."""

    patient_name: str = "PHANTOM^TEST"
    patient_id: str = "S4CT-PHANTOM-0001"
    birth_date: str = "19700101"
    accession_number: str = "S4CTACC0001"
    sex: str = "O"
    institution_name: str = "S4CT PHANTOM LAB"
    referring_physician: str = "REFERRER^FAKE"
    study_id: str = "1"


PHI_IDENTIFIERS: Final[FakeIdentifiers] = FakeIdentifiers(
    patient_name="ZZFAKE^PHIPATIENT^CONSPICUOUS",
    patient_id="PHI-ID-7F3K9Q",
    birth_date="19450704",
    accession_number="ACC-PHI-55321",
    sex="F",
    institution_name="PHI GENERAL HOSPITAL ZZFAKE",
    referring_physician="PHIREFERRER^ZZFAKE",
    study_id="PHISTUDY77",
)


@dataclass(frozen=True)
class SeriesOptions:
    """How to write a phantom as a DICOM series (see :func:`write_series`).

    Attributes:
        transfer_syntax: "explicit_le", "implicit_le", "jpeg_lossless" (Process 14
            SV1, via GDCM), "jpeg_ls", "jpeg2000" (lossless), "rle".
        series_number, series_description: SeriesNumber / SeriesDescription.
        modality: "CT" (default), or e.g. "MR" (MR Image Storage) / "PT" (PET).
        image_type: ImageType override; default ORIGINAL\\PRIMARY\\AXIAL (axial) or
            DERIVED\\SECONDARY\\REFORMATTED (coronal).
        identifiers: fake patient/study identifiers.
        study_uid, series_uid, frame_of_reference_uid: explicit UIDs; ``None`` →
            derived deterministically from the phantom seed (+ ``uid_salt``).
        filename_pattern: ``str.format`` pattern with fields ``n`` (file ordinal, in
            shuffled order when ``shuffle``), ``instance``, ``slice`` (array index),
            ``series`` (number), ``patient_id``, ``sop`` and ``hash`` (12 hex chars).
        shuffle: write files in a seeded random order under non-matching names.
        instance_numbers: "ordered", "shuffled" (random permutation) or "absent".
        multiframe: one Enhanced CT Image Storage object instead of one file per slice.
        drop_slices: array slice indices not written (a missing slice).
        duplicate_slices: slice indices written twice (same position, new SOP UID).
        mixed_size_slices: slice indices written cropped by ``crop_px`` rows/columns.
        rescale_slope, rescale_intercept: HU = stored * slope + intercept.
        vary_intercept: per-slice intercept ``rescale_intercept - 100 * (k % 3)``.
        pixel_representation: "uint16" (0) or "int16" (1) stored values.
        bits_stored: BitsStored (12 or 16); stored values are clipped to it.
        window_center, window_width: display window (HU).
        convolution_kernel, manufacturer, model_name, kvp: scanner attributes.
    """

    transfer_syntax: TransferSyntaxName = "explicit_le"
    series_number: int = 1
    series_description: str = "PHANTOM CHEST"
    modality: str = "CT"
    image_type: tuple[str, ...] | None = None
    identifiers: FakeIdentifiers = field(default_factory=FakeIdentifiers)
    study_uid: str | None = None
    series_uid: str | None = None
    frame_of_reference_uid: str | None = None
    uid_salt: str = ""
    filename_pattern: str = "IM{n:04d}.dcm"
    shuffle: bool = False
    instance_numbers: InstanceNumbering = "ordered"
    multiframe: bool = False
    drop_slices: tuple[int, ...] = ()
    duplicate_slices: tuple[int, ...] = ()
    mixed_size_slices: tuple[int, ...] = ()
    crop_px: int = 16
    rescale_slope: float = 1.0
    rescale_intercept: float = -1024.0
    vary_intercept: bool = False
    pixel_representation: Literal["uint16", "int16"] = "uint16"
    bits_stored: int = 16
    window_center: float = 40.0
    window_width: float = 400.0
    convolution_kernel: str = "STANDARD"
    manufacturer: str = "S4CT PHANTOM"
    model_name: str = "SYNTHETIC CHEST"
    kvp: float = 120.0

    def __post_init__(self) -> None:
        if self.transfer_syntax not in TRANSFER_SYNTAX_UIDS:
            raise ValueError(f"unknown transfer syntax {self.transfer_syntax!r}")
        if self.rescale_slope == 0:
            raise ValueError("rescale_slope must be non-zero")
        if self.bits_stored not in (12, 16):
            raise ValueError("bits_stored must be 12 or 16")


def study_uid_for(seed: int, salt: str = "") -> str:
    """Deterministic StudyInstanceUID of a phantom seed."""
    return str(generate_uid(prefix=_UID_ROOT, entropy_srcs=["s4ct-phantom", "study", str(seed), salt]))


def frame_of_reference_uid_for(seed: int, salt: str = "") -> str:
    """Deterministic FrameOfReferenceUID shared by all series of a phantom seed."""
    return str(generate_uid(prefix=_UID_ROOT, entropy_srcs=["s4ct-phantom", "for", str(seed), salt]))


def series_uid_for(seed: int, options: SeriesOptions) -> str:
    """The SeriesInstanceUID :func:`write_series` uses for ``options``."""
    if options.series_uid:
        return options.series_uid
    return str(
        generate_uid(
            prefix=_UID_ROOT,
            entropy_srcs=[
                "s4ct-phantom",
                "series",
                str(seed),
                str(options.series_number),
                options.series_description,
                options.uid_salt,
            ],
        )
    )


def _sop_class(modality: str, multiframe: bool) -> str:
    if modality == "CT":
        return ENHANCED_CT_IMAGE_STORAGE if multiframe else CT_IMAGE_STORAGE
    if modality == "MR":
        return MR_IMAGE_STORAGE
    if modality == "PT":
        return PET_IMAGE_STORAGE
    return SECONDARY_CAPTURE_STORAGE


def _ds(values: float | Sequence[float] | npt.NDArray[np.float64]) -> Any:
    """Format numbers for DS elements (≤ 16 chars each)."""
    if isinstance(values, int | float):
        return _fmt_ds(float(values))
    return [_fmt_ds(float(v)) for v in values]


def _fmt_ds(v: float) -> str:
    s = f"{v:.6f}".rstrip("0").rstrip(".")
    if s in ("-0", ""):
        s = "0"
    return s[:16]


def _base_dataset(ph: Phantom, o: SeriesOptions, sop_class: str, study_uid: str, series_uid: str) -> Dataset:
    ids = o.identifiers
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.StudyDate = "20240115"
    ds.SeriesDate = "20240115"
    ds.AcquisitionDate = "20240115"
    ds.ContentDate = "20240115"
    ds.StudyTime = "093000"
    ds.SeriesTime = "093100"
    ds.AcquisitionTime = "093100"
    ds.ContentTime = "093100"
    ds.AccessionNumber = ids.accession_number
    ds.Modality = o.modality
    ds.Manufacturer = o.manufacturer
    ds.InstitutionName = ids.institution_name
    ds.ReferringPhysicianName = ids.referring_physician
    ds.StudyDescription = "CT CHEST PHANTOM"
    ds.SeriesDescription = o.series_description
    ds.ManufacturerModelName = o.model_name
    ds.PatientName = ids.patient_name
    ds.PatientID = ids.patient_id
    ds.PatientBirthDate = ids.birth_date
    ds.PatientSex = ids.sex
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "HFS"
    if o.modality == "CT":
        ds.SliceThickness = _ds(ph.slice_thickness_mm)
        ds.KVP = _ds(o.kvp)
        ds.ConvolutionKernel = o.convolution_kernel
        if ph.spec.gantry_tilt_deg:
            ds.GantryDetectorTilt = _ds(ph.spec.gantry_tilt_deg)
    elif o.modality == "MR":
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.SliceThickness = _ds(ph.slice_thickness_mm)
        ds.EchoTime = "10"
        ds.RepetitionTime = "500"
        ds.MagneticFieldStrength = "1.5"
    else:
        ds.SliceThickness = _ds(ph.slice_thickness_mm)
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = ids.study_id
    ds.SeriesNumber = o.series_number
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = o.frame_of_reference_uid or frame_of_reference_uid_for(ph.spec.seed, o.uid_salt)
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = o.bits_stored
    ds.HighBit = o.bits_stored - 1
    ds.PixelRepresentation = 1 if o.pixel_representation == "int16" else 0
    return ds


def _stored(hu: npt.NDArray[np.int16], slope: float, intercept: float, o: SeriesOptions) -> npt.NDArray[Any]:
    """HU → stored values (rounded), clipped to the representable range."""
    v = np.rint((hu.astype(np.float64) - intercept) / slope)
    if o.pixel_representation == "int16":
        half = 1 << (o.bits_stored - 1)
        return np.clip(v, -half, half - 1).astype(np.int16)
    return np.clip(v, 0, (1 << o.bits_stored) - 1).astype(np.uint16)


def _write(ds: Dataset, path: Path, ts: str, arr: npt.NDArray[Any]) -> None:
    """Attach pixels ``arr`` (frames, rows, cols or rows, cols), encode with ``ts`` and save."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    little = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    ds.PixelData = little.tobytes()
    ds["PixelData"].VR = "OW"
    if ts == str(ImplicitVRLittleEndian):
        meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.save_as(path, enforce_file_format=True)
    elif ts == str(JPEGLosslessSV1):
        ds.save_as(path, enforce_file_format=True)
        _gdcm_transcode(path, path, ts)
    elif ts in (str(JPEGLSLossless), str(JPEG2000Lossless), str(RLELossless)):
        plugin = {
            str(JPEGLSLossless): "pyjpegls",
            str(JPEG2000Lossless): "pylibjpeg",
            str(RLELossless): "pylibjpeg",
        }
        ds.compress(ts, arr, encoding_plugin=plugin[ts], generate_instance_uid=False)
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.save_as(path, enforce_file_format=True)


def _gdcm_transcode(src: Path, dst: Path, ts: str) -> None:
    """Re-encode a DICOM file with GDCM (pydicom cannot encode JPEG Lossless)."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    if not reader.Read():
        raise RuntimeError("GDCM could not read the file to transcode")
    change = gdcm.ImageChangeTransferSyntax()
    if ts == str(JPEGLosslessSV1):
        change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    else:
        raise ValueError(f"GDCM transcoding to {ts} is not wired")
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError("GDCM could not change the transfer syntax")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError("GDCM could not write the transcoded file")


def _slice_normal(geom: VolumeGeometry) -> npt.NDArray[np.float64]:
    d = geom.direction_matrix
    n = np.cross(d[:, 0], d[:, 1])
    out: npt.NDArray[np.float64] = n / np.linalg.norm(n)
    return out


def write_series(phantom: Phantom, out_dir: str | Path, options: SeriesOptions | None = None) -> list[Path]:
    """Write ``phantom`` as one DICOM series into ``out_dir`` (created); returns the files written.

    Slice k of the arrays is placed at ``geometry.index_to_lps((0, 0, k))``;
    ImageOrientationPatient is the first two direction columns; PixelSpacing is
    [row pitch, column pitch] in mm. Deterministic in (phantom spec, options).
    """
    o = options or SeriesOptions()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    geom = phantom.geometry
    seed = phantom.spec.seed
    ts = TRANSFER_SYNTAX_UIDS[o.transfer_syntax]
    study_uid = o.study_uid or study_uid_for(seed, o.uid_salt)
    series_uid = series_uid_for(seed, o)
    sop_class = _sop_class(o.modality, o.multiframe)
    rng = np.random.default_rng([seed, 3, o.series_number])
    nz = geom.size[2]
    entries: list[tuple[int, int]] = []  # (slice index, copy number)
    for k in range(nz):
        if k in o.drop_slices:
            continue
        entries.append((k, 0))
        if k in o.duplicate_slices:
            entries.append((k, 1))
    if not entries:
        raise ValueError("no slice left to write")
    d = geom.direction_matrix
    iop = [*d[:, 0], *d[:, 1]]
    normal = _slice_normal(geom)
    pix_spacing = [geom.spacing_mm[1], geom.spacing_mm[0]]
    if o.image_type is not None:
        image_type = list(o.image_type)
    elif phantom.spec.orientation == "coronal":
        image_type = ["DERIVED", "SECONDARY", "REFORMATTED"]
    else:
        image_type = (
            ["ORIGINAL", "PRIMARY", "AXIAL"] if o.modality == "CT" else ["ORIGINAL", "PRIMARY", "OTHER"]
        )
    intercepts = [o.rescale_intercept - (100.0 * (k % 3) if o.vary_intercept else 0.0) for k in range(nz)]
    if o.multiframe:
        return [_write_multiframe(phantom, out, o, entries, study_uid, series_uid, sop_class, ts, intercepts)]

    n_files = len(entries)
    file_ord = rng.permutation(n_files) if o.shuffle else np.arange(n_files)
    inst = rng.permutation(n_files) + 1 if o.instance_numbers == "shuffled" else np.arange(1, n_files + 1)
    write_order = rng.permutation(n_files) if o.shuffle else np.arange(n_files)
    paths: list[Path] = []
    for e in write_order:
        k, copy = entries[int(e)]
        ds = _base_dataset(phantom, o, sop_class, study_uid, series_uid)
        sop_uid = str(
            generate_uid(
                prefix=_UID_ROOT, entropy_srcs=["s4ct-phantom", "sop", series_uid, str(k), str(copy)]
            )
        )
        ds.SOPInstanceUID = sop_uid
        ds.ImageType = image_type
        if o.instance_numbers != "absent":
            ds.InstanceNumber = int(inst[int(e)])
        ipp = geom.index_to_lps([0.0, 0.0, float(k)])
        ds.ImagePositionPatient = _ds(ipp)
        ds.ImageOrientationPatient = _ds(iop)
        ds.SliceLocation = _ds(float(ipp @ normal) if not phantom.spec.gantry_tilt_deg else float(ipp[2]))
        ds.PixelSpacing = _ds(pix_spacing)
        img = phantom.hu[k]
        if k in o.mixed_size_slices:
            img = img[: max(1, img.shape[0] - o.crop_px), : max(1, img.shape[1] - o.crop_px)]
        ds.Rows, ds.Columns = int(img.shape[0]), int(img.shape[1])
        if o.modality == "MR":
            arr = _stored(img, 1.0, o.rescale_intercept, o)
        else:
            ds.RescaleIntercept = _ds(intercepts[k])
            ds.RescaleSlope = _ds(o.rescale_slope)
            ds.RescaleType = "HU" if o.modality == "CT" else "US"
            arr = _stored(img, o.rescale_slope, intercepts[k], o)
        ds.WindowCenter = _ds(o.window_center)
        ds.WindowWidth = _ds(o.window_width)
        name = o.filename_pattern.format(
            n=int(file_ord[int(e)]) + 1,
            instance=int(inst[int(e)]),
            slice=k,
            series=o.series_number,
            patient_id=o.identifiers.patient_id,
            sop=sop_uid,
            hash=_short_hash(sop_uid),
        )
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        _write(ds, path, ts, arr)
        paths.append(path)
    return paths


def _short_hash(s: str) -> str:
    return hashlib.sha1(s.encode()).hexdigest()[:12]


def _item(**kw: Any) -> Dataset:
    it = Dataset()
    for k, v in kw.items():
        setattr(it, k, v)
    return it


def _write_multiframe(
    ph: Phantom,
    out: Path,
    o: SeriesOptions,
    entries: list[tuple[int, int]],
    study_uid: str,
    series_uid: str,
    sop_class: str,
    ts: str,
    intercepts: list[float],
) -> Path:
    geom = ph.geometry
    if o.mixed_size_slices:
        raise ValueError("a multi-frame object cannot hold frames of different sizes")
    ds = _base_dataset(ph, o, sop_class, study_uid, series_uid)
    sop_uid = str(generate_uid(prefix=_UID_ROOT, entropy_srcs=["s4ct-phantom", "sop-mf", series_uid]))
    ds.SOPInstanceUID = sop_uid
    it = list(o.image_type) if o.image_type else ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    if len(it) < 4:
        it = [*it, "NONE"][:4] if len(it) == 3 else it
    ds.ImageType = it
    ds.InstanceNumber = 1
    ds.ContentQualification = "PRODUCT"
    ds.BurnedInAnnotation = "NO"
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.AcquisitionDateTime = "20240115093100"
    ds.NumberOfFrames = len(entries)
    ds.Rows, ds.Columns = geom.size[1], geom.size[0]
    d = geom.direction_matrix
    thick = ph.slice_thickness_mm
    spacing_between = abs(float(geom.spacing_mm[2] * (d[:, 2] @ _slice_normal(geom))))
    shared = _item(
        PixelMeasuresSequence=DicomSequence(
            [
                _item(
                    PixelSpacing=_ds([geom.spacing_mm[1], geom.spacing_mm[0]]),
                    SliceThickness=_ds(thick),
                    SpacingBetweenSlices=_ds(spacing_between),
                )
            ]
        ),
        PlaneOrientationSequence=DicomSequence([_item(ImageOrientationPatient=_ds([*d[:, 0], *d[:, 1]]))]),
        CTImageFrameTypeSequence=DicomSequence([_item(FrameType=it)]),
        FrameVOILUTSequence=DicomSequence(
            [_item(WindowCenter=_ds(o.window_center), WindowWidth=_ds(o.window_width))]
        ),
    )
    if not o.vary_intercept:
        shared.PixelValueTransformationSequence = DicomSequence(
            [
                _item(
                    RescaleIntercept=_ds(o.rescale_intercept),
                    RescaleSlope=_ds(o.rescale_slope),
                    RescaleType="HU",
                )
            ]
        )
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    dim_uid = str(generate_uid(prefix=_UID_ROOT, entropy_srcs=["s4ct-phantom", "dim-org", series_uid]))
    ds.DimensionOrganizationSequence = DicomSequence([_item(DimensionOrganizationUID=dim_uid)])
    ds.DimensionIndexSequence = DicomSequence(
        [
            _item(
                DimensionOrganizationUID=dim_uid,
                DimensionIndexPointer=0x00209056,
                FunctionalGroupPointer=0x00209111,
                DimensionDescriptionLabel="Stack ID",
            ),
            _item(
                DimensionOrganizationUID=dim_uid,
                DimensionIndexPointer=0x00209057,
                FunctionalGroupPointer=0x00209111,
                DimensionDescriptionLabel="In-Stack Position Number",
            ),
        ]
    )
    per_frame = []
    frames = []
    for i, (k, _copy) in enumerate(entries):
        ipp = geom.index_to_lps([0.0, 0.0, float(k)])
        item = _item(
            PlanePositionSequence=DicomSequence([_item(ImagePositionPatient=_ds(ipp))]),
            FrameContentSequence=DicomSequence(
                [
                    _item(
                        FrameAcquisitionNumber=1,
                        StackID="1",
                        InStackPositionNumber=i + 1,
                        DimensionIndexValues=[1, i + 1],
                    )
                ]
            ),
        )
        if o.vary_intercept:
            item.PixelValueTransformationSequence = DicomSequence(
                [
                    _item(
                        RescaleIntercept=_ds(intercepts[k]),
                        RescaleSlope=_ds(o.rescale_slope),
                        RescaleType="HU",
                    )
                ]
            )
        per_frame.append(item)
        frames.append(_stored(ph.hu[k], o.rescale_slope, intercepts[k], o))
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    name = o.filename_pattern.format(
        n=1,
        instance=1,
        slice=0,
        series=o.series_number,
        patient_id=o.identifiers.patient_id,
        sop=sop_uid,
        hash=_short_hash(sop_uid),
    )
    path = out / name
    path.parent.mkdir(parents=True, exist_ok=True)
    _write(ds, path, ts, np.stack(frames))
    return path


def write_localizer(phantom: Phantom, out_dir: str | Path, options: SeriesOptions | None = None) -> Path:
    """Write a single-image localizer (scout) of ``phantom``: an A-P projection in its own series.

    The image is the mean HU along the patient's y axis (rows = superior → inferior,
    columns = x), ImageType ORIGINAL\\PRIMARY\\LOCALIZER, on the coronal plane
    through the body centre. Defaults: series number 99, description "TOPOGRAM".
    """
    o = options or SeriesOptions(series_number=99, series_description="TOPOGRAM")
    o = replace(o, multiframe=False, drop_slices=(), duplicate_slices=(), mixed_size_slices=(), shuffle=False)
    geom = phantom.geometry
    d = geom.direction_matrix
    hu = phantom.hu.astype(np.float32)
    if phantom.spec.orientation == "coronal":
        proj = hu.mean(axis=0)  # rows already superior → inferior
        row_sp, col_sp = geom.spacing_mm[1], geom.spacing_mm[0]
        ipp = geom.index_to_lps([0.0, 0.0, (geom.size[2] - 1) / 2.0])
    else:
        proj = hu.mean(axis=1)[::-1]  # (z, x), flipped so that row 0 is superior
        row_sp, col_sp = geom.spacing_mm[2], geom.spacing_mm[0]
        ipp = geom.index_to_lps([0.0, (geom.size[1] - 1) / 2.0, float(geom.size[2] - 1)])
    img = np.clip(np.rint(proj), HU_MIN, HU_MAX).astype(np.int16)
    scout_geom = VolumeGeometry(
        size=(img.shape[1], img.shape[0], 1),
        spacing_mm=(col_sp, row_sp, 1.0),
        origin_mm=(float(ipp[0]), float(ipp[1]), float(ipp[2])),
        direction=(float(d[0, 0]), 0.0, 0.0, float(d[1, 0]), 0.0, 1.0, float(d[2, 0]), -1.0, 0.0),
    )
    scout = replace(
        phantom,
        hu=img[None],
        mask=np.zeros((1, *img.shape), dtype=np.uint8),
        lung_mask=np.zeros((1, *img.shape), dtype=bool),
        geometry=scout_geom,
        spec=replace(phantom.spec, orientation="axial", gantry_tilt_deg=0.0),
    )
    it = o.image_type or ("ORIGINAL", "PRIMARY", "LOCALIZER")
    return write_series(scout, out_dir, replace(o, image_type=it))[0]


# --------------------------------------------------------------------------- ZIP studies

_APPLEDOUBLE: Final[bytes] = b"\x00\x05\x16\x07\x00\x02\x00\x00" + b"Mac OS X        " + b"\x00" * 58


def _write_dicomdir_like(path: Path) -> None:
    """A minimal Media Storage Directory object (no images), as found next to real exports."""
    ds = Dataset()
    ds.FileSetID = "S4CTPHANTOM"
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.FileSetConsistencyFlag = 0
    ds.DirectoryRecordSequence = DicomSequence([])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(MEDIA_STORAGE_DIRECTORY)
    meta.MediaStorageSOPInstanceUID = generate_uid(
        prefix=_UID_ROOT, entropy_srcs=["s4ct-phantom", "dicomdir"]
    )
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)


def write_study_zip(
    zip_path: str | Path,
    sources: Sequence[str | Path],
    *,
    layout: Literal["flat", "nested"] = "nested",
    root: str = "STUDY",
    macosx_junk: bool = False,
    dicomdir: bool = False,
    readme: bool = False,
    compression: int = zipfile.ZIP_DEFLATED,
) -> Path:
    """Pack series folders and/or files into one ZIP, like a PACS/CD export.

    Args:
        zip_path: archive to create (parent folders are created).
        sources: folders (all files below them, recursively) and/or single files.
        layout: "nested" → ``root/<folder name>/<relative path>``; "flat" → every file
            at the archive root (name clashes get a ``<folder>_`` prefix).
        root: top folder for the nested layout.
        macosx_junk: add ``__MACOSX/…/._*`` AppleDouble files and a ``.DS_Store``.
        dicomdir: add a ``DICOMDIR`` (Media Storage Directory without records).
        readme: add a ``README.txt``.
        compression: ``zipfile`` compression constant.
    """
    zp = Path(zip_path)
    zp.parent.mkdir(parents=True, exist_ok=True)
    members: list[tuple[Path, str]] = []
    seen: set[str] = set()
    for src in sources:
        sp = Path(src)
        files = sorted(p for p in sp.rglob("*") if p.is_file()) if sp.is_dir() else [sp]
        for f in files:
            rel = f.relative_to(sp).as_posix() if sp.is_dir() else f.name
            if layout == "nested":
                arc = f"{root}/{sp.name}/{rel}" if sp.is_dir() else f"{root}/{rel}"
            else:
                arc = f.name
                if arc in seen:
                    arc = f"{sp.name}_{f.name}"
            seen.add(arc)
            members.append((f, arc))
    with zipfile.ZipFile(zp, "w", compression=compression) as zf:
        for f, arc in members:
            zf.write(f, arc)
        if dicomdir:
            with tempfile.TemporaryDirectory() as td:
                p = Path(td) / "DICOMDIR"
                _write_dicomdir_like(p)
                zf.write(p, f"{root}/DICOMDIR" if layout == "nested" else "DICOMDIR")
        if readme:
            zf.writestr(
                f"{root}/README.txt" if layout == "nested" else "README.txt",
                "Synthetic chest CT phantom generated by Service4CT. Not patient data.\n",
            )
        if macosx_junk:
            for _, arc in members[:5]:
                head, _, name = arc.rpartition("/")
                zf.writestr(f"__MACOSX/{head + '/' if head else ''}._{name}", _APPLEDOUBLE)
            zf.writestr(
                f"{root}/.DS_Store" if layout == "nested" else ".DS_Store",
                b"\x00\x00\x00\x01Bud1" + b"\x00" * 32,
            )
    return zp


@dataclass(frozen=True)
class SeriesInfo:
    """One series written by :func:`make_study`."""

    series_uid: str
    series_number: int
    description: str
    modality: str
    n_files: int
    role: str  # "primary", "thick", "scout"
    transfer_syntax: str
    geometry: VolumeGeometry | None


@dataclass
class StudyInfo:
    """What :func:`make_study` wrote.

    Attributes:
        zip_path: the archive.
        variant, seed, label, lesions: as generated (lesions in LPS mm).
        study_uid: StudyInstanceUID of every series.
        series: per-series UIDs/roles; ``primary_series_uid`` is the diagnostic one.
        identifiers: the fake identifiers written (tags, and file names for "phi").
        phantom: the primary series' phantom (arrays, geometry, lesion mask).
    """

    zip_path: Path
    variant: str
    seed: int
    label: int
    lesions: list[Lesion]
    study_uid: str
    series: list[SeriesInfo]
    identifiers: FakeIdentifiers
    phantom: Phantom

    @property
    def primary_series_uid(self) -> str:
        return next(s.series_uid for s in self.series if s.role == "primary")


def make_study(
    zip_path: str | Path,
    *,
    seed: int,
    variant: str = "standard",
    label: int | None = None,
    kinds: tuple[str, ...] | None = None,
    difficulty: tuple[float, float] = (0.5, 1.0),
    rows: int | None = None,
    cols: int | None = None,
    pixel_spacing_mm: float | None = None,
    slice_spacing_mm: float | None = None,
    n_slices: int | None = None,
    identifiers: FakeIdentifiers | None = None,
    layout: Literal["flat", "nested"] = "nested",
    macosx_junk: bool = False,
    dicomdir: bool = False,
    readme: bool = False,
) -> StudyInfo:
    """Generate a phantom and write it as a ZIP study in one of ``STUDY_VARIANTS``.

    Defaults are small and cheap (64×64 pixels of 6 mm, 5 mm slices ≈ 60 slices)
    except for "real_like" (150 slices of 512² at 0.7 mm, 2 mm, JPEG Lossless,
    SIEMENS-like). ``label`` defaults to ``seed % 2``. Variants:
    standard, shuffled, multiframe, jpeg_lossless, jpeg_ls, jpeg2000, rle,
    multi_series (1 mm + 5 mm of the same phantom + a scout), gantry_tilt (15°),
    missing_slice, duplicate_slice, non_ct (MR), coronal, mixed_sizes,
    thick (7 mm), few_slices (12), phi (conspicuous fake identifiers in tags and
    file names), real_like.
    """
    if variant not in STUDY_VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {STUDY_VARIANTS}")
    real = variant == "real_like"
    lab = (seed % 2) if label is None else label
    ids = identifiers or (PHI_IDENTIFIERS if variant == "phi" else FakeIdentifiers())
    base = PhantomSpec(
        seed=seed,
        label=lab,
        kinds=kinds if lab == 1 else None,
        difficulty=difficulty,
        rows=rows or (512 if real else 64),
        cols=cols or (512 if real else 64),
        pixel_spacing_mm=pixel_spacing_mm or (0.7 if real else 6.0),
        slice_spacing_mm=slice_spacing_mm or (2.0 if real else 5.0),
        n_slices=n_slices or (150 if real else None),
    )
    opts = SeriesOptions(identifiers=ids, series_number=2, series_description="CHEST 5.0 B")
    spec = base
    extra: list[tuple[str, PhantomSpec, SeriesOptions]] = []
    scout = False
    if variant == "shuffled":
        opts = replace(opts, shuffle=True, instance_numbers="shuffled")
    elif variant == "multiframe":
        opts = replace(opts, multiframe=True)
    elif variant in ("jpeg_lossless", "jpeg_ls", "jpeg2000", "rle"):
        opts = replace(opts, transfer_syntax=variant)  # type: ignore[arg-type]
    elif variant == "multi_series":
        spec = replace(base, slice_spacing_mm=slice_spacing_mm or 1.0, n_slices=None)
        opts = replace(opts, series_number=3, series_description="CHEST 1.0 B")
        thick = replace(base, slice_spacing_mm=5.0, slice_thickness_mm=5.0, n_slices=None)
        extra.append(("thick", thick, replace(opts, series_number=2, series_description="CHEST 5.0 B")))
        scout = True
    elif variant == "gantry_tilt":
        spec = replace(base, gantry_tilt_deg=15.0)
    elif variant == "non_ct":
        opts = replace(opts, modality="MR", series_description="T1 CHEST")
    elif variant == "coronal":
        spec = replace(base, orientation="coronal")
        opts = replace(opts, series_description="CHEST COR 5.0")
    elif variant == "thick":
        spec = replace(base, slice_spacing_mm=7.0, slice_thickness_mm=7.0)
        opts = replace(opts, series_description="CHEST 7.0")
    elif variant == "few_slices":
        spec = replace(base, n_slices=n_slices or 12)
    elif variant == "phi":
        opts = replace(opts, filename_pattern="{patient_id}_{n:04d}.dcm")
    elif real:
        opts = replace(
            opts,
            transfer_syntax="jpeg_lossless",
            manufacturer="SIEMENS",
            model_name="SOMATOM Definition AS+",
            convolution_kernel="D40s",
            bits_stored=12,
            series_description="Thorax 2.0 D40s",
            filename_pattern="{n:08d}",
        )

    ph = generate_phantom(spec)
    nz = ph.geometry.size[2]
    if variant == "missing_slice":
        opts = replace(opts, drop_slices=(nz // 2,))
    elif variant == "duplicate_slice":
        opts = replace(opts, duplicate_slices=(nz // 3,))
    elif variant == "mixed_sizes":
        opts = replace(opts, mixed_size_slices=(nz // 4, nz // 2), crop_px=max(2, spec.rows // 8))

    zp = Path(zip_path)
    series: list[SeriesInfo] = []
    with tempfile.TemporaryDirectory(prefix="s4ct-phantom-") as td:
        sources: list[Path] = []
        folder = (
            f"{ids.patient_id}_SER{opts.series_number}"
            if variant == "phi"
            else f"SER{opts.series_number:03d}"
        )
        files = write_series(ph, Path(td) / folder, opts)
        sources.append(Path(td) / folder)
        series.append(_series_info(ph, opts, "primary", len(files)))
        for role, sp, so in extra:
            ph2 = generate_phantom(sp)
            f2 = write_series(ph2, Path(td) / f"SER{so.series_number:03d}", so)
            sources.append(Path(td) / f"SER{so.series_number:03d}")
            series.append(_series_info(ph2, so, role, len(f2)))
        if scout:
            so = replace(opts, series_number=1, series_description="TOPOGRAM", image_type=None)
            write_localizer(ph, Path(td) / "SER001", so)
            # same seed and options as write_series used, so the UID matches the file's
            series.append(replace(_series_info(ph, so, "scout", 1), geometry=None))
            sources.append(Path(td) / "SER001")
        write_study_zip(
            zp,
            sources,
            layout=layout,
            root=f"{ids.patient_name.replace('^', '_')}" if variant == "phi" else "STUDY",
            macosx_junk=macosx_junk,
            dicomdir=dicomdir,
            readme=readme,
        )
    return StudyInfo(
        zip_path=zp,
        variant=variant,
        seed=seed,
        label=lab,
        lesions=ph.lesions,
        study_uid=opts.study_uid or study_uid_for(seed, opts.uid_salt),
        series=series,
        identifiers=ids,
        phantom=ph,
    )


def _series_info(ph: Phantom | None, o: SeriesOptions, role: str, n_files: int) -> SeriesInfo:
    seed = ph.spec.seed if ph is not None else 0
    return SeriesInfo(
        series_uid=series_uid_for(seed, o) if ph is not None else "",
        series_number=o.series_number,
        description=o.series_description,
        modality=o.modality,
        n_files=n_files,
        role=role,
        transfer_syntax=TRANSFER_SYNTAX_UIDS[o.transfer_syntax],
        geometry=ph.geometry if ph is not None else None,
    )


# --------------------------------------------------------------------------- corpus


def write_mask_nifti(mask: npt.NDArray[Any], geometry: VolumeGeometry, path: str | Path) -> Path:
    """Write a (z, y, x) label map as NIfTI via SimpleITK (LPS geometry → RAS affine)."""
    import SimpleITK as sitk  # noqa: N813

    img = sitk.GetImageFromArray(np.ascontiguousarray(mask))
    img.SetSpacing([float(s) for s in geometry.spacing_mm])
    img.SetOrigin([float(s) for s in geometry.origin_mm])
    img.SetDirection([float(s) for s in geometry.direction])
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(p), True)
    return p


def corpus_plan(n: int, seed: int) -> list[tuple[str, int, int]]:
    """The studies of corpus ``seed``: ``(study_id, phantom seed, label)`` for i < ``n``.

    Exactly ``n // 2`` positives in a seeded order. :func:`write_corpus` writes these
    studies; ``ml.data.phantom_records`` generates the same ones in memory.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    labels = np.random.default_rng([seed, 77]).permutation(np.arange(n) < n // 2).astype(int)
    return [(f"ph{seed:04d}-{i:04d}", seed * 10007 + i, int(labels[i])) for i in range(n)]


def phantom_volume(phantom: Phantom, options: SeriesOptions | None = None) -> CTVolume:
    """The volume ``load_volume`` reads back from ``write_series(phantom, ..., options)``.

    Stored values, RescaleSlope/Intercept, grid and series UID are the ones the DICOM
    files carry, without writing or parsing them (about 3 s of a 128² study's 4 s).
    Only plain series qualify: one rescale for all slices, none dropped, duplicated,
    cropped or in another modality; anything else raises ``ValueError``.
    """
    o = options or SeriesOptions()
    if o.vary_intercept or o.drop_slices or o.duplicate_slices or o.mixed_size_slices or o.modality != "CT":
        raise ValueError("phantom_volume needs a plain CT series (write it with write_series instead)")
    stored = _stored(phantom.hu, o.rescale_slope, o.rescale_intercept, o)
    return CTVolume(
        stored=stored,
        slope=float(o.rescale_slope),
        intercept=float(o.rescale_intercept),
        geometry=phantom.geometry,
        series_uid=series_uid_for(phantom.spec.seed, o),
    )


def write_corpus(
    out_dir: str | Path,
    n: int,
    seed: int,
    *,
    rows: int | None = 128,
    cols: int | None = 128,
    pixel_spacing_mm: float | None = 3.0,
    slice_spacing_mm: float | None = 2.5,
    difficulty: tuple[float, float] = (0.3, 1.0),
    variants: Sequence[str] = ("standard",),
) -> Path:
    """Write ``n`` phantom studies with balanced labels; returns the ``labels.csv`` path.

    Layout: ``studies/<id>.zip``, ``masks/<id>.nii.gz`` (lesion label map in the
    primary series geometry; all zero for label 0), ``labels.csv`` with columns
    study_id, label, zip (relative path), lesion_kinds ("|"-joined), seed, and
    ``lesions.json`` (per study: kind, centre LPS mm, size mm, HU, mask value).
    Labels are exactly ``n // 2`` positives in a seeded order; ``variants`` cycle.
    A size argument of ``None`` takes the variant's own default (see :func:`make_study`).
    """
    plan = corpus_plan(n, seed)
    out = Path(out_dir)
    (out / "studies").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows_out: list[dict[str, Any]] = []
    lesions_out: dict[str, Any] = {}
    for i, (sid, s, label) in enumerate(plan):
        info = make_study(
            out / "studies" / f"{sid}.zip",
            seed=s,
            variant=variants[i % len(variants)],
            label=label,
            difficulty=difficulty,
            rows=rows,
            cols=cols,
            pixel_spacing_mm=pixel_spacing_mm,
            slice_spacing_mm=slice_spacing_mm,
        )
        write_mask_nifti(info.phantom.mask, info.phantom.geometry, out / "masks" / f"{sid}.nii.gz")
        kinds = sorted({les.kind for les in info.lesions})
        rows_out.append(
            {
                "study_id": sid,
                "label": info.label,
                "zip": f"studies/{sid}.zip",
                "lesion_kinds": "|".join(kinds),
                "seed": s,
            }
        )
        lesions_out[sid] = [les.to_dict() for les in info.lesions]
    csv_path = out / "labels.csv"
    with csv_path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["study_id", "label", "zip", "lesion_kinds", "seed"])
        w.writeheader()
        w.writerows(rows_out)
    (out / "lesions.json").write_text(json.dumps(lesions_out, indent=1))
    return csv_path
