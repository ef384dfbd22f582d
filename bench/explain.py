"""Quality and cost of the saliency maps of :mod:`ml.explain` with the demo model, on held-out phantoms.

Usage::

    python bench/explain.py              # full run: ≈ 11 min on 2 cores (Intel Xeon VM); --n-ig 60: 20 min
    python bench/explain.py --quick      # smoke run: 2 studies, IG on 1 at 2 steps (< 1 min)
    python bench/explain.py --n 100 --n-ig 30 --ig-steps 32 --json var/bench/explain.json

Studies. ``--n`` positive phantoms drawn like the demo corpus (``ml.phantom`` with the
corpus settings of ``weights/resnet10-demo.train.yaml``: 128² pixels of 3 mm, 2.5 mm
slices, random lesion kinds, difficulty U(0.3, 1.0)), generated in memory
(:func:`ml.phantom.generate_phantom` → :class:`ml.geometry.CTVolume`, no DICOM) from the
seeds a corpus with ``--corpus-seed`` would use (``corpus_seed · 10007 + i``). The seeds of
the training/validation and test corpora (parsed from the training config, plus any
``labels.csv`` under ``var/demo-data``) are refused, so every study is held out.
Each study is preprocessed with the manifest's configuration of the model.

1. Pointing game. The peak of the model-space map (masked to the patient's body and
   first maximum in C order, as the product's ``stats.json`` reports it; ``out`` is the
   map's ``outside_body_fraction``) is mapped to LPS mm with
   :meth:`ml.preprocess.PreprocessGeometry.model_to_lps`; a *hit* is a peak within
   ``--tol-mm`` (5 mm) of the centre of a ground-truth lesion voxel of the phantom
   (the lesion mask on the phantom grid, 3 × 3 × 2.5 mm voxels; a point inside a
   lesion is always within 2.6 mm of a mask voxel centre). Hit fractions get a
   percentile bootstrap 95 % CI over studies (``--bootstrap`` resamples). Methods:
   Grad-CAM in four variants (target ``margin``/``pathology`` × layer ``layer4``/
   ``layer3``; the product default is margin/layer4) on all ``--n`` studies,
   Saliency and Integrated Gradients (``--ig-steps``, default 8, not the product's
   32: IG costs ≈ steps full backward passes, ≈ 0.6 s each here; black baseline as in
   the product, plus ``ig_body_mean`` with the body-mean baseline) on the first
   ``--n-ig`` studies, as in the product (IG smoothed, ``smooth_voxels`` 3; saliency
   raw), and ``saliency_smoothed`` (σ 3) / ``ig_unsmoothed`` (σ 0) for comparison.
   Peers in the same run (ratios method / peer):

   * ``random in lungs`` / ``random in body``: a point drawn uniformly from the
     phantom's lung mask / body; its exact hit probability per study is the fraction
     of lung / body voxels within the tolerance of a lesion voxel;
   * ``lung_centroid``: the centroid of both lungs (a fixed point, no image content);
     ``one_lung_centroid``: the centroid of the left or the right lung, drawn at
     random (expected hit = mean of the two).

   Graded localisation, reported alongside (the pointing game is all-or-nothing):
   ``body pk``, the pointing game with the peak taken over the body voxels of the input
   only (air masked out); ``mass``, the share of the map's positive mass over body
   voxels that lies within the tolerance of a lesion, and ``×unif``, that share divided
   by a uniform map's (= the lesion-near fraction of body voxels; 1 = no localisation);
   ``pct``, the percentile of the best lesion-near voxel among body voxels (1.0 = the
   lesion holds the peak). The hit rate at tolerances of 5–50 mm next to the same
   rate for random lung / body voxels (400 per study, exact distances). Breakdowns by
   lesion kind, difficulty and model decision, and where the missed peaks lie (lung,
   other body, outside the body).

   Lesion effect: the margin of the same phantom without its lesions (``label=0`` with
   the same seed: same anatomy, grid and noise) — how much the model's score depends
   on the lesions at all, i.e. whether a faithful map *should* point at them.

2. Randomisation sanity check (Adebayo et al., 2018): weights re-initialised with
   PyTorch's defaults (seeded; BatchNorm reset too). Grad-CAM: cascading randomisation
   from the top (``fc``, then ``layer4``, ``layer3``, ``layer2``, ``layer1``, the stem;
   ``--no-cascade``: all at once only) on the first ``--n-rand`` studies; Saliency (same
   studies) and IG (``--n-rand-ig`` studies): all weights at once. Spearman rank
   correlation between the map of the trained and of the randomised model over the body
   voxels of the model input (voxels above air); a map that becomes constant (e.g. all
   zero after Grad-CAM's ReLU) carries no ranking and counts as ρ = 0 (``const``).
   Goal: ρ < 0.3 (mean and median over studies) with all weights re-initialised.

3. Timing on the bench's CPU (named in its output), in one block after the rest so that every method runs
   under the same load: on the first ``--timing-studies`` studies, ``--timing-repeats``
   interleaved rounds of the forward pass (the peer), Grad-CAM (layer4 and layer3) and
   Saliency, then IG at ``--ig-steps`` once per study; ``ExplainOutput.seconds``;
   medians and ratios method / forward. IG at the product's 32 steps is timed on one
   study (``--ig-timing-steps``, 0 to skip), which also shows how far its peak lies
   from the ``--ig-steps`` peak. The CPU may be shared with other jobs: the load
   average at start and end is recorded.

Results: a table on stdout, goals PASS/MISS, and ``--json`` (default
``var/bench/explain.json``) with every per-study record.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from bench.common import heldout_seeds, phantom_spec, used_seeds  # noqa: E402
from ml.explain.methods import explain  # noqa: E402
from ml.geometry import CTVolume  # noqa: E402
from ml.inference import Predictor  # noqa: E402
from ml.phantom import Phantom, generate_phantom  # noqa: E402
from ml.preprocess import PreprocessResult, preprocess  # noqa: E402

MANIFEST = ROOT / "weights" / "manifest.json"
#: air after the seed pipeline's scaling ([-1000, 600] HU → [-1, 1]); body = voxels above it
AIR = -1.0
GOAL_POINTING = {"gradcam": 0.90, "integrated_gradients": 0.80}
GOAL_SPEARMAN = 0.3
#: tolerances (mm) of the pointing-game sensitivity curve
TOLERANCES_MM = (5.0, 10.0, 20.0, 30.0, 50.0)
#: random lung / body points per study for the peers of that curve
RANDOM_POINTS = 400
#: cascading randomisation, top-down: (label, module attribute names)
CASCADE: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("fc", ("fc",)),
    ("layer4", ("layer4",)),
    ("layer3", ("layer3",)),
    ("layer2", ("layer2",)),
    ("layer1", ("layer1",)),
    ("stem", ("conv1", "bn1")),
)
GRADCAM_VARIANTS: tuple[tuple[str, dict[str, str]], ...] = (
    ("gradcam", {"target": "margin", "layer": "layer4"}),  # the product default
    ("gradcam_pathology_l4", {"target": "pathology", "layer": "layer4"}),
    ("gradcam_margin_l3", {"target": "margin", "layer": "layer3"}),
    ("gradcam_pathology_l3", {"target": "pathology", "layer": "layer3"}),
)

BoolArray = npt.NDArray[np.bool_]
F64 = npt.NDArray[np.float64]


# --------------------------------------------------------------------------- geometry helpers


def ball_offsets(spacing_zyx: Sequence[float], radius_mm: float) -> list[tuple[int, int, int]]:
    """Voxel offsets (dz, dy, dx) whose centre lies within ``radius_mm`` of the origin."""
    r = [math.floor(radius_mm / s) for s in spacing_zyx]
    out = []
    for dz in range(-r[0], r[0] + 1):
        for dy in range(-r[1], r[1] + 1):
            for dx in range(-r[2], r[2] + 1):
                d = math.sqrt(
                    (dz * spacing_zyx[0]) ** 2 + (dy * spacing_zyx[1]) ** 2 + (dx * spacing_zyx[2]) ** 2
                )
                if d <= radius_mm + 1e-9:
                    out.append((dz, dy, dx))
    return out


def dilate(mask: BoolArray, offsets: Sequence[tuple[int, int, int]]) -> BoolArray:
    """Binary dilation of ``mask`` by a set of voxel offsets (no wrap-around)."""
    out = np.zeros_like(mask)
    nz, ny, nx = mask.shape
    for dz, dy, dx in offsets:
        src = mask[
            max(0, -dz) : nz - max(0, dz),
            max(0, -dy) : ny - max(0, dy),
            max(0, -dx) : nx - max(0, dx),
        ]
        out[
            max(0, dz) : nz - max(0, -dz),
            max(0, dy) : ny - max(0, -dy),
            max(0, dx) : nx - max(0, -dx),
        ] |= src
    return out


def rankdata(a: npt.NDArray[Any]) -> F64:
    """Ranks 1..n with ties averaged (as scipy.stats.rankdata)."""
    _, inv, cnt = np.unique(a, return_inverse=True, return_counts=True)
    csum = np.cumsum(cnt).astype(np.float64)
    avg = csum - (cnt - 1) / 2.0
    out: F64 = avg[inv.reshape(-1)]
    return out


def spearman(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> float | None:
    """Spearman rank correlation of two equally long vectors; None if either is constant."""
    ra, rb = rankdata(a), rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    den = math.sqrt(float(ra @ ra) * float(rb @ rb))
    if den == 0.0:
        return None
    return float(ra @ rb) / den


# --------------------------------------------------------------------------- studies


@dataclass
class Study:
    seed: int
    phantom: Phantom
    result: PreprocessResult
    lesion_lps: F64  # (N, 3) LPS mm of every lesion voxel centre
    lesion_val: npt.NDArray[np.uint8]  # (N,) mask value of each
    near: BoolArray  # phantom voxels whose centre is within tol of a lesion voxel centre
    body: BoolArray  # phantom voxels of the body (tissue or lung, not the table)
    near_model: torch.Tensor  # flattened bool over model voxels: nearest phantom voxel is in ``near``
    body_model: torch.Tensor  # flattened bool over model voxels: input above air
    lung_centroids: dict[str, F64]
    probability: float = 0.0
    margin: float = 0.0
    margin_without_lesions: float | None = None
    forward_s: list[float] = field(default_factory=list)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    baselines: dict[str, float] = field(default_factory=dict)
    #: distances (mm) from random lung / body voxel centres to the nearest lesion voxel centre
    random_dist: dict[str, F64] = field(default_factory=dict)

    def kinds(self) -> list[str]:
        return sorted({les.kind for les in self.phantom.lesions})

    def describe(self) -> dict[str, Any]:
        ph = self.phantom
        vox_ml = float(np.prod(ph.geometry.spacing_mm)) / 1000.0
        return {
            "seed": self.seed,
            "kinds": self.kinds(),
            "lesions": [
                {
                    "kind": les.kind,
                    "difficulty": les.difficulty,
                    "volume_ml": round(int((ph.mask == les.mask_value).sum()) * vox_ml, 2),
                    "centre_lps_mm": list(les.centre_lps_mm),
                }
                for les in ph.lesions
            ],
            "probability": round(self.probability, 4),
            "margin": round(self.margin, 4),
            "margin_without_lesions": self.margin_without_lesions,
            "shape_zyx": list(ph.hu.shape),
            "crop_zyx": [list(self.result.geometry.crop.start_zyx), list(self.result.geometry.crop.stop_zyx)],
            "baselines": {k: round(v, 4) for k, v in self.baselines.items()},
            "methods": self.records,
        }


def model_to_phantom_mask(result: PreprocessResult, ph: Phantom, mask: BoolArray) -> torch.Tensor:
    """``mask`` (phantom grid) at the nearest phantom voxel of every model voxel centre, flattened.

    Both grids are axis-aligned with the identity direction, so the lookup is separable.
    """
    d, h, w = result.geometry.model_size_zyx
    n = max(d, h, w)
    diag = np.repeat(np.arange(n, dtype=np.float64)[:, None], 3, axis=1)  # model (i, i, i), z y x
    lps = result.geometry.model_to_lps(diag)  # x depends on model x only, etc.
    ijk = np.rint(ph.geometry.lps_to_index(lps)).astype(np.int64)  # (x, y, z) phantom indices
    nz, ny, nx = mask.shape
    kz, ky, kx = ijk[:d, 2], ijk[:h, 1], ijk[:w, 0]
    ok = (
        ((kz >= 0) & (kz < nz))[:, None, None]
        & ((ky >= 0) & (ky < ny))[None, :, None]
        & ((kx >= 0) & (kx < nx))[None, None, :]
    )
    out = mask[np.ix_(np.clip(kz, 0, nz - 1), np.clip(ky, 0, ny - 1), np.clip(kx, 0, nx - 1))] & ok
    return torch.from_numpy(np.ascontiguousarray(out).reshape(-1))


def build_study(seed: int, predictor: Predictor, tol_mm: float) -> Study:
    ph = generate_phantom(phantom_spec(seed))
    result = preprocess(CTVolume.from_hu(ph.hu, ph.geometry), predictor.preprocess_config)
    g = ph.geometry
    if g.direction != (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0):
        raise SystemExit("the corpus phantoms are axial: expected an identity direction")
    idx_zyx = np.argwhere(ph.mask > 0)
    lesion_lps = g.index_to_lps(idx_zyx[:, ::-1].astype(np.float64))
    spacing_zyx = (g.spacing_mm[2], g.spacing_mm[1], g.spacing_mm[0])
    near = dilate(ph.mask > 0, ball_offsets(spacing_zyx, tol_mm))
    # body: tissue or lung, anterior to the table (the table is a separate object behind the back)
    ny = ph.hu.shape[1]
    y_lps = g.index_to_lps(np.stack([np.zeros(ny), np.arange(ny), np.zeros(ny)], axis=1))[:, 1]
    in_front = (y_lps < ph.anatomy.centre[1] + ph.anatomy.body_ay + 1.0)[None, :, None]
    body = ((ph.hu > -500) | ph.lung_mask) & in_front
    lung_idx = np.argwhere(ph.lung_mask)[:, ::-1].astype(np.float64)
    lung_lps = g.index_to_lps(lung_idx)
    right = lung_lps[:, 0] < ph.anatomy.centre[0]  # LPS: patient right is -x
    centroids = {
        "both": lung_lps.mean(axis=0),
        "right": lung_lps[right].mean(axis=0),
        "left": lung_lps[~right].mean(axis=0),
    }
    st = Study(
        seed,
        ph,
        result,
        lesion_lps,
        ph.mask[tuple(idx_zyx.T)],
        near,
        body,
        model_to_phantom_mask(result, ph, near),
        (result.tensor[0, 0] > AIR + 1e-3).reshape(-1),
        centroids,
    )
    st.baselines = {
        "random_lung": float(near[ph.lung_mask].mean()),
        "random_body": float(near[body].mean()),
        "lung_centroid": float(point_record(st, centroids["both"], tol_mm)["hit"]),
        "one_lung_centroid": 0.5
        * sum(float(point_record(st, centroids[s], tol_mm)["hit"]) for s in ("right", "left")),
        # a uniform map: its mass near lesions is the fraction of body voxels of the input near them
        "uniform_mass_near_lesion": float(st.near_model[st.body_model].float().mean()),
    }
    rng = np.random.default_rng([seed, 99])
    for name, region in (("lung", ph.lung_mask), ("body", body)):
        idx = np.argwhere(region)
        pick = idx[rng.choice(len(idx), size=min(RANDOM_POINTS, len(idx)), replace=False)]
        st.random_dist[name] = nearest_lesion_mm(st, g.index_to_lps(pick[:, ::-1].astype(np.float64)))
    return st


def nearest_lesion_mm(st: Study, lps: F64, chunk: int = 128) -> F64:
    """Distance (mm) from each LPS point (N, 3) to the nearest lesion voxel centre."""
    out = np.empty(len(lps))
    for a in range(0, len(lps), chunk):
        d = np.linalg.norm(st.lesion_lps[None, :, :] - lps[a : a + chunk, None, :], axis=2)
        out[a : a + chunk] = d.min(axis=1)
    return out


def margin_without_lesions(seed: int, predictor: Predictor) -> float:
    """Logit margin of the same phantom without its lesions (the label-0 twin)."""
    ph = generate_phantom(phantom_spec(seed, label=0))
    result = preprocess(CTVolume.from_hu(ph.hu, ph.geometry), predictor.preprocess_config)
    return float(predictor.margins(predictor.logits(result.tensor).double())[0])


def point_record(st: Study, lps: F64, tol_mm: float) -> dict[str, Any]:
    """Where an LPS point lies relative to the ground truth of ``st``."""
    d = np.linalg.norm(st.lesion_lps - np.asarray(lps)[None, :], axis=1)
    j = int(np.argmin(d))
    dist = float(d[j])
    ph = st.phantom
    ijk = np.rint(ph.geometry.lps_to_index(lps)).astype(int)  # (x, y, z)
    nz, ny, nx = ph.hu.shape
    inb = 0 <= ijk[0] < nx and 0 <= ijk[1] < ny and 0 <= ijk[2] < nz
    zyx = (int(ijk[2]), int(ijk[1]), int(ijk[0]))
    where = "outside grid"
    if inb:
        where = "lung" if ph.lung_mask[zyx] else ("body" if st.body[zyx] else "outside body")
    nearest = ph.lesions[int(st.lesion_val[j]) - 1]
    return {
        "lps_mm": [round(float(v), 2) for v in lps],
        "dist_mm": round(dist, 2),
        "hit": dist <= tol_mm,
        "inside": bool(inb and ph.mask[zyx] > 0),
        "where": where,
        "nearest_kind": nearest.kind,
        "nearest_difficulty": nearest.difficulty,
    }


def argmax_zyx(a: torch.Tensor) -> tuple[int, int, int]:
    """First maximum in C order (what ``stats.json`` reports as the peak)."""
    flat = int(torch.argmax(a.reshape(-1)).item())
    _, h, w = a.shape
    z, rem = divmod(flat, h * w)
    y, x = divmod(rem, w)
    return (z, y, x)


def run_method(
    predictor: Predictor, st: Study, name: str, method: str, params: dict[str, Any], tol_mm: float
) -> torch.Tensor:
    """Explain ``st`` and score the map against its ground truth; the record lands in ``st.records``."""
    ex = explain(predictor, st.result.tensor, method, params)
    m = ex.map
    geo = st.result.geometry
    peak = argmax_zyx(m)
    vmax = float(m[peak])
    rec = point_record(st, geo.model_to_lps(np.asarray([peak], np.float64))[0], tol_mm)
    # the peak among the body voxels of the input only (air and background masked out)
    in_body = torch.where(st.body_model.reshape(m.shape), m, torch.full_like(m, -math.inf))
    bpeak = argmax_zyx(in_body)
    rec_b = point_record(st, geo.model_to_lps(np.asarray([bpeak], np.float64))[0], tol_mm)
    # graded localisation: share of the (positive) map mass near lesions, and the
    # percentile of the best lesion voxel among the body voxels
    flat = m.reshape(-1).clamp_min(0.0)[st.body_model]
    near = st.near_model[st.body_model]
    total = float(flat.sum())
    mass = float(flat[near].sum()) / total if total > 0 else 0.0
    best = float(flat[near].max()) if bool(near.any()) else -math.inf
    pct = float((flat < best).float().mean())
    rec.update(
        {
            "method": method,
            "params": ex.params,
            "peak_model_zyx": list(peak),
            "peak_value": vmax,
            "empty": vmax <= 0.0,
            "on_border": any(v in (0, s - 1) for v, s in zip(peak, m.shape, strict=True)),
            "body_peak": {k: rec_b[k] for k in ("lps_mm", "dist_mm", "hit", "where")},
            "mass_near_lesion": round(mass, 5),
            "outside_body_fraction": ex.outside_body_fraction,
            "lesion_percentile": round(pct, 5),
            "seconds": round(ex.seconds, 4),
        }
    )
    st.records[name] = rec
    return m


# --------------------------------------------------------------------------- statistics


def bootstrap_ci(x: Sequence[float], b: int, seed: int = 0) -> tuple[float, float]:
    a = np.asarray(x, dtype=np.float64)
    if a.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = a[rng.integers(0, a.size, size=(b, a.size))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return (float(lo), float(hi))


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact (Clopper–Pearson) two-sided CI of a binomial proportion k / n (bisection on the CDF)."""

    def tail_ge(p: float) -> float:  # P(X >= k)
        return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))

    def tail_le(p: float) -> float:  # P(X <= k)
        return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))

    def solve(f: Callable[[float], float], increasing: bool) -> float:
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            if (f(mid) < alpha / 2) == increasing:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    lower = 0.0 if k == 0 else solve(tail_ge, True)
    upper = 1.0 if k == n else solve(tail_le, False)
    return (lower, upper)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b vs c discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    p = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * p)


