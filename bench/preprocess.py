"""Benchmark of the seed preprocessing: ours (fast path) vs the plain reference vs a MONAI chain.

Usage::

    python bench/preprocess.py                      # synthetic 300×512² series, 0.7 mm × 1 mm
    python bench/preprocess.py --slices 120 --size 256
    python bench/preprocess.py --zip study.zip      # a real DICOM ZIP (largest series)

All three pipelines run in the same process on the same :class:`~ml.geometry.CTVolume`
(input loading is not timed): one untimed first call each ("first", includes
lazy imports and first touches of fresh memory), then ``--repeats`` warm runs
whose median is reported. Peak memory is the highest RSS seen by a 1 ms sampler
thread during a pipeline's warm runs, minus the RSS just before each run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from ml.geometry import CTVolume, VolumeGeometry  # noqa: E402
from ml.preprocess import PreprocessConfig, preprocess  # noqa: E402


def _load_reference() -> Any:
    spec = importlib.util.spec_from_file_location(
        "reference_preprocess", ROOT / "tests" / "reference_preprocess.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------- input


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
    """The volume to benchmark: ``--zip`` (largest series of a DICOM ZIP) or a synthetic series.

    Kept separate so that the DICOM loading path can change without touching the timing code.
    """
    if args.zip:
        from ml.dicom import load_volume, open_study

        with open_study(args.zip) as study:
            if not study.series:
                raise SystemExit("no DICOM series in the archive")
            series = max(study.series, key=lambda s: s.n_slices)
            return load_volume(series)
    return synthetic_volume(args.slices, args.size)


# --------------------------------------------------------------------------- pipelines


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


# --------------------------------------------------------------------------- measurement


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


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


def compare(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    x, y = a.double().ravel().numpy(), b.double().ravel().numpy()
    if x.shape != y.shape:
        return float("nan"), float("nan")
    return float(np.corrcoef(x, y)[0, 1]), float(np.abs(x - y).max())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slices", type=int, default=300)
    p.add_argument("--size", type=int, default=512, help="rows = columns of the synthetic series")
    p.add_argument("--zip", type=str, default=None, help="DICOM ZIP; its largest series is used")
    p.add_argument("--target", type=int, default=256, help="model input edge (voxels)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-monai", action="store_true")
    args = p.parse_args(argv)

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
    results["ours"] = measure(lambda: preprocess(vol, cfg), args.repeats)
    results["reference"] = measure(lambda: ref_mod.reference_from_config(vol, cfg), args.repeats)
    if not args.skip_monai:
        results["monai"] = measure(lambda: monai_chain(vol, cfg), args.repeats)

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


if __name__ == "__main__":
    raise SystemExit(main())
