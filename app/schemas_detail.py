"""Typed parts of the result and the explanation: QC findings, the plausibility check, the saliency
statistics and the source geometry (docs/architecture.md §3.5, §3.6).

Every field has a type, the viewer blocks too (the NIfTI's encoding, the overlay, the sprite and
layer grids: ``ml/explain/files.py``, ``ml/explain/render.py``). Unknown keys that a newer worker
writes into ``stats.json`` are passed through.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas_explain import ExplainParams

__all__ = [
    "ExplainedModel",
    "ExplanationStats",
    "IndeterminateReason",
    "PlausibilityOut",
    "QCOut",
    "QCReasonOut",
    "SaliencyPeak",
    "SaliencyRegion",
    "SourceGeometry",
]

IndeterminateReason = Literal[
    "out_of_distribution", "implausible_hu", "no_lungs_found", "incomplete_chest_coverage"
]


class QCReasonOut(BaseModel):
    """A QC finding of a series: a stable code, `reject` (unusable) or `warn`, and a human detail."""

    code: str
    severity: Literal["reject", "warn"]
    detail: str


class PlausibilityOut(BaseModel):
    """The chest-CT plausibility check of the model input (``ml/ood/plausibility.py``)."""

    lung_volume_ml: float
    body_volume_ml: float
    max_lung_area_fraction: float = Field(description="largest share of a slice's body area the lungs fill")
    lung_extent_mm: float = Field(description="cranio-caudal extent of the slices with lungs")
    scan_extent_mm: float
    reasons: list[IndeterminateReason]


class QCOut(BaseModel):
    """QC of the selected series: its warnings, the skipped archive members, the plausibility check."""

    warnings: list[QCReasonOut] = Field(default_factory=list, description="warnings of the selected series")
    skipped_files: dict[str, int] = Field(
        default_factory=dict, description="archive members that are not images, counted by kind (never names)"
    )
    plausibility: PlausibilityOut | None = None


class SaliencyPeak(BaseModel):
    """The map's maximum (the first in C order) on the source series."""

    model_config = ConfigDict(extra="allow")
    index_zyx: list[int]
    index_ijk: list[int] | None = None
    lps_mm: list[float]
    ras_mm: list[float] | None = None
    value: float | None = None


class SaliencyRegion(BaseModel):
    """A connected region of the map above ``region_threshold``, largest maximum first."""

    model_config = ConfigDict(extra="allow")
    rank: int
    max: float
    mean: float
    sum: float
    voxels: int
    volume_mm3: float | None = None
    centroid_lps_mm: list[float] | None = None
    weighted_centroid_lps_mm: list[float] | None = None
    peak_lps_mm: list[float] | None = None


_OPEN = ConfigDict(extra="allow")


class NiftiInfo(BaseModel):
    """``saliency.nii.gz``: its encoding (``ml/explain/nifti.py``) and its RAS affine (mm)."""

    model_config = _OPEN
    file: str
    dtype: Literal["uint8", "float32"]
    scl_slope: float | None = None
    scl_inter: float | None = None
    max_error: float | None = Field(None, description="uint8: the largest error of a voxel (map units)")
    mantissa_bits: int | None = Field(None, description="float32: mantissa bits kept")
    axes: str | None = None
    affine_ras: list[list[float]] | None = Field(None, description="voxel (i, j, k) → RAS mm (4×4)")


class OverlayStyle(BaseModel):
    """How the PNGs draw the map on the CT: window, threshold and colormap."""

    model_config = _OPEN
    window: str | None = None
    window_hu: list[float] | None = None
    threshold_fraction: float | None = Field(
        None, description="share of the maximum below which nothing shows"
    )
    colormap: str | None = None
    ct: bool | None = Field(None, description="whether the CT is drawn under the map")


class SpriteLayout(BaseModel):
    """The composite sprite: tiles in row-major order, one per listed slice."""

    model_config = _OPEN
    file: str
    columns: int
    rows: int
    tile_px: list[int] = Field(description="tile width, height (pixels)")
    slices: list[int] = Field(description="source slice index of each tile")
    slices_origin_lps_mm: list[list[float]] | None = None


class PeakPng(BaseModel):
    """The peak's slice at full resolution."""

    model_config = _OPEN
    file: str
    slice: int = Field(description="source slice index")


class LayerEncoding(BaseModel):
    """One viewer layer's pixel encoding."""

    model_config = _OPEN
    mode: str = Field(description="PNG mode: L (gray) or RGBA")
    encoding: str
    window_hu: list[float] | None = None
    scale: float | None = Field(None, description="saliency ≈ pixel / 255 * scale")
    threshold_fraction: float | None = None
    alpha: list[float] | None = None


class LayersLayout(BaseModel):
    """The viewer layers' grid (``ct_layer``, ``saliency_layer``, ``heat_layer`` share it)."""

    model_config = _OPEN
    files: dict[str, str] = Field(description="role → file name")
    columns: int
    rows: int
    tile_px: list[int] = Field(description="tile width, height (pixels)")
    image_px: list[int] | None = None
    pixel_mm: list[float] | None = Field(None, description="mm per tile pixel (x, y)")
    order: str | None = None
    tile_to_source: str | None = None
    source_shape_zyx: list[int] | None = None
    slices: list[int] = Field(description="source slice index of each tile")
    slices_origin_lps_mm: list[list[float]] | None = None
    peak_tile: int | None = None
    ct: LayerEncoding | None = None
    saliency: LayerEncoding | None = None
    heat: LayerEncoding | None = None


class ExplanationStats(BaseModel):
    """``stats.json`` of an explanation (values in the map's own units; positions in LPS mm)."""

    model_config = ConfigDict(extra="allow")
    max: float
    min: float | None = None
    mean: float | None = None
    mean_nonzero: float | None = None
    nonzero_fraction: float | None = None
    peak: SaliencyPeak | None = None
    region_fraction: float | None = None
    region_threshold: float | None = None
    region_count: int | None = None
    regions: list[SaliencyRegion] = Field(default_factory=list)
    outside_body_fraction: float | None = Field(
        default=None,
        description="share of the positive attribution outside the patient's body before the map was "
        "masked to the body; null when no body was found and the map is unmasked",
    )
    method: str | None = None
    params: ExplainParams = Field(default_factory=dict)
    shape_zyx: list[int] | None = None
    nifti: NiftiInfo | None = Field(default=None, description="the NIfTI file's encoding and affine")
    overlay: OverlayStyle | None = None
    sprite: SpriteLayout | None = None
    peak_png: PeakPng | None = None
    layers: LayersLayout | None = Field(
        default=None, description="the viewer layers' grid: tile size, mm per pixel, slice positions (LPS)"
    )
    seconds: dict[str, float] = Field(default_factory=dict, description="timings of the explanation")


class SourceGeometry(BaseModel):
    """The grid of the selected source series the map lies on (LPS mm; sizes (x, y, z))."""

    model_config = ConfigDict(extra="allow")
    frame: Literal["LPS"] | None = None
    series_uid: str | None = None
    shape_zyx: list[int]
    size: list[int] | None = None
    spacing_mm: list[float] | None = None
    origin_mm: list[float] | None = None
    direction: list[float] | None = None
    nifti_axes: str | None = None
    affine_ras: list[list[float]] | None = None


class ExplainedModel(BaseModel):
    name: str
    version: str