def summary(values: Sequence[float], b: int) -> dict[str, Any]:
    lo, hi = bootstrap_ci(values, b)
    n = len(values)
    return {"n": n, "mean": float(np.mean(values)) if n else math.nan, "ci95": [lo, hi]}


def fmt_ci(s: dict[str, Any]) -> str:
    return f"{s['mean']:.3f} [{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}]"


def ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def fmt_ratio(r: float | None) -> str:
    return "   inf" if r is None else f"{r:6.1f}"


# --------------------------------------------------------------------------- randomisation


def randomised(predictor: Predictor, depth: int, seed: int) -> Predictor:
    """A Predictor whose top ``depth`` cascade stages have default-initialised weights (BN reset too)."""
    model = copy.deepcopy(predictor.model)
    torch.manual_seed(seed)
    for _, names in CASCADE[:depth]:
        for name in names:
            for mod in getattr(model, name).modules():
                reset = getattr(mod, "reset_parameters", None)
                if callable(reset) and isinstance(mod, nn.Module):
                    reset()
    return Predictor(predictor.entry, model, device=predictor.device)


def rand_corr(m0: torch.Tensor, m1: torch.Tensor, body: torch.Tensor) -> float | None:
    return spearman(m0.reshape(-1)[body].numpy(), m1.reshape(-1)[body].numpy())


