"""The analytic patient: body, bones, airways, lungs and lesion shapes as functions of LPS mm.

An :class:`Anatomy` is evaluated at any points (:meth:`Anatomy.sample`), so one patient
can be sampled on any grid. It is drawn from a seed by ``ml.phantom.generate.make_anatomy``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from ml.phantom.spec import HU_MIN

F32 = npt.NDArray[np.float32]


class Region(Protocol):
    """An analytic object that a grid is laid over and sampled from (LPS mm, HU).

    The chest :class:`Anatomy`, or a region of :mod:`ml.phantom.families`. ``centre`` is the
    LPS position (mm) of its own origin, ``scan_z_range`` the z range (mm, relative to that
    origin) a default axial scan covers the middle of, ``body_ay`` its half depth (mm) and
    the table lies ``table_gap_mm`` behind it, ``table_thick_mm`` thick.
    """

    @property
    def centre(self) -> tuple[float, float, float]: ...

    @property
    def body_ay(self) -> float: ...

    @property
    def table_gap_mm(self) -> float: ...

    @property
    def table_thick_mm(self) -> float: ...

    @property
    def scan_z_range(self) -> tuple[float, float]: ...

    def sample(
        self, x: F32, y: F32, z: F32, noise: F32 | None = None, noise_hu: float = 12.0
    ) -> tuple[F32, npt.NDArray[np.uint8], npt.NDArray[np.bool_]]:
        """(HU, lesion mask, lung mask) at LPS points (mm), as :meth:`Anatomy.sample`."""
        ...


@dataclass(frozen=True)
class SmoothField:
    """Smooth random scalar field: sum of cosines (unit variance), argument in mm."""

    k: tuple[tuple[float, float, float], ...]  # wave vectors, rad/mm
    phase: tuple[float, ...]

    @classmethod
    def draw(cls, rng: np.random.Generator, n: int, wavelength_mm: tuple[float, float]) -> SmoothField:
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
class Lung:
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
class LesionModel:
    """Analytic lesion in body-centred coordinates (mm)."""

    kind: str
    centre: tuple[float, float, float]  # body-centred
    radii: tuple[float, float, float]
    hu: float
    edge: float = 0.0  # soft-edge half-width, as a fraction of the normalised radius (0: sharp)
    side: int = 0  # lung side (effusion only)
    fuzz: SmoothField | None = None  # boundary irregularity (blobs only)
    fuzz_amp: float = 0.0
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
    lungs: tuple[Lung, Lung]
    heart: tuple[float, float, float, float, float, float]  # cx, cy, cz, rx, ry, rz
    spine_y: float
    carina_z: float
    table_gap_mm: float
    table_thick_mm: float
    table_hu: float
    rib_period: float
    rib_slope: float
    rib_phase: float
    vessels: tuple[SmoothField, SmoothField]
    bronchi: tuple[SmoothField, SmoothField]
    lesion_models: tuple[LesionModel, ...]

    @property
    def chest_z_range(self) -> tuple[float, float]:
        """Body-centred z range (mm) from the lowest diaphragm to the highest apex."""
        lo = min(lg.z_dia for lg in self.lungs) - 15.0
        hi = max(lg.cz + lg.c for lg in self.lungs) + 20.0
        return lo, hi

    @property
    def scan_z_range(self) -> tuple[float, float]:
        """The z range a default scan covers the middle of: :attr:`chest_z_range`."""
        return self.chest_z_range

    # -- pieces --------------------------------------------------------------

    def _body(self, X: F32, Y: F32, Z: F32) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        """(body, inside the fat rim) at body-centred points (mm), broadcast."""
        taper = 1.0 - 0.05 * np.clip(Z / 200.0, -1.0, 1.0) ** 2
        ax = np.float32(self.body_ax) * taper
        ax_in = ax - np.float32(self.fat_mm)
        ry2 = (Y / np.float32(self.body_ay)) ** 2
        ry2_in = (Y / np.float32(self.body_ay - self.fat_mm)) ** 2
        return (X / ax) ** 2 + ry2 <= 1.0, (X / ax_in) ** 2 + ry2_in <= 1.0

    def _lung(self, lg: Lung, X: F32, Y: F32, Z: F32) -> npt.NDArray[np.bool_]:
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

    def lesion_weight(self, les: LesionModel, X: F32, Y: F32, Z: F32) -> F32:
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

    def in_lung(self, pts: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
        """Lung membership (before lesions) of body-centred points (n, 3) in mm."""
        X, Y, Z = (pts[:, i].astype(np.float32) for i in range(3))
        _, inner = self._body(X, Y, Z)
        out = np.zeros(len(pts), dtype=bool)
        for lg in self.lungs:
            out |= self._lung(lg, X, Y, Z)
        return out & inner

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
        table = table_mask(X, Y, self.body_ay + self.table_gap_mm, self.table_thick_mm)
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
            add_noise(hu, noise, noise_hu)

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
            w = self.lesion_weight(les, px, py, pz)
            target = np.float32(les.hu)
            tv = target + noise.ravel()[sel] * np.float32(noise_hu) if noise is not None else target
            flat = hu.ravel()
            flat[sel] = flat[sel] * (1.0 - w) + tv * w
            mask.ravel()[sel[w >= 0.5]] = value
        return hu, mask, lung


def add_noise(hu: F32, noise: F32, noise_hu: float) -> None:
    """Add voxel noise in place: ``noise · noise_hu`` HU to everything denser than air, and a
    small clipped fraction of it to air (below -1000.5 HU), which stays in [-1024, -1001] HU."""
    air = hu < -1000.5
    hu += noise * np.float32(noise_hu)
    hu[air] = np.clip(-1017.0 + 4.0 * noise[air], HU_MIN, -1001.0)


def table_mask(X: F32, Y: F32, top_y_mm: float, thick_mm: float) -> npt.NDArray[np.bool_]:
    """The patient table: a slab ``thick_mm`` thick from ``top_y_mm`` down (posterior), 460 mm wide."""
    out: npt.NDArray[np.bool_] = ((top_y_mm <= Y) & (top_y_mm + thick_mm >= Y)) & (np.abs(X) <= 230.0)
    return out


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
