"""Analytic bodies other than the chest, for the out-of-distribution families (LPS mm, HU).

Each is a :class:`~ml.phantom.anatomy.Region`: the grid of
:func:`~ml.phantom.generate.phantom_geometry` is laid over it and
:func:`~ml.phantom.generate.sample_grid` samples it, with the chest phantom's noise
(:func:`~ml.phantom.anatomy.add_noise`). They carry no lesions and no lungs. Drawn from a
seed by :mod:`ml.phantom.families`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ml.phantom.anatomy import F32, Anatomy, SmoothField, add_noise, table_mask

__all__ = ["AbdomenRegion", "Ellipsoid", "HeadRegion", "WaterCylinder"]

Ellipsoid = tuple[float, float, float, float, float, float]  # cx, cy, cz, rx, ry, rz (mm)
Bool = npt.NDArray[np.bool_]
Sample = tuple[F32, npt.NDArray[np.uint8], Bool]


def _inside(X: F32, Y: F32, Z: F32, e: Ellipsoid, scale: float = 1.0) -> Bool:
    """Points inside ellipsoid ``e`` with its semi-axes times ``scale`` (broadcast shape)."""
    cx, cy, cz, rx, ry, rz = e
    s = np.float32(scale)
    out: Bool = ((X - cx) / (rx * s)) ** 2 + ((Y - cy) / (ry * s)) ** 2 + ((Z - cz) / (rz * s)) ** 2 <= 1.0
    return out


def _local(centre: tuple[float, float, float], x: F32, y: F32, z: F32) -> tuple[F32, F32, F32]:
    X = np.asarray(x, dtype=np.float32) - np.float32(centre[0])
    Y = np.asarray(y, dtype=np.float32) - np.float32(centre[1])
    Z = np.asarray(z, dtype=np.float32) - np.float32(centre[2])
    return X, Y, Z


def _finish(hu: F32, noise: F32 | None, noise_hu: float) -> Sample:
    """Noise as the chest phantom gets it; no lesions and no lungs."""
    if noise is not None:
        add_noise(hu, noise, noise_hu)
    return hu, np.zeros(hu.shape, dtype=np.uint8), np.zeros(hu.shape, dtype=bool)


@dataclass(frozen=True)
class AbdomenRegion:
    """The chest phantom's patient below the diaphragm, with abdominal organs (body-centred mm).

    Organs replace only the chest anatomy's plain soft tissue (40 HU), so spine, fat rim
    and table stay those of the same patient.
    """

    chest: Anatomy
    top_z: float  # body-centred z of the top of the region, below the lowest lung base
    coverage_mm: float
    liver: Ellipsoid
    spleen: Ellipsoid
    kidneys: tuple[Ellipsoid, Ellipsoid]
    bladder: Ellipsoid
    iliac: tuple[Ellipsoid, Ellipsoid]
    bowel: tuple[SmoothField, SmoothField, SmoothField]
    gas_level: float  # bowel content above this level of the third field is gas

    @property
    def centre(self) -> tuple[float, float, float]:
        return self.chest.centre

    @property
    def body_ay(self) -> float:
        return self.chest.body_ay

    @property
    def table_gap_mm(self) -> float:
        return self.chest.table_gap_mm

    @property
    def table_thick_mm(self) -> float:
        return self.chest.table_thick_mm

    @property
    def scan_z_range(self) -> tuple[float, float]:
        return self.top_z - self.coverage_mm, self.top_z

    def sample(self, x: F32, y: F32, z: F32, noise: F32 | None = None, noise_hu: float = 12.0) -> Sample:
        hu, _, _ = self.chest.sample(x, y, z)
        X, Y, Z = _local(self.centre, x, y, z)
        shape = hu.shape
        soft = hu == np.float32(40.0)

        def put(sel: Bool, value: float) -> None:
            hu[soft & np.broadcast_to(sel, shape)] = value

        # bowel loops (tubes where two smooth fields are both near zero) in mesenteric fat
        idx = np.flatnonzero(soft & np.broadcast_to(self.top_z - 70.0 > Z, shape))
        if idx.size:
            px, py, pz = (np.broadcast_to(a, shape).ravel()[idx] for a in (X, Y, Z))
            f1, f2, f3 = (f(px, py, pz) for f in self.bowel)
            tube = f1 * f1 + f2 * f2 < 0.5
            v = np.where(f3 < -0.3, np.float32(-85.0), np.float32(35.0))
            v[tube] = 18.0
            v[tube & (f3 > self.gas_level)] = -1000.0
            hu.ravel()[idx] = v
        for organ, value in ((self.liver, 58.0), (self.spleen, 48.0), *((k, 32.0) for k in self.kidneys)):
            put(_inside(X, Y, Z, organ), value)
        put(_inside(X, Y, Z, self.bladder), 8.0)
        for wing in self.iliac:
            put(_inside(X, Y, Z, wing), 550.0)
            put(_inside(X, Y, Z, wing, 0.8), 220.0)
        # anterior abdominal wall muscle over the chest's sternum line
        ay_in = self.chest.body_ay - self.chest.fat_mm
        hu[np.broadcast_to((-(ay_in - 16.0) > Y), shape) & (hu > -50.0)] = 50.0
        return _finish(hu, noise, noise_hu)


@dataclass(frozen=True)
class _Object:
    """A free-standing object on the table (mm relative to ``centre``), scanned over ``coverage_mm``."""

    centre: tuple[float, float, float]
    table_gap_mm: float
    table_thick_mm: float
    coverage_mm: float

    @property
    def body_ay(self) -> float:
        raise NotImplementedError

    def _canvas(self, x: F32, y: F32, z: F32) -> tuple[F32, F32, F32, F32, Callable[[Bool, float], None]]:
        """(X, Y, Z, HU of air and the table, ``put(where, HU)``) at LPS points (mm)."""
        X, Y, Z = _local(self.centre, x, y, z)
        shape = np.broadcast_shapes(X.shape, Y.shape, Z.shape)
        hu = np.full(shape, -1020.0, dtype=np.float32)

        def put(sel: Bool, value: float) -> None:
            hu[np.broadcast_to(sel, shape)] = value

        put(table_mask(X, Y, self.body_ay + self.table_gap_mm, self.table_thick_mm), 150.0)
        return X, Y, Z, hu, put


@dataclass(frozen=True)
class HeadRegion(_Object):
    """A head and the top of the neck; ``centre`` is the centre of the head."""

    a: float  # head semi-axes: x (left-right), y (anterior-posterior), z (cranio-caudal)
    b: float
    c: float
    scalp_mm: float
    skull_mm: float
    sinuses: tuple[Ellipsoid, ...]
    ventricles: tuple[Ellipsoid, Ellipsoid]
    brain: SmoothField

    @property
    def body_ay(self) -> float:
        return self.b

    @property
    def scan_z_range(self) -> tuple[float, float]:
        return self.c - self.coverage_mm, self.c

    def sample(self, x: F32, y: F32, z: F32, noise: F32 | None = None, noise_hu: float = 12.0) -> Sample:
        X, Y, Z, hu, put = self._canvas(x, y, z)
        a, b, c = self.a, self.b, self.c
        below = -0.5 * c > Z
        put(below & ((X / (0.5 * a)) ** 2 + ((Y - 0.1 * b) / (0.45 * b)) ** 2 <= 1.0), 40.0)  # neck
        put(below & (X * X + (Y - 0.3 * b) ** 2 < 121.0), 400.0)  # cervical vertebra
        s, k = self.scalp_mm, self.skull_mm
        for depth, value in ((0.0, 40.0), (s, 950.0), (s + 0.3 * k, 500.0), (s + 0.7 * k, 950.0)):
            put(_inside(X, Y, Z, (0.0, 0.0, 0.0, a - depth, b - depth, c - depth)), value)  # scalp, skull
        d = s + k
        brain = np.broadcast_to(_inside(X, Y, Z, (0.0, 0.0, 0.0, a - d, b - d, c - d)), hu.shape)
        idx = np.flatnonzero(brain)
        if idx.size:
            px, py, pz = (np.broadcast_to(v, hu.shape).ravel()[idx] for v in (X, Y, Z))
            hu.ravel()[idx] = 33.0 + 4.0 * np.tanh(2.0 * self.brain(px, py, pz))  # grey/white matter
        for v in self.ventricles:
            put(_inside(X, Y, Z, v), 6.0)
        head = _inside(X, Y, Z, (0.0, 0.0, 0.0, a, b, c))
        for sinus in self.sinuses:
            put(head & _inside(X, Y, Z, sinus, 1.3), 700.0)  # thin bone wall
            put(head & _inside(X, Y, Z, sinus), -1000.0)
        return _finish(hu, noise, noise_hu)


@dataclass(frozen=True)
class WaterCylinder(_Object):
    """A water-filled acrylic cylinder along z with rods (x, y, radius, HU); ``centre`` on its axis."""

    radius_mm: float
    wall_mm: float
    length_mm: float
    rods: tuple[tuple[float, float, float, float], ...]

    @property
    def body_ay(self) -> float:
        return self.radius_mm

    @property
    def scan_z_range(self) -> tuple[float, float]:
        return -self.coverage_mm / 2.0, self.coverage_mm / 2.0

    def sample(self, x: F32, y: F32, z: F32, noise: F32 | None = None, noise_hu: float = 12.0) -> Sample:
        X, Y, Z, hu, put = self._canvas(x, y, z)
        along = np.abs(Z) <= self.length_mm / 2.0
        r2 = X * X + Y * Y
        put(along & (r2 <= self.radius_mm**2), 120.0)
        put(along & (r2 <= (self.radius_mm - self.wall_mm) ** 2), 0.0)
        for rx, ry, rr, value in self.rods:
            put(along & ((X - rx) ** 2 + (Y - ry) ** 2 <= rr * rr), value)
        return _finish(hu, noise, noise_hu)