# --------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def pointing_table(
    studies: list[Study], names: list[str], args: argparse.Namespace, base: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    tol = args.tol_mm
    print(
        f"\npointing game: hit = saliency peak within {tol:g} mm of a lesion voxel; "
        f"bootstrap 95% CI ({args.bootstrap} resamples)\n"
        "  inside: peak in a lesion voxel; body pk: hit of the peak taken over body voxels only; "
        "mass: share of the map's mass\n  within the tolerance of a lesion (body voxels), ×unif: that share "
        "÷ a uniform map's; pct: median percentile of\n  the best lesion voxel among body voxels; "
        "×rnd lung/body: hit ÷ a uniform random point's in the lungs/body; out: median share of the\n"
        "  map's positive mass outside the body mask before the product masked it (stats.json)"
    )
    header = (
        f"{'method':<22} {'n':>3} {'hit (95% CI)':>22} {'inside':>6} {'body pk':>7} {'mass':>6} {'×unif':>5} "
        f"{'pct':>5} {'×rnd lung':>9} {'×rnd body':>9} {'med mm':>6} {'out':>5} {'s/study':>7}"
    )
    print(header)
    print("-" * len(header))
    out: dict[str, Any] = {}
    for name in names:
        recs = [(st, st.records[name]) for st in studies if name in st.records]
        if not recs:
            continue
        s = summary([float(r["hit"]) for _, r in recs], args.bootstrap)
        s["exact_ci95"] = list(clopper_pearson(sum(bool(r["hit"]) for _, r in recs), len(recs)))
        inside = float(np.mean([r["inside"] for _, r in recs]))
        body_pk = summary([float(r["body_peak"]["hit"]) for _, r in recs], args.bootstrap)
        mass = summary([r["mass_near_lesion"] for _, r in recs], args.bootstrap)
        pct = statistics.median(r["lesion_percentile"] for _, r in recs)
        # peers on the same studies
        peers = {k: float(np.mean([st.baselines[k] for st, _ in recs])) for k in base}
        ratios = {k: ratio(s["mean"], v) for k, v in peers.items() if k != "uniform_mass_near_lesion"}
        enrich = ratio(mass["mean"], peers["uniform_mass_near_lesion"])
        med_dist = statistics.median(r["dist_mm"] for _, r in recs)
        secs = statistics.median(r["seconds"] for _, r in recs)
        outs = [r["outside_body_fraction"] for _, r in recs if r["outside_body_fraction"] is not None]
        out_body = statistics.median(outs) if outs else math.nan
        print(
            f"{name:<22} {s['n']:>3} {fmt_ci(s):>22} {inside:>6.2f} {body_pk['mean']:>7.2f} "
            f"{mass['mean']:>6.3f} {enrich or 0.0:>5.2f} {pct:>5.2f} "
            f"{fmt_ratio(ratios['random_lung']):>9} {fmt_ratio(ratios['random_body']):>9} "
            f"{med_dist:>6.0f} {out_body:>5.2f} {secs:>7.2f}"
        )
        out[name] = {
            "hit": s,
            "inside_fraction": inside,
            "body_peak_hit": body_pk,
            "mass_near_lesion": mass,
            "mass_enrichment_vs_uniform": enrich,
            "median_lesion_percentile": pct,
            "empty_maps": sum(bool(r["empty"]) for _, r in recs),
            "peak_on_border": sum(bool(r["on_border"]) for _, r in recs),
            "median_dist_mm": med_dist,
            "median_outside_body_fraction": out_body if outs else None,
            "median_seconds": secs,
            "params": recs[0][1]["params"],
            "peers_same_studies": peers,
            "ratio_to": ratios,
        }
    for k, v in base.items():
        print(f"{'peer: ' + k:<28} {v['n']:>3} {fmt_ci(v):>22}")
    return out


