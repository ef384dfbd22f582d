"""Lesions: drawing their kinds, sizes and HU, placing them inside the lungs, measuring them.

Every draw comes from the anatomy stream ``[seed, 0]`` after the body's own draws.
"""

from __future__ import annotations

import numpy as np

from ml.phantom.anatomy import Anatomy, LesionModel, SmoothField
from ml.phantom.spec import LESION_KINDS, Lesion, PhantomSpec


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def draw_lesions(anat: Anatomy, rng: np.random.Generator, spec: PhantomSpec) -> tuple[LesionModel, ...]:
    """The lesions of a label-1 ``spec``, drawn from ``rng`` (the anatomy stream, after the body)."""
    kinds = list(spec.kinds) if spec.kinds else _draw_kinds(rng)
    n = spec.n_lesions if spec.n_lesions else max(len(kinds), int(rng.integers(1, 4)))
    order = kinds + [kinds[int(rng.integers(len(kinds)))] for _ in range(n - len(kinds))]
    models: list[LesionModel] = []
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
    return tuple(models)


def _draw_kinds(rng: np.random.Generator) -> list[str]:
    n = int(rng.integers(1, 3))
    picks = rng.choice(len(LESION_KINDS), size=n, replace=False)
    return [LESION_KINDS[int(i)] for i in sorted(picks)]


def _blob(anat: Anatomy, rng: np.random.Generator, kind: str, d: float) -> LesionModel:
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
        if anat.in_lung(probe).all():
            centre = c
            break
    else:  # pragma: no cover - lungs are large; never reached for plausible anatomy
        raise RuntimeError("could not place a lesion inside the lungs")
    fuzz = SmoothField.draw(rng, 4, (15.0, 30.0)) if fuzz_amp > 0 else None
    edge = edge_mm / float(np.mean(radii))
    c_mm = (float(centre[0]), float(centre[1]), float(centre[2]))
    r_mm = (float(radii[0]), float(radii[1]), float(radii[2]))
    return LesionModel(kind, c_mm, r_mm, hu, edge, fuzz=fuzz, fuzz_amp=fuzz_amp, difficulty=d)


def _effusion(anat: Anatomy, rng: np.random.Generator, side: int, d: float) -> LesionModel:
    lg = anat.lungs[0] if anat.lungs[0].side == side else anat.lungs[1]
    height = 30.0 + 60.0 * d
    depth = 0.2 + 0.45 * d
    ztop = lg.z_dia + lg.dome + height * 0.6
    # bounding box of the fluid, in body-centred mm
    centre = (lg.cx, lg.cy + lg.b * (1.0 - depth), (lg.z_dia + ztop) / 2.0)
    radii = (lg.a, lg.b * depth + 2.0, (ztop - lg.z_dia) / 2.0 + 2.0)
    hu = float(rng.uniform(5.0, 18.0))
    return LesionModel(
        "effusion",
        centre,
        radii,
        hu,
        side=side,
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
        w = anat.lesion_weight(les, X, Y, Z)
        sel = (w >= 0.5) & anat.in_lung(pts.astype(np.float64))
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
