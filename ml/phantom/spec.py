"""What a phantom is made of: the spec that describes it and its ground-truth lesion records.

Units: millimetres in DICOM LPS patient coordinates, Hounsfield units (HU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

Orientation = Literal["axial", "coronal"]

LESION_KINDS: Final[tuple[str, ...]] = ("ggo", "consolidation", "nodule", "effusion")
SLICE_SPACING_CHOICES_MM: Final[tuple[float, ...]] = (0.625, 1.0, 1.25, 2.0, 2.5, 3.0, 5.0)

HU_MIN: Final[int] = -1024
HU_MAX: Final[int] = 3071


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