def tolerance_table(studies: list[Study], names: list[str], b: int) -> dict[str, Any]:
    """Pointing-game hit rate as a function of the tolerance, with the random-point peers."""
    print("\npointing game vs tolerance (hit rate; peers: a random lung / body voxel, 400 per study)")
    header = f"{'method':<28} {'n':>3}" + "".join(f" {f'≤{t:g} mm':>8}" for t in TOLERANCES_MM)
    print(header)
    print("-" * len(header))
    out: dict[str, Any] = {}
    rows: list[tuple[str, list[list[float]]]] = []
    for name in names:
        recs = [st.records[name] for st in studies if name in st.records]
        rows.append((name, [[float(r["dist_mm"] <= t) for r in recs] for t in TOLERANCES_MM]))
    for peer in ("lung", "body"):
        vals = [[float(np.mean(st.random_dist[peer] <= t)) for st in studies] for t in TOLERANCES_MM]
        rows.append((f"peer: random_{peer}", vals))
    for name, per_t in rows:
        out[name] = {f"{t:g}": summary(v, b) for t, v in zip(TOLERANCES_MM, per_t, strict=True)}
        n = len(per_t[0])
        print(f"{name:<28} {n:>3}" + "".join(f" {float(np.mean(v)):>8.2f}" for v in per_t))
    return out


