"""The files of an explanation: NIfTI, PNG overlays and ``stats.json`` (:func:`write_saliency`).

:func:`write_saliency` writes ``saliency.nii.gz``, an axial PNG sprite (+ the
peak slice as its own PNG), ``stats.json`` and the layers of a browser viewer
(CT, saliency and colour heatmap as separate PNG sprites on one grid).

Conventions (see :mod:`ml.geometry`): NumPy arrays are (z, y, x) = (slice, row,
column); geometry sizes and indices are (x, y, z); patient coordinates are LPS
mm. NIfTI voxel indices (i, j, k) are (column, row, slice) = (x, y, z) of the
DICOM series, with the RAS affine ``diag(-1, -1, 1, 1) @ affine_lps``, so
nibabel, NiiVue, 3D Slicer and ITK put the map on the same anatomy as the DICOM
series.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from ml.explain.nifti import NIFTI_DTYPES, round_mantissa, write_nifti
from ml.explain.render import (
    Style,
    lut,
    sprite_slices,
    window_range,
    write_layers,
    write_peak_png,
    write_sprite,
)
from ml.explain.stats import jsonable, map_summary, saliency_stats
from ml.geometry import CTVolume, VolumeGeometry

__all__ = ["CONTENT_TYPES", "SaliencyFiles", "round_mantissa", "write_saliency"]

F32Array = npt.NDArray[np.float32]

CONTENT_TYPES: Mapping[str, str] = MappingProxyType(
    {".nii.gz": "application/gzip", ".png": "image/png", ".json": "application/json"}
)


@dataclass(frozen=True)
class SaliencyFiles:
    """What :func:`write_saliency` wrote.

    Attributes:
        nifti: ``saliency.nii.gz`` (uint8 with scl_slope/scl_inter, or float32; source
            geometry, RAS affine).
        sprite_png: grid of axial slices with the overlay (None if not written).
        peak_png: the slice through the peak at full resolution (None if not written).
        stats_json: ``stats.json``.
        stats: the content of ``stats.json``.
        content_types: file name → MIME type (``application/gzip``, ``image/png``,
            ``application/json``), for the object store.
        ct_layer, saliency_layer, heat_layer: the viewer layers (``layer_ct.png``,
            ``layer_saliency.png``, ``layer_heat.png``; None if not written; no CT
            layer without a CT).
    """

    nifti: Path
    sprite_png: Path | None
    peak_png: Path | None
    stats_json: Path
    stats: dict[str, Any]
    content_types: dict[str, str] = field(default_factory=dict)
    ct_layer: Path | None = None
    saliency_layer: Path | None = None
    heat_layer: Path | None = None

    def files(self) -> list[tuple[Path, str]]:
        """(path, content type) of every written file."""
        return list(self.named().values())

    def named(self) -> dict[str, tuple[Path, str]]:
        """Role → (path, content type), for the files that were written.

        Roles: ``nifti``, ``sprite_png``, ``peak_png``, ``stats_json`` and the viewer
        layers ``ct_layer``, ``saliency_layer``, ``heat_layer`` (``stats["layers"]``
        describes their grid).
        """
        roles: dict[str, Path | None] = {
            "nifti": self.nifti,
            "sprite_png": self.sprite_png,
            "peak_png": self.peak_png,
            "stats_json": self.stats_json,
            "ct_layer": self.ct_layer,
            "saliency_layer": self.saliency_layer,
            "heat_layer": self.heat_layer,
        }
        return {role: (p, self.content_types[p.name]) for role, p in roles.items() if p is not None}


def _content_type(path: Path) -> str:
    for ext, ct in CONTENT_TYPES.items():
        if path.name.endswith(ext):
            return ct
    return "application/octet-stream"


def write_saliency(
    source_map: F32Array,
    geometry: VolumeGeometry,
    ct_hu: CTVolume | npt.NDArray[Any] | None,
    out_dir: str | Path,
    *,
    method: str = "",
    params: Mapping[str, Any] | None = None,
    window: str | tuple[float, float] = "lung",
    threshold_fraction: float = 0.2,
    colormap: str = "jet",
    max_tiles: int = 64,
    sprite_width: int = 2048,
    peak_png: bool = True,
    region_fraction: float = 0.5,
    top_k: int = 5,
    nifti_mantissa_bits: int | None = None,
    extra_stats: Mapping[str, Any] | None = None,
    viewer_layers: bool = True,
    layer_max_slices: int = 100,
    layer_tile_px: int = 256,
    nifti_dtype: str = "uint8",
    sprite: bool = True,
    nifti_buffer: npt.NDArray[np.uint8] | None = None,
) -> SaliencyFiles:
    """Write a source-space saliency map as NIfTI + PNG overlays + JSON stats into ``out_dir``.

    Args:
        source_map: float32 (z, y, x) on the source series grid
            (see :func:`~ml.explain.source_grid.to_source`).
        geometry: the source series grid (``CTVolume.geometry``).
        ct_hu: the CT for the overlays: an HU array (z, y, x) of the same shape, or
            the CTVolume itself (only the rendered slices are converted to HU), or
            None for heatmap-only PNGs.
        out_dir: created if missing.
        method, params: recorded in ``stats.json``.
        window: CT display window, ``"lung"`` (−600/1500 HU), ``"mediastinal"``
            (40/400 HU) or (centre, width) in HU.
        threshold_fraction: the heatmap is blended where saliency > this · max.
        colormap: a matplotlib colormap name.
        max_tiles: the sprite shows at most this many slices, evenly spaced in
            array order, always including the peak slice.
        sprite_width: sprite width in pixels (≤ 4096); tiles keep the in-plane
            physical aspect ratio.
        peak_png: also write the peak slice at full resolution with a ring at the peak.
        region_fraction, top_k: connected regions reported (see :func:`~ml.explain.stats.saliency_stats`).
        nifti_mantissa_bits: with ``nifti_dtype="float32"``: None writes the map
            exactly; 1–23 rounds the float32 mantissas first (:func:`round_mantissa`)
            for a smaller, faster NIfTI (stats and PNGs use the exact map).
        extra_stats: merged into ``stats.json`` (e.g. timings).
        viewer_layers: also write the layers a browser viewer composes itself
            (CT and heatmap apart, so that opacity can change): ``layer_ct.png``
            (8-bit gray, CT in ``window``), ``layer_saliency.png`` (8-bit saliency,
            0–255 = 0–max) and ``layer_heat.png`` (RGBA: ``colormap`` of the
            saliency, alpha 0 up to ``threshold_fraction`` · max, then
            :data:`~ml.explain.render.HEAT_ALPHA`), on one grid described by ``stats["layers"]``.
        layer_max_slices: the layers hold every slice up to this many, else this
            many evenly spaced slices, always including the peak slice (1–1024).
        layer_tile_px: long side of a layer tile in pixels (32–512); tiles have
            square pixels (physical aspect) and are never finer than the source.
        nifti_dtype: ``"uint8"`` (8 bits with ``scl_slope``/``scl_inter``, within
            max/510 of the map: :func:`~ml.explain.nifti.encode_uint8`) or ``"float32"``.
        sprite: also write the composite sprite (the viewer layers show the same slices).
        nifti_buffer: a reusable uint8 array of the map's shape for the 8-bit NIfTI.

    Files: ``saliency.nii.gz`` — ``nifti_dtype`` (:mod:`ml.explain.nifti`), voxel
    (i, j, k) = (column, row, slice) of the series, sform/qform =
    :meth:`VolumeGeometry.affine_ras` (code 1, scanner);
    ``saliency_sprite.png`` — tiles in row-major order, each slice shown as a
    DICOM viewer shows the image (rows downwards, columns to the right);
    ``saliency_peak.png``; ``stats.json`` — :func:`~ml.explain.stats.saliency_stats` plus method,
    params, the sprite layout (slice index and LPS z of each tile), the NIfTI
    affine and ``layers`` (None without ``viewer_layers``): file per role,
    ``columns``, ``rows``, ``tile_px`` [w, h], ``image_px``, ``pixel_mm`` [x, y],
    ``slices`` (series slice index of each tile), ``slices_origin_lps_mm``,
    ``peak_tile``, ``source_shape_zyx`` and each layer's encoding. For a
    300-slice 512² series the three PNGs hold 100 tiles of 256² in a 10 × 10 grid
    (2560² px): the real chest CT sample (131 slices) gives 3.5 MB of CT, 1.1 MB
    of saliency and 1.9 MB of heat at PNG level 1, and a 5 MB 8-bit NIfTI; noise-free
    phantoms less.
    """
    if source_map.ndim != 3 or tuple(source_map.shape) != geometry.shape_zyx:
        raise ValueError(f"source_map shape {source_map.shape} != geometry {geometry.shape_zyx} (z, y, x)")
    if ct_hu is not None and tuple(ct_hu.stored.shape if isinstance(ct_hu, CTVolume) else ct_hu.shape) != (
        geometry.shape_zyx
    ):
        raise ValueError("ct_hu must have the same (z, y, x) shape as the saliency map")
    if not 0.0 <= threshold_fraction < 1.0:
        raise ValueError(f"threshold_fraction must be in [0, 1), got {threshold_fraction}")
    if not 1 <= max_tiles <= 1024:
        raise ValueError(f"max_tiles must be in [1, 1024], got {max_tiles}")
    if not 64 <= sprite_width <= 4096:
        raise ValueError(f"sprite_width must be in [64, 4096] px, got {sprite_width}")
    if nifti_dtype not in NIFTI_DTYPES:
        raise ValueError(f"nifti_dtype must be one of {list(NIFTI_DTYPES)}, got {nifti_dtype!r}")
    if nifti_mantissa_bits is not None and not 1 <= nifti_mantissa_bits <= 23:
        raise ValueError(f"nifti_mantissa_bits must be None or in [1, 23], got {nifti_mantissa_bits}")
    if not 1 <= layer_max_slices <= 1024:
        raise ValueError(f"layer_max_slices must be in [1, 1024], got {layer_max_slices}")
    if not 32 <= layer_tile_px <= 512:
        raise ValueError(f"layer_tile_px must be in [32, 512] px, got {layer_tile_px}")
    lo_hu, hi_hu, window_name = window_range(window)
    source_map = np.asarray(source_map, dtype=np.float32)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    nz, ny, nx = source_map.shape
    nifti_path = out / "saliency.nii.gz"
    sprite_path = out / "saliency_sprite.png" if sprite else None
    peak_path = out / "saliency_peak.png" if peak_png else None
    layer_paths: dict[str, Path] = {}
    layers: dict[str, Any] | None = None
    layout: dict[str, Any] = {}
    summary = map_summary(source_map)
    peak_z, peak_y, peak_x = summary.peak_zyx
    # the NIfTI (encoding, gzip), the regions, the resampling and the PNG encoders release the
    # GIL: the files are made side by side (the CT layer is one more task of the pool)
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="s4ct-saliency") as pool:
        nifti_job = pool.submit(
            write_nifti,
            source_map,
            geometry,
            nifti_path,
            dtype=nifti_dtype,
            descrip=f"Service4CT saliency {method}".strip(),
            cal_max=max(0.0, summary.max),
            mantissa_bits=nifti_mantissa_bits,
            buffer=nifti_buffer,
            value_range=(summary.min, summary.max),
        )
        stats_job = pool.submit(
            saliency_stats,
            source_map,
            geometry,
            region_fraction=region_fraction,
            top_k=top_k,
            summary=summary,
        )
        style = Style(lo_hu, hi_hu, summary.max, threshold_fraction, lut(colormap))
        if viewer_layers:
            layer_slices = sprite_slices(nz, layer_max_slices, peak_z)
            layer_paths, layers = write_layers(
                source_map, geometry, ct_hu, layer_slices, peak_z, layer_tile_px, style, out, pool=pool
            )
        if sprite_path is not None:
            slices = sprite_slices(nz, max_tiles, peak_z)
            layout = write_sprite(source_map, geometry, ct_hu, slices, sprite_width, style, sprite_path)
        if peak_path is not None:
            write_peak_png(source_map, geometry, ct_hu, (peak_z, peak_y, peak_x), style, peak_path)
        stats = stats_job.result()
        encoding = nifti_job.result()
    affine = [[float(v) for v in row] for row in geometry.affine_ras()]

    stats.update(
        {
            "method": method,
            "params": dict(params or {}),
            "shape_zyx": [nz, ny, nx],
            "geometry": geometry.to_dict(),
            "nifti": {
                "file": nifti_path.name,
                **encoding,
                "axes": "i, j, k = column, row, slice of the source series (x, y, z)",
                "affine_ras": affine,
            },
            "overlay": {
                "window": window_name,
                "window_hu": [lo_hu, hi_hu],
                "threshold_fraction": threshold_fraction,
                "colormap": colormap,
                "ct": ct_hu is not None,
            },
            "sprite": None if sprite_path is None else {"file": sprite_path.name, **layout},
            "peak_png": None if peak_path is None else {"file": peak_path.name, "slice": peak_z},
            "layers": layers,
        }
    )
    if extra_stats:
        stats.update(dict(extra_stats))
    stats = jsonable(stats)
    stats_path = out / "stats.json"
    stats_path.write_text(json.dumps(stats, indent=2, allow_nan=False))
    written = [nifti_path, stats_path, *(p for p in (sprite_path, peak_path) if p is not None)]
    written += layer_paths.values()
    return SaliencyFiles(
        nifti=nifti_path,
        sprite_png=sprite_path,
        peak_png=peak_path,
        stats_json=stats_path,
        stats=stats,
        content_types={p.name: _content_type(p) for p in written},
        ct_layer=layer_paths.get("ct_layer"),
        saliency_layer=layer_paths.get("saliency_layer"),
        heat_layer=layer_paths.get("heat_layer"),
    )
