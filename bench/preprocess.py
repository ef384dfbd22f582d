"""Benchmark of the seed preprocessing, DICOM ZIP → model tensor: ours vs a MONAI chain vs the reference.

Usage::

    python bench/preprocess.py                          # 300×512² phantom ZIP (0.7 mm × 1 mm) → [1,1,256³]
    python bench/preprocess.py --variant jpeg_lossless  # same phantom, JPEG Lossless pixel data
    python bench/preprocess.py --zip ../shared/data/real-ct/cap002.zip
    python bench/preprocess.py --json var/bench/preprocess.json
    python bench/preprocess.py --synthetic              # old mode: in-memory volume, input loading untimed

Default (end-to-end) mode. The phantom ZIP is written once by :func:`ml.phantom.make_study`
(seeded) and cached under ``var/bench/`` by its parameters. Each pipeline then runs in its
own fresh Python subprocess (this script with ``--worker``): imports, one untimed warm-up
run, then ``--repeat`` timed runs; per-stage and total times are medians of the timed runs.

* ``ours``: :func:`ml.io.read_study`: safe extract + header scan → QC and ranking → decode →
  (temp dir removed) → :func:`ml.preprocess.preprocess`.
* ``monai``: ``zipfile.extractall`` into a temp dir → ``LoadImage(image_only=True,
  reader="PydicomReader")`` on the directory holding the most files (ITK is not installed
  here; ``--reader ITKReader`` where it is) → temp dir removed → ``EnsureChannelFirst`` →
  ``Orientation("RAS")`` → ``Spacing((1,1,1), bilinear)`` → ``CropForeground(x > -1000,
  margin 5, allow_smaller=True)`` → ``ScaleIntensityRange(-1000, 600, -1, 1, clip)`` →
  ``Resize(trilinear)``; the output is mapped back to the (z, y, x) LPS index order of the
  reference (x/y flips undone, axes permuted) before comparing (``--no-orientation`` leaves
  Orientation out instead).
* ``reference``: our loader (same stages as ours) → ``tests/reference_preprocess.py``.

Peak memory is the peak RSS of the worker process over the timed runs (VmHWM, reset after the
warm-up, whose probe holds a full-volume HU copy for the comparison; where the kernel cannot
reset it, over the warm-up too) minus its RSS after imports, i.e. the extra resident memory the
pipeline needed on top of an idle interpreter; no sampler thread runs during the timed runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from ml.geometry import CTVolume, VolumeGeometry  # noqa: E402
from ml.io import StudyRead, read_study  # noqa: E402
from ml.preprocess import PreprocessConfig, preprocess  # noqa: E402

#: goals, ZIP → tensor end to end: speed against each peer, exactness, extra memory (0.6 GB)
GOAL_MONAI_RATIO = 10.0
GOAL_REFERENCE_RATIO = 3.0
GOAL_R = 0.99999
GOAL_PEAK_MIB = 0.6e9 / 2**20
PIPELINES = ("ours", "reference", "monai")


def _load_reference() -> Any:
    spec = importlib.util.spec_from_file_location(
        "reference_preprocess", ROOT / "tests" / "reference_preprocess.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss_bytes() -> int:
    """Peak RSS since the start, or since :func:`_reset_peak` (VmHWM where Linux has it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _reset_peak() -> bool:
    """Start the peak RSS afresh (Linux ``clear_refs`` 5); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def compare(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    x, y = a.double().ravel().numpy(), b.double().ravel().numpy()
    if x.shape != y.shape:
        return float("nan"), float("nan")
    return float(np.corrcoef(x, y)[0, 1]), float(np.abs(x - y).max())


# --------------------------------------------------------------------------- input ZIP


def phantom_zip(args: argparse.Namespace) -> Path:
    """The phantom study ZIP for these parameters, generated once and cached (or in a temp dir)."""
    from ml.phantom import make_study

    name = (
        f"phantom_{args.variant}_seed{args.seed}_{args.slices}x{args.size}x{args.size}"
        f"_{args.pixel_mm:g}x{args.slice_mm:g}mm.zip"
    )
    cache = Path(args.cache_dir) if args.cache_dir else Path(tempfile.mkdtemp(prefix="s4ct-bench-"))
    path = cache / name
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    tmp = cache / f".{name}.{os.getpid()}.tmp"
    make_study(
        tmp,
        seed=args.seed,
        variant=args.variant,
        rows=args.size,
        cols=args.size,
        pixel_spacing_mm=args.pixel_mm,
        slice_spacing_mm=args.slice_mm,
        n_slices=args.slices,
    )
    os.replace(tmp, path)
    print(f"wrote {path} in {time.perf_counter() - t:.1f} s", flush=True)
    return path


# --------------------------------------------------------------------------- end-to-end pipelines


def _hu_probe(hu_xyz_shape: tuple[int, ...], hu: Any) -> dict[str, Any]:
    a = np.asarray(hu, dtype=np.float64)
    return {
        "shape_xyz": list(hu_xyz_shape),
        "sum": float(a.sum()),
        "min": float(a.min()),
        "max": float(a.max()),
    }


#: bench names of the stages of ml.io.read_study
_STAGE_NAMES = {
    "reading": "extract+scan",
    "qc": "qc",
    "decoding": "decode",
    "cleanup": "cleanup",
    "preprocessing": "preprocess",
}


def _read_ours(
    zip_path: Path, cfg: PreprocessConfig | None = None, keep_volume: bool = True
) -> tuple[StudyRead, dict[str, float]]:
    """:func:`ml.io.read_study` of ``zip_path`` (preprocessed with ``cfg`` if given) and its stage times."""
    read = read_study(zip_path, preprocess=cfg, keep_volume=keep_volume)
    return read, {_STAGE_NAMES[k]: v for k, v in read.timings.items()}


def run_ours(zip_path: Path, cfg: PreprocessConfig, probe: dict[str, Any] | None) -> tuple[Any, dict]:
    read, st = _read_ours(zip_path, cfg, keep_volume=probe is not None)
    res = read.preprocessed
    for k, v in res.timings_s.items():
        if k != "total":
            st[f"  {k}"] = v
    if probe is not None:
        vol = read.volume
        probe["hu"] = _hu_probe(vol.geometry.size, vol.hu())
        probe["crop_box_zyx"] = [list(res.crop_box.start_zyx), list(res.crop_box.stop_zyx)]
        probe["exact_fallback"] = bool(res.exact_fallback)
    return res.tensor, st


def run_reference(
    zip_path: Path, cfg: PreprocessConfig, probe: dict[str, Any] | None, ref: Any
) -> tuple[Any, dict]:
    read, st = _read_ours(zip_path)
    t = time.perf_counter()
    out, box = ref.reference_from_config(read.volume, cfg)
    st["reference_preprocess"] = time.perf_counter() - t
    if probe is not None:
        probe["crop_box_zyx"] = [list(box[0]), list(box[1])]
    return out, st


def _dicom_dir(root: Path) -> Path:
    """The extracted directory holding the most files (where a user points LoadImage)."""
    best, n = root, -1
    for d, _, files in os.walk(root):
        if len(files) > n:
            best, n = Path(d), len(files)
    return best


class MonaiChain:
    """The seed pipeline as a MONAI user writes it (transforms built once, called one by one for timing)."""

    def __init__(self, cfg: PreprocessConfig, reader: str, orientation: bool) -> None:
        from monai.transforms import (
            CropForeground,
            EnsureChannelFirst,
            LoadImage,
            Orientation,
            Resize,
            ScaleIntensityRange,
            Spacing,
        )

        lo, hi = cfg.hu_window
        thr = cfg.body_threshold_hu
        self.load = LoadImage(image_only=True, reader=reader)
        self.orientation = orientation
        steps: list[tuple[str, Callable[[Any], Any]]] = [("EnsureChannelFirst", EnsureChannelFirst())]
        if orientation:
            steps.append(("Orientation", Orientation(axcodes="RAS")))
        steps += [
            ("Spacing", Spacing(pixdim=cfg.spacing_mm, mode="bilinear")),
            (
                "CropForeground",
                CropForeground(
                    select_fn=lambda x: x > thr, margin=cfg.crop_margin_voxels, allow_smaller=True
                ),
            ),
            (
                "ScaleIntensityRange",
                ScaleIntensityRange(a_min=lo, a_max=hi, b_min=-1.0, b_max=1.0, clip=True),
            ),
            ("Resize", Resize(spatial_size=tuple(reversed(cfg.target_size)), mode="trilinear")),
        ]
        self.steps = steps

    def __call__(self, zip_path: Path, probe: dict[str, Any] | None) -> tuple[Any, dict]:
        st: dict[str, float] = {}
        t = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix="s4ct-bench-monai-"))
        try:
            with zipfile.ZipFile(zip_path) as zf:
                zf.extractall(tmp)
            d = _dicom_dir(tmp)
            st["extract (zipfile)"] = time.perf_counter() - t
            t = time.perf_counter()
            img = self.load(str(d))
            st["LoadImage"] = time.perf_counter() - t
        finally:
            t = time.perf_counter()
            shutil.rmtree(tmp, ignore_errors=True)
            st["cleanup"] = time.perf_counter() - t
        if probe is not None:
            probe["hu"] = _hu_probe(tuple(img.shape[-3:]), img.numpy().transpose(2, 1, 0))
            probe["affine_ras"] = np.asarray(img.affine).tolist()
        # axes that Orientation("RAS") flips (axis-aligned series only: no permutation)
        aff = np.asarray(img.affine)[:3, :3]
        if self.orientation and not np.allclose(aff, np.diag(np.diag(aff))):
            raise SystemExit("monai: Orientation on an oblique/permuted series: axes cannot be mapped back")
        flips = [1 + i for i in range(3) if self.orientation and aff[i, i] < 0]
        for name, tr in self.steps:
            t = time.perf_counter()
            img = tr(img)
            st[name] = time.perf_counter() - t
        t = time.perf_counter()
        # plain tensor (1, x, y, z), in RAS axis directions when oriented
        out = img.as_tensor() if hasattr(img, "as_tensor") else torch.as_tensor(img)
        if flips:
            out = torch.flip(out, flips)
        out = out.permute(0, 3, 2, 1)[None].contiguous().float()  # (1, 1, z, y, x) LPS like the reference
        st["to (z,y,x) tensor"] = time.perf_counter() - t
        return out, st


# --------------------------------------------------------------------------- worker


def worker(args: argparse.Namespace) -> int:
    """One pipeline in this (fresh) process: warm-up + timed runs; writes <out>/<name>.json and .npy."""
    import pydicom  # noqa: F401  (imports are not part of the pipelines' memory)
    import SimpleITK  # noqa: F401

    cfg = PreprocessConfig(target_size=(args.target,) * 3)
    name = args.worker
    if name == "ours":
        fn: Callable[[Path, dict[str, Any] | None], tuple[Any, dict]] = lambda z, p: run_ours(z, cfg, p)  # noqa: E731
    elif name == "reference":
        ref = _load_reference()
        fn = lambda z, p: run_reference(z, cfg, p, ref)  # noqa: E731
    else:
        import monai.transforms  # noqa: F401

        fn = MonaiChain(cfg, args.reader, not args.no_orientation)
    zip_path = Path(args.worker_zip)
    base = _rss_bytes()
    probe: dict[str, Any] = {}
    t = time.perf_counter()
    out, _ = fn(zip_path, probe)
    first = time.perf_counter() - t
    del out
    # the warm-up's probe makes a full-volume HU copy for the comparison with MONAI: the peak
    # counts the timed runs only, where the kernel lets it be reset
    peak_reset = _reset_peak()
    totals: list[float] = []
    stages: list[dict[str, float]] = []
    out = None
    for _ in range(args.repeat):
        out = None
        t = time.perf_counter()
        out, st = fn(zip_path, None)
        totals.append(time.perf_counter() - t)
        stages.append(st)
    peak = _maxrss_bytes() - base
    outdir = Path(args.worker_out)
    np.save(outdir / f"{name}.npy", torch.as_tensor(out).numpy())
    rec = {
        "total_s": statistics.median(totals),
        "runs_s": totals,
        "first_s": first,
        "stages_s": {k: statistics.median(s[k] for s in stages) for k in stages[0]},
        "peak_rss_above_baseline_mib": peak / 2**20,
        "baseline_rss_mib": base / 2**20,
        "peak_over": "timed runs" if peak_reset else "warm-up (with its probe) and timed runs",
        "probe": probe,
    }
    if name == "monai":
        rec["reader"] = args.reader
        rec["orientation"] = not args.no_orientation
    (outdir / f"{name}.json").write_text(json.dumps(rec))
    return 0


# --------------------------------------------------------------------------- end-to-end driver


def _run_worker(name: str, zip_path: Path, outdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        name,
        "--worker-zip",
        str(zip_path),
        "--worker-out",
        str(outdir),
        "--target",
        str(args.target),
        "--repeat",
        str(args.repeat),
        "--reader",
        args.reader,
    ]
    if args.no_orientation:
        cmd.append("--no-orientation")
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"worker {name} failed (rc={proc.returncode})")
    rec: dict[str, Any] = json.loads((outdir / f"{name}.json").read_text())
    rec["out"] = torch.from_numpy(np.load(outdir / f"{name}.npy"))
    return rec


def end_to_end(args: argparse.Namespace) -> int:
    zip_path = Path(args.zip) if args.zip else phantom_zip(args)
    names = [n for n in PIPELINES if not (n == "monai" and args.skip_monai)]
    res: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="s4ct-bench-") as td:
        for n in names:
            res[n] = _run_worker(n, zip_path, Path(td), args)

    ours, ref = res["ours"], res["reference"]
    hu = ours["probe"]["hu"]
    n_threads = torch.get_num_threads()
    print(
        f"input: {zip_path} ({zip_path.stat().st_size / 2**20:.0f} MiB); "
        f"series x,y,z={tuple(hu['shape_xyz'])} "
        f"→ tensor [1,1,{args.target},{args.target},{args.target}]"
    )
    print(
        f"each pipeline in a fresh subprocess: 1 untimed warm-up + median of {args.repeat}; "
        f"torch threads={n_threads}, cpus={os.cpu_count()}"
    )
    if "monai" in res:
        m = res["monai"]
        same = m["probe"]["hu"]["shape_xyz"] == hu["shape_xyz"] and abs(
            m["probe"]["hu"]["sum"] - hu["sum"]
        ) <= 1e-6 * max(1.0, abs(hu["sum"]))
        print(
            f"monai: LoadImage(reader={m['reader']!r}) on the extracted directory; "
            f"Orientation('RAS') {'on, x/y mapped back' if m['orientation'] else 'left out'}; "
            f"same series and HU as our reader: {'yes' if same else 'NO'}"
        )
        res["monai"]["same_series_and_hu"] = same
    print()
    for n, r in res.items():
        print(f"{n:<28} {'median s':>9}")
        for k, v in r["stages_s"].items():
            print(f"  {k:<26} {v:>9.3f}")
        print(f"  {'TOTAL':<26} {r['total_s']:>9.3f}")
    print()
    ref_t = ref["out"]
    print(
        f"{'pipeline':<10} {'total s':>8} {'first s':>8} {'runs s':>22} {'peak MiB':>9} "
        f"{'r vs ref':>12} {'max abs':>9}"
    )
    for n, r in res.items():
        rr, d = compare(r["out"], ref_t)
        r["r_vs_reference"], r["max_abs_vs_reference"] = rr, d
        runs = " ".join(f"{t:.2f}" for t in r["runs_s"])
        print(
            f"{n:<10} {r['total_s']:>8.3f} {r['first_s']:>8.3f} {runs:>22} "
            f"{r['peak_rss_above_baseline_mib']:>9.0f} {rr:>12.9f} {d:>9.2g}"
        )
    t_ours = ours["total_s"]
    ratios = {"reference_over_ours": ref["total_s"] / t_ours}
    ratios["reference_over_ours_best_runs"] = min(ref["runs_s"]) / min(ours["runs_s"])
    pre_ours = ours["stages_s"]["preprocess"]
    ratios["reference_over_ours_preprocess_only"] = ref["stages_s"]["reference_preprocess"] / pre_ours
    print()
    print(f"reference/ours = {ratios['reference_over_ours']:.2f}x ZIP → tensor", end="")
    print(f" (best runs {ratios['reference_over_ours_best_runs']:.2f}x)", end="")
    print(f"; preprocess only {ratios['reference_over_ours_preprocess_only']:.2f}x")
    checks = {
        f"≥ {GOAL_REFERENCE_RATIO:g}× the reference": ratios["reference_over_ours"] >= GOAL_REFERENCE_RATIO,
        f"r ≥ {GOAL_R} vs reference": ours["r_vs_reference"] >= GOAL_R,
        f"peak ≤ {GOAL_PEAK_MIB:.0f} MiB": ours["peak_rss_above_baseline_mib"] <= GOAL_PEAK_MIB,
    }
    if "monai" in res:
        m = res["monai"]
        ratios["monai_over_ours"] = m["total_s"] / t_ours
        ratios["monai_over_ours_best_runs"] = min(m["runs_s"]) / min(ours["runs_s"])
        after_load = sum(
            v for k, v in m["stages_s"].items() if k not in ("extract (zipfile)", "LoadImage", "cleanup")
        )
        ratios["monai_over_ours_preprocess_only"] = after_load / pre_ours
        checks[f"≥ {GOAL_MONAI_RATIO:g}× MONAI"] = ratios["monai_over_ours"] >= GOAL_MONAI_RATIO
        print(
            f"monai/ours     = {ratios['monai_over_ours']:.2f}x ZIP → tensor "
            f"(best runs {ratios['monai_over_ours_best_runs']:.2f}x); transforms after LoadImage vs "
            f"our preprocess {ratios['monai_over_ours_preprocess_only']:.2f}x"
        )
    goal = all(checks.values())
    print(
        "goals, ZIP → tensor (ratios of medians): "
        + "; ".join(f"{name}: {'met' if ok else 'NOT MET'}" for name, ok in checks.items())
    )
    print("peak MiB = peak RSS of the pipeline's own subprocess over its timed runs − its RSS after imports")
    if args.json:
        out = {
            "mode": "zip_to_tensor",
            "input": {
                "zip": str(zip_path),
                "zip_mib": zip_path.stat().st_size / 2**20,
                "phantom": None
                if args.zip
                else {
                    "variant": args.variant,
                    "seed": args.seed,
                    "slices": args.slices,
                    "size": args.size,
                    "pixel_mm": args.pixel_mm,
                    "slice_mm": args.slice_mm,
                },
                "series_shape_xyz": hu["shape_xyz"],
            },
            "target": args.target,
            "repeat": args.repeat,
            "machine": {
                "cpus": os.cpu_count(),
                "torch_threads": n_threads,
                "python": platform.python_version(),
                "torch": torch.__version__,
                "platform": platform.platform(),
            },
            "memory_method": "ru_maxrss of a fresh per-pipeline subprocess minus its post-import RSS",
            "pipelines": {n: {k: v for k, v in r.items() if k != "out"} for n, r in res.items()},
            "ratios": ratios,
            "goal": {
                "monai_ratio_min": GOAL_MONAI_RATIO,
                "reference_ratio_min": GOAL_REFERENCE_RATIO,
                "r_min": GOAL_R,
                "peak_mib_max": GOAL_PEAK_MIB,
                "checks": checks,
                "met": goal,
            },
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")
    return 0


# --------------------------------------------------------------------------- --synthetic (in-memory) mode


def synthetic_volume(slices: int = 300, size: int = 512, seed: int = 0) -> CTVolume:
    """A chest-like int16 series (slope 1, intercept -1024): 0.7 mm in-plane, 1 mm slices.

    Body ellipse (~30 HU, σ 10) with two lungs (-850 HU) whose size varies
    along z, a patient table (+200 HU), air -1024 (σ 3, so air stays below the
    -1000 HU body threshold and the crop removes the air around the patient).
    """
    rng = np.random.default_rng(seed)
    geom = VolumeGeometry(
        size=(size, size, slices),
        spacing_mm=(0.7, 0.7, 1.0),
        origin_mm=(-0.35 * (size - 1), -0.35 * (size - 1) + 20.0, -float(slices)),
    )
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = size * 0.47, size * 0.5
    u, v = (xx - cx) / (0.40 * size), (yy - cy) / (0.28 * size)
    body = u**2 + v**2 <= 1.0
    table = (yy > cy + 0.31 * size) & (yy < cy + 0.31 * size + 12) & (np.abs(xx - cx) < 0.42 * size)
    stored = np.empty((slices, size, size), dtype=np.int16)
    noise_bank = rng.normal(0.0, 1.0, size=(8, size, size)).astype(np.float32)
    for k in range(slices):
        t = k / max(slices - 1, 1)
        lung_scale = 0.55 + 0.35 * np.sin(np.pi * t)  # lungs grow then shrink along z
        lung = np.zeros_like(body)
        for sx in (-0.45, 0.45):
            lung |= ((u - sx) / (0.30 * lung_scale)) ** 2 + (v / (0.62 * lung_scale)) ** 2 <= 1.0
        hu = np.full((size, size), -1024.0, dtype=np.float32)
        hu[table] = 200.0
        hu[body] = 30.0
        hu[lung & body] = -850.0
        sigma = np.where(hu > -1000.0, 10.0, 3.0).astype(np.float32)
        hu += noise_bank[k % 8] * sigma
        stored[k] = np.clip(np.rint(hu + 1024.0), -32768, 32767).astype(np.int16)
    return CTVolume(stored=stored, slope=1.0, intercept=-1024.0, geometry=geom, series_uid="synthetic")


def load_input(args: argparse.Namespace) -> CTVolume:
    """The in-memory volume for ``--synthetic``: the largest series of ``--zip``, or a synthetic series.

    Kept separate so that the DICOM loading path can change without touching the timing code.
    """
    if args.zip:
        from ml.io import load_volume, open_study

        with open_study(args.zip) as study:
            if not study.series:
                raise SystemExit("no DICOM series in the archive")
            series = max(study.series, key=lambda s: s.n_slices)
            return load_volume(series)
    return synthetic_volume(args.slices, args.size)


def monai_chain(volume: CTVolume, cfg: PreprocessConfig) -> torch.Tensor:
    """The seed pipeline written with MONAI transforms, as a user would.

    Input: an in-memory equivalent of ``LoadImage(reader="ITKReader")`` +
    ``EnsureChannelFirst`` on the DICOM directory: a MetaTensor (1, X, Y, Z) of
    float32 HU with the RAS affine of the series (the HU conversion is timed, as
    LoadImage would do it). No ``Orientation("RAS")`` (it would flip x/y against
    the SimpleITK/numpy reference); ``CropForeground(allow_smaller=True)``
    (MONAI ≥ 1.5 pads by default). Returns (1, 1, D, H, W) in (z, y, x) order.
    """
    from monai.data import MetaTensor
    from monai.transforms import Compose, CropForeground, Resize, ScaleIntensityRange, Spacing

    hu = volume.hu()  # (z, y, x)
    img = MetaTensor(
        torch.from_numpy(hu).permute(2, 1, 0)[None],  # (1, x, y, z) like MONAI's ITK reader
        affine=torch.as_tensor(volume.geometry.affine_ras()),
    )
    lo, hi = cfg.hu_window
    thr = cfg.body_threshold_hu
    chain = Compose(
        [
            Spacing(pixdim=cfg.spacing_mm, mode="bilinear"),
            CropForeground(select_fn=lambda x: x > thr, margin=cfg.crop_margin_voxels, allow_smaller=True),
            ScaleIntensityRange(a_min=lo, a_max=hi, b_min=-1.0, b_max=1.0, clip=True),
            Resize(spatial_size=tuple(reversed(cfg.target_size)), mode="trilinear"),
        ]
    )
    out = chain(img)
    return torch.as_tensor(out).permute(0, 3, 2, 1)[None].contiguous().float()


class PeakRSS:
    """Samples RSS every ~1 ms in a thread; ``peak - start`` is the extra memory of the block."""

    def __enter__(self) -> PeakRSS:
        self.start = _rss_bytes()
        self.peak = self.start
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def extra(self) -> int:
        return self.peak - self.start


def measure(fn: Callable[[], Any], repeats: int) -> dict[str, Any]:
    t = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t
    del out
    times, extras, last = [], [], None
    for _ in range(repeats):
        last = None
        with PeakRSS() as mem:
            t = time.perf_counter()
            last = fn()
            times.append(time.perf_counter() - t)
        extras.append(mem.extra)
    return {
        "first": first,
        "median": statistics.median(times),
        "times": times,
        "mem": max(extras),
        "out": last,
    }


def run_synthetic(args: argparse.Namespace) -> int:
    """The in-memory mode: all three pipelines in this process on one CTVolume, loading untimed."""
    ref_mod = _load_reference()
    cfg = PreprocessConfig(target_size=(args.target,) * 3)
    vol = load_input(args)
    g = vol.geometry
    print(
        f"input: size(x,y,z)={g.size} spacing={g.spacing_mm} mm dtype={vol.stored.dtype} "
        f"({vol.stored.nbytes / 2**20:.0f} MiB); "
        f"threads: torch={torch.get_num_threads()} cpus={os.cpu_count()}"
    )

    results: dict[str, dict[str, Any]] = {}
    results["ours"] = measure(lambda: preprocess(vol, cfg), args.repeat)
    results["reference"] = measure(lambda: ref_mod.reference_from_config(vol, cfg), args.repeat)
    if not args.skip_monai:
        results["monai"] = measure(lambda: monai_chain(vol, cfg), args.repeat)

    ours = results["ours"]["out"]
    ref_t, ref_box = results["reference"]["out"]
    print(f"crop box (z,y,x) ours={ours.crop_box.start_zyx}..{ours.crop_box.stop_zyx}  reference={ref_box}")
    print(
        "ours per stage (last warm run): "
        + ", ".join(f"{k}={v * 1e3:.0f} ms" for k, v in ours.timings_s.items())
    )
    print(f"{'pipeline':<10} {'median s':>9} {'first s':>8} {'runs s':>24} {'peak MiB':>9}")
    for name, r in results.items():
        runs = " ".join(f"{t:.3f}" for t in r["times"])
        print(f"{name:<10} {r['median']:>9.3f} {r['first']:>8.3f} {runs:>24} {r['mem'] / 2**20:>9.0f}")
    t_ours = results["ours"]["median"]
    print(f"reference/ours = {results['reference']['median'] / t_ours:.2f}x")
    if "monai" in results:
        print(f"monai/ours     = {results['monai']['median'] / t_ours:.2f}x")
    r, d = compare(ours.tensor, ref_t)
    print(f"ours vs reference:  r={r:.9f}  max_abs={d:.3g}  exact_fallback={ours.exact_fallback}")
    if "monai" in results:
        r, d = compare(results["monai"]["out"], ref_t)
        print(f"monai vs reference: r={r:.9f}  max_abs={d:.3g}  (different grid conventions; informative)")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--slices", type=int, default=300, help="phantom slices (default 300)")
    p.add_argument("--size", type=int, default=512, help="phantom rows = columns (default 512)")
    p.add_argument("--pixel-mm", type=float, default=0.7, help="phantom pixel spacing (default 0.7)")
    p.add_argument("--slice-mm", type=float, default=1.0, help="phantom slice spacing (default 1.0)")
    p.add_argument("--seed", type=int, default=0, help="phantom seed (default 0)")
    p.add_argument("--variant", default="standard", help="ml.phantom study variant, e.g. jpeg_lossless")
    p.add_argument("--cache-dir", default=str(ROOT / "var" / "bench"), help="phantom ZIP cache ('' = temp)")
    p.add_argument("--zip", type=str, default=None, help="benchmark this DICOM ZIP instead of a phantom")
    p.add_argument("--target", type=int, default=256, help="model input edge in voxels (default 256)")
    p.add_argument("--repeat", "--repeats", dest="repeat", type=int, default=5, help="timed runs (median)")
    p.add_argument("--reader", default="PydicomReader", help="MONAI LoadImage reader (ITKReader needs itk)")
    p.add_argument("--no-orientation", action="store_true", help="leave Orientation('RAS') out of MONAI")
    p.add_argument("--skip-monai", action="store_true")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    p.add_argument("--synthetic", action="store_true", help="old in-memory mode (input loading untimed)")
    p.add_argument("--worker", choices=PIPELINES, help=argparse.SUPPRESS)
    p.add_argument("--worker-zip", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    if args.worker:
        return worker(args)
    if args.synthetic:
        return run_synthetic(args)
    return end_to_end(args)


if __name__ == "__main__":
    raise SystemExit(main())