def breakdown(studies: list[Study], names: list[str], prob_threshold: float) -> dict[str, Any]:
    """Hit rate per lesion kind present, per difficulty, per model decision; where the misses point."""
    out: dict[str, Any] = {}
    print("\nbreakdown of hits (fraction hit / studies) by what the study contains")
    groups: dict[str, Callable[[Study], bool]] = {}

    def has(kind: str) -> Callable[[Study], bool]:
        return lambda st: kind in st.kinds()

    def only(kind: str) -> Callable[[Study], bool]:
        return lambda st: st.kinds() == [kind]

    for kind in ("nodule", "ggo", "consolidation", "effusion"):
        groups[f"has {kind}"] = has(kind)
        groups[f"only {kind}"] = only(kind)
    groups["max difficulty < 0.65"] = lambda st: max(les.difficulty for les in st.phantom.lesions) < 0.65
    groups["max difficulty ≥ 0.65"] = lambda st: max(les.difficulty for les in st.phantom.lesions) >= 0.65
    groups[f"p ≥ {prob_threshold:.2f} (flagged)"] = lambda st: st.probability >= prob_threshold
    groups[f"p < {prob_threshold:.2f} (missed)"] = lambda st: st.probability < prob_threshold
    header = f"{'group':<24}" + "".join(f" {n[:20]:>20}" for n in names)
    print(header)
    print("-" * len(header))
    for g, pred in groups.items():
        row = f"{g:<24}"
        out[g] = {}
        for name in names:
            recs = [st.records[name] for st in studies if name in st.records and pred(st)]
            h = sum(bool(r["hit"]) for r in recs)
            out[g][name] = {"hit": h, "n": len(recs)}
            row += f" {(f'{h / len(recs):.2f} ({h}/{len(recs)})' if recs else '-'):>20}"
        print(row)
    print("\nwhere the peaks of the misses lie (count) and which lesion kind the hits found")
    for name in names:
        recs = [st.records[name] for st in studies if name in st.records]
        miss_where: dict[str, int] = {}
        hit_kind: dict[str, int] = {}
        for r in recs:
            if r["hit"]:
                hit_kind[r["nearest_kind"]] = hit_kind.get(r["nearest_kind"], 0) + 1
            else:
                miss_where[r["where"]] = miss_where.get(r["where"], 0) + 1
        border = sum(bool(r["on_border"]) and not r["hit"] for r in recs)
        print(f"  {name:<22} misses: {miss_where}  (on the crop border: {border});  hits: {hit_kind}")
        out.setdefault("_where", {})[name] = {
            "misses_where": miss_where,
            "misses_on_border": border,
            "hits": hit_kind,
        }
    return out


def paired(studies: list[Study], ref: str, names: list[str], b: int) -> dict[str, Any]:
    """Each method against ``ref`` on the same studies: hits (exact McNemar) and map mass near lesions."""
    out: dict[str, Any] = {}
    print(
        f"\npaired comparison with {ref} (same studies): 5 mm hits (exact McNemar) and the difference in "
        "mass near lesions (bootstrap 95% CI)"
    )
    for name in names:
        if name == ref:
            continue
        both = [st for st in studies if ref in st.records and name in st.records]
        if not both:
            continue
        nb = sum(bool(st.records[name]["hit"]) and not st.records[ref]["hit"] for st in both)
        nc = sum(bool(st.records[ref]["hit"]) and not st.records[name]["hit"] for st in both)
        p = mcnemar_exact(nb, nc)
        dm = summary(
            [st.records[name]["mass_near_lesion"] - st.records[ref]["mass_near_lesion"] for st in both], b
        )
        out[name] = {
            "n": len(both),
            "only_this_hits": nb,
            "only_ref_hits": nc,
            "mcnemar_p": p,
            "mass_near_lesion_difference": dm,
        }
        print(
            f"  {name:<22} n={len(both):>3}  hits only here {nb:>3}, only in {ref} {nc:>3}, p = {p:.3g}; "
            f"mass − {ref}: {dm['mean']:+.4f} [{dm['ci95'][0]:+.4f}, {dm['ci95'][1]:+.4f}]"
        )
    return out


# --------------------------------------------------------------------------- main


def lesion_effect_table(studies: list[Study], predictor: Predictor, b: int) -> dict[str, Any]:
    """How much the model's score depends on the lesions: margin with vs without them (same phantom)."""
    print(
        "\nlesion effect: logit margin of each study minus that of the same phantom without its lesions "
        "(label-0 twin)"
    )
    header = (
        f"{'studies':<22} {'n':>3} {'margin':>7} {'no lesion':>9} {'drop (95% CI)':>22} "
        f"{'p':>5} {'p no les':>8}"
    )
    print(header)
    print("-" * len(header))
    out: dict[str, Any] = {}
    groups: dict[str, list[Study]] = {"all": studies}
    for kind in ("nodule", "ggo", "consolidation", "effusion"):
        groups[f"only {kind}"] = [st for st in studies if st.kinds() == [kind]]
    for g, group in groups.items():
        sts = [st for st in group if st.margin_without_lesions is not None]
        if not sts:
            continue
        m0 = [st.margin for st in sts]
        m1 = [float(st.margin_without_lesions or 0.0) for st in sts]
        drop = summary([a - c for a, c in zip(m0, m1, strict=True)], b)
        p0 = float(np.mean([predictor.calibrate(v) for v in m0]))
        p1 = float(np.mean([predictor.calibrate(v) for v in m1]))
        out[g] = {
            "n": len(sts),
            "mean_margin": float(np.mean(m0)),
            "mean_margin_without_lesions": float(np.mean(m1)),
            "margin_drop": drop,
            "mean_probability": p0,
            "mean_probability_without_lesions": p1,
        }
        print(
            f"{g:<22} {len(sts):>3} {np.mean(m0):>7.2f} {np.mean(m1):>9.2f} {fmt_ci(drop):>22} "
            f"{p0:>5.2f} {p1:>8.2f}"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=60, help="positive studies for Grad-CAM (default 60)")
    ap.add_argument("--n-ig", type=int, default=20, help="studies (the first ones) for IG and Saliency")
    ap.add_argument("--ig-steps", type=int, default=8, help="IG steps in the pointing game (default 8)")
    ap.add_argument("--ig-batch", type=int, default=4, help="IG internal batch size (default 4)")
    ap.add_argument("--ig-timing-steps", type=int, default=32, help="IG steps timed on one study (0: skip)")
    ap.add_argument("--n-rand", type=int, default=10, help="studies for the Grad-CAM/Saliency randomisation")
    ap.add_argument("--n-rand-ig", type=int, default=5, help="studies for the IG randomisation check")
    ap.add_argument("--no-cascade", action="store_true", help="randomise all weights at once only")
    ap.add_argument("--timing-studies", type=int, default=3, help="studies of the timing block (default 3)")
    ap.add_argument("--timing-repeats", type=int, default=3, help="repeats of the cheap methods per study")
    ap.add_argument("--corpus-seed", type=int, default=777, help="held-out corpus seed (default 777)")
    ap.add_argument("--tol-mm", type=float, default=5.0)
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: 2 studies, IG on 1 at 2 steps, no cascade"
    )
    ap.add_argument("--json", type=Path, default=ROOT / "var" / "bench" / "explain.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.n_ig, args.ig_steps, args.n_rand, args.n_rand_ig = 2, 1, 2, 1, 1
        args.ig_timing_steps, args.bootstrap, args.no_cascade = 0, 200, True
        args.timing_studies, args.timing_repeats = 1, 1
    args.n_ig = min(args.n_ig, args.n)
    args.n_rand = min(args.n_rand, args.n)
    args.n_rand_ig = min(args.n_rand_ig, args.n_ig)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    load0 = os.getloadavg()

    predictor = Predictor.from_manifest(MANIFEST, device="cpu")
    entry = predictor.entry
    thr = float(entry.operating_points[entry.default_operating_point].threshold)
    seeds = heldout_seeds(args.corpus_seed, args.n, used_seeds())
    mach = machine()
    print(
        f"model {entry.name} {entry.version}, input {predictor.input_size}, CPU: {mach['cpu']} "
        f"({mach['cpus']} cpus, torch threads {mach['torch_threads']}), load average {load0[0]:.2f}"
    )
    print(
        f"held-out positive phantoms: n={args.n} (seeds {seeds[0]}…{seeds[-1]}, "
        f"corpus seed {args.corpus_seed}); "
        f"Grad-CAM on all, Saliency + IG ({args.ig_steps} steps) on the first {args.n_ig}"
    )

    ig_params = {"steps": args.ig_steps, "internal_batch_size": args.ig_batch}
    methods: list[tuple[str, str, dict[str, Any], int]] = [
        *((name, "gradcam", p, args.n) for name, p in GRADCAM_VARIANTS),
        ("saliency", "saliency", {}, args.n_ig),
        ("integrated_gradients", "integrated_gradients", ig_params, args.n_ig),
        ("ig_body_mean", "integrated_gradients", {**ig_params, "baseline": "body_mean"}, args.n_ig),
        ("saliency_smoothed", "saliency", {"smooth_voxels": 3.0}, args.n_ig),
        ("ig_unsmoothed", "integrated_gradients", {**ig_params, "smooth_voxels": 0.0}, args.n_ig),
    ]
    studies: list[Study] = []
    maps: dict[tuple[int, str], torch.Tensor] = {}
    t_gen = t_pp = 0.0
    for i, seed in enumerate(seeds):
        t0 = time.perf_counter()
        st = build_study(seed, predictor, args.tol_mm)
        st.margin_without_lesions = round(margin_without_lesions(seed, predictor), 4)
        t_gen += time.perf_counter() - t0
        if i == 0:  # warm-up (untimed): forward, each method once (IG at one step)
            predictor.logits(st.result.tensor)
            for _, method, p, _ in methods:
                explain(predictor, st.result.tensor, method, {**p, "steps": 1} if "steps" in p else p)
        for _ in range(2):
            t0 = time.perf_counter()
            logits = predictor.logits(st.result.tensor)
            st.forward_s.append(time.perf_counter() - t0)
        st.margin = float(predictor.margins(logits.double())[0])
        st.probability = predictor.calibrate(st.margin)
        t0 = time.perf_counter()
        for name, method, p, n_max in methods:
            if i < n_max:
                m = run_method(predictor, st, name, method, p, args.tol_mm)
                if name in ("gradcam", "saliency", "integrated_gradients") and i < args.n_rand:
                    maps[(i, name)] = m
        t_pp += time.perf_counter() - t0
        studies.append(st)
        r = st.records["gradcam"]
        ig = st.records.get("integrated_gradients")
        print(
            f"  [{i + 1:>3}/{args.n}] seed {seed} {'+'.join(st.kinds()):<28} p={st.probability:.2f} "
            f"gradcam {'HIT ' if r['hit'] else 'miss'} {r['dist_mm']:5.0f} mm ({r['where']})"
            + (
                f", IG {'HIT ' if ig['hit'] else 'miss'} {ig['dist_mm']:5.0f} mm ({ig['where']})"
                if ig
                else ""
            ),
            flush=True,
        )

    base = {k: summary([st.baselines[k] for st in studies], args.bootstrap) for k in studies[0].baselines}
    names = [m[0] for m in methods]
    pointing = pointing_table(studies, names, args, base)
    gc_names = [n for n, _ in GRADCAM_VARIANTS]
    others = [
        *gc_names,
        "saliency",
        "integrated_gradients",
        "ig_body_mean",
        "saliency_smoothed",
        "ig_unsmoothed",
    ]
    pair = paired(studies, "gradcam", others, args.bootstrap)
    pair_l3 = paired(studies, "gradcam_margin_l3", ["gradcam_pathology_l3"], args.bootstrap)
    pair_ig = paired(studies, "integrated_gradients", ["ig_body_mean", "ig_unsmoothed"], args.bootstrap)
    tol_curve = tolerance_table(studies, names, args.bootstrap)
    brk = breakdown(studies, names, thr)
    effect = lesion_effect_table(studies, predictor, args.bootstrap)

    # ---- randomisation
    depths = [len(CASCADE)] if args.no_cascade else list(range(1, len(CASCADE) + 1))
    how = "cascade top-down" if len(depths) > 1 else "all weights"
    print(
        "\nrandomisation check (Adebayo et al. 2018): Spearman ρ between the trained and the randomised "
        f"model's map over body voxels;\n  Grad-CAM {how} "
        f"on {args.n_rand} studies, Saliency all weights on {args.n_rand}, IG all weights on {args.n_rand_ig}"
    )
    t0 = time.perf_counter()
    rand: dict[str, dict[str, list[float | None]]] = {
        "gradcam": {},
        "saliency": {},
        "integrated_gradients": {},
    }
    for depth in depths:
        label = "+".join(c[0] for c in CASCADE[:depth])
        full_depth = depth == len(CASCADE)
        rp = randomised(predictor, depth, seed=1000 + depth)
        for i in range(args.n_rand):
            st = studies[i]
            jobs: list[tuple[str, dict[str, Any]]] = [("gradcam", dict(GRADCAM_VARIANTS[0][1]))]
            if full_depth:
                jobs.append(("saliency", {}))
                if i < args.n_rand_ig:
                    jobs.append(("integrated_gradients", ig_params))
            for method, p in jobs:
                m1 = explain(rp, st.result.tensor, method, p).map
                rand[method].setdefault(label, []).append(rand_corr(maps[(i, method)], m1, st.body_model))
        del rp
    t_rand = time.perf_counter() - t0
    rand_out: dict[str, Any] = {}
    header = (
        f"{'randomised':<36} {'method':<22} {'n':>3} {'mean ρ':>7} {'median ρ':>8} {'max ρ':>6} {'const':>5}"
    )
    print(header)
    print("-" * len(header))
    for name, by in rand.items():
        for label, vals in by.items():
            rho = [0.0 if v is None else v for v in vals]
            rec = {
                "n": len(rho),
                "mean": float(np.mean(rho)),
                "median": float(np.median(rho)),
                "max": float(np.max(rho)),
                "constant_maps": sum(v is None for v in vals),
                "values": [None if v is None else round(v, 4) for v in vals],
            }
            rand_out.setdefault(name, {})[label] = rec
            print(
                f"{label:<36} {name:<22} {rec['n']:>3} {rec['mean']:>7.3f} {rec['median']:>8.3f} "
                f"{rec['max']:>6.3f} {rec['constant_maps']:>5}"
            )

    # ---- timing: a dedicated, interleaved block (every method under the same load)
    t0 = time.perf_counter()
    timed: dict[str, list[float]] = {k: [] for k in ("forward", "gradcam", "gradcam_layer3", "saliency")}
    timed["integrated_gradients"] = []
    ig_big: list[float] = []
    k_studies = studies[: max(1, min(args.timing_studies, len(studies)))]
    for st in k_studies:
        x = st.result.tensor
        for _ in range(args.timing_repeats):
            t1 = time.perf_counter()
            predictor.logits(x)
            timed["forward"].append(time.perf_counter() - t1)
            timed["gradcam"].append(explain(predictor, x, "gradcam").seconds)
            timed["gradcam_layer3"].append(explain(predictor, x, "gradcam", {"layer": "layer3"}).seconds)
            timed["saliency"].append(explain(predictor, x, "saliency").seconds)
        timed["integrated_gradients"].append(explain(predictor, x, "integrated_gradients", ig_params).seconds)
    if args.ig_timing_steps:
        st = studies[0]
        ex = explain(
            predictor,
            st.result.tensor,
            "integrated_gradients",
            {"steps": args.ig_timing_steps, "internal_batch_size": args.ig_batch},
        )
        ig_big.append(ex.seconds)
        lps = st.result.geometry.model_to_lps(np.asarray([argmax_zyx(ex.map)], np.float64))[0]
        shift = float(np.linalg.norm(lps - np.asarray(st.records["integrated_gradients"]["lps_mm"])))
        big_rec = {"hit": point_record(st, lps, args.tol_mm)["hit"], "peak_shift_mm": shift}
    t_time = time.perf_counter() - t0
    fwd_med = statistics.median(timed["forward"])
    timing: dict[str, Any] = {
        "studies": len(k_studies),
        "note": f"forward/gradcam/saliency: {args.timing_repeats} interleaved repeats per study; IG: once",
    }
    for name, secs in timed.items():
        med = statistics.median(secs)
        timing[name] = {"n": len(secs), "median_s": med, "ratio_to_forward": med / fwd_med, "all_s": secs}
    timing["integrated_gradients"]["steps"] = args.ig_steps
    timing["integrated_gradients"]["s_per_step"] = timing["integrated_gradients"]["median_s"] / args.ig_steps
    if ig_big:
        timing[f"integrated_gradients_{args.ig_timing_steps}"] = {
            "n": 1,
            "median_s": ig_big[0],
            "ratio_to_forward": ig_big[0] / fwd_med,
            "steps": args.ig_timing_steps,
            **big_rec,
        }
    timing["during_pointing_game"] = {
        name: statistics.median(st.records[name]["seconds"] for st in studies if name in st.records)
        for name in names
    }
    print(
        f"\ntiming per study on the CPU ({mach['cpu']}, torch threads {mach['torch_threads']}; medians over "
        f"{len(k_studies)} studies, interleaved)"
    )
    header = f"{'':<32} {'n':>3} {'s/study':>8} {'÷ forward':>9}"
    print(header)
    print("-" * len(header))
    for name, t in timing.items():
        if not isinstance(t, dict) or "median_s" not in t:
            continue
        label = "forward (peer)" if name == "forward" else name
        if name.startswith("integrated_gradients"):
            label = f"integrated_gradients ({t['steps']} steps)"
        print(f"{label:<32} {t['n']:>3} {t['median_s']:>8.3f} {t['ratio_to_forward']:>9.1f}")
    if ig_big:
        print(
            f"  ({args.ig_timing_steps}-step IG peak {big_rec['peak_shift_mm']:.1f} mm from the "
            f"{args.ig_steps}-step peak on study {studies[0].seed})"
        )

    # ---- goals
    goals: list[tuple[str, bool, str]] = []
    for name, goal in GOAL_POINTING.items():
        if name in pointing:
            s = pointing[name]["hit"]
            cp = s["exact_ci95"]
            measured = f"{fmt_ci(s)} (exact 95% CI {cp[0]:.2f}–{cp[1]:.2f}, n={s['n']})"
            goals.append((f"pointing game {name} ≥ {goal:.2f}", s["mean"] >= goal, measured))
    full = "+".join(c[0] for c in CASCADE)
    for name in ("gradcam", "integrated_gradients"):
        r = rand_out.get(name, {}).get(full)
        if r:
            ok = r["mean"] < GOAL_SPEARMAN and r["median"] < GOAL_SPEARMAN
            measured = f"mean {r['mean']:.3f}, median {r['median']:.3f} (n={r['n']})"
            goals.append((f"randomisation {name} Spearman < {GOAL_SPEARMAN}", ok, measured))
    print("\ngoals")
    for g, ok, meas in goals:
        print(f"  {'PASS' if ok else 'MISS'}  {g:<54} {meas}")

    load1 = os.getloadavg()
    total = time.perf_counter() - t_start
    print(
        f"\ntotal {total:.0f} s (phantoms+preprocess {t_gen:.0f} s, maps {t_pp:.0f} s, "
        f"randomisation {t_rand:.0f} s, timing {t_time:.0f} s); load average {load0[0]:.2f} → {load1[0]:.2f} "
        "(shared CPU: timings are noisy)"
    )
    report = {
        "command": " ".join(["python", "bench/explain.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": {**mach, "loadavg_start": list(load0), "loadavg_end": list(load1)},
        "model": {"name": entry.name, "version": entry.version, "input_size": list(predictor.input_size)},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "seeds": seeds,
        "tol_mm": args.tol_mm,
        "pointing": pointing,
        "peers": base,
        "paired_vs_gradcam": pair,
        "paired_vs_gradcam_margin_l3": pair_l3,
        "paired_vs_integrated_gradients": pair_ig,
        "pointing_vs_tolerance": tol_curve,
        "breakdown": brk,
        "lesion_effect": effect,
        "randomisation": rand_out,
        "timing": timing,
        "goals": [{"goal": g, "pass": ok, "measured": meas} for g, ok, meas in goals],
        "seconds": {
            "total": total,
            "phantoms": t_gen,
            "maps": t_pp,
            "randomisation": t_rand,
            "timing": t_time,
        },
        "studies": [st.describe() for st in studies],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, default=float))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
