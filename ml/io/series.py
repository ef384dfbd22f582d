"""What discovery finds: slices, series (with their geometry) and the study."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ml.geometry import VolumeGeometry
from ml.io.members import MemberStore

__all__ = ["SeriesInfo", "SliceRef", "Study"]


@dataclass(frozen=True)
class SliceRef:
    """One 2-D image of a series: a file, and a frame number for multi-frame objects.

    Positions in LPS mm; ``rescale`` maps stored values to HU.
    """

    path: Path
    frame: int | None
    position_mm: tuple[float, float, float]
    instance_number: int | None
    slope: float
    intercept: float
    rows: int
    columns: int
    pixel_spacing_mm: tuple[float, float]  # (row spacing, column spacing), as DICOM PixelSpacing
    orientation: tuple[float, ...]  # ImageOrientationPatient: row cosine (3) + column cosine (3)
    slice_thickness_mm: float | None
    #: SOPInstanceUID of the file (as read, unchecked); "" when absent
    sop_instance_uid: str = ""
    #: where the file's bytes are when the archive was read into memory (``path`` is then its
    #: generated name in the store); None: ``path`` is a file on disk
    store: MemberStore | None = field(default=None, compare=False, repr=False)
    #: (byte offset, NumPy dtype) of the uncompressed pixels in the member's bytes, when they
    #: can be copied without a second parse (:func:`ml.io.headers.native_pixel_span`)
    native: tuple[int, str] | None = field(default=None, compare=False, repr=False)

    def source(self) -> Path | bytes:
        """The file to read: its path on disk, or its bytes from the in-memory store."""
        return self.path if self.store is None else self.store.get(self.path)


@dataclass
class SeriesInfo:
    """A series discovered from headers, with its slices sorted along the slice normal."""

    series_uid: str
    study_uid: str
    modality: str
    sop_class_uid: str
    image_type: tuple[str, ...]
    description: str
    kernel: str
    manufacturer: str
    body_part: str
    transfer_syntaxes: tuple[str, ...]
    multiframe: bool
    slices: list[SliceRef]
    #: slices dropped because another slice had the same position (counted, kept out of the volume)
    duplicates: int = 0
    #: header problems found while grouping: mixed sizes, missing geometry ...
    issues: list[str] = field(default_factory=list)
    gantry_tilt_tag_deg: float = 0.0

    @property
    def n_slices(self) -> int:
        return len(self.slices)

    @property
    def rows(self) -> int:
        return self.slices[0].rows if self.slices else 0

    @property
    def columns(self) -> int:
        return self.slices[0].columns if self.slices else 0

    @property
    def pixel_spacing_mm(self) -> tuple[float, float]:
        return self.slices[0].pixel_spacing_mm if self.slices else (0.0, 0.0)

    @property
    def slice_thickness_mm(self) -> float | None:
        vals = [s.slice_thickness_mm for s in self.slices if s.slice_thickness_mm is not None]
        return float(np.median(vals)) if vals else None

    def normal(self) -> npt.NDArray[np.float64]:
        """Unit slice normal (row cosine × column cosine) in LPS."""
        o = np.asarray(self.slices[0].orientation, dtype=np.float64)
        n = np.cross(o[:3], o[3:])
        norm = np.linalg.norm(n)
        return n / norm if norm > 0 else n

    def slice_offsets_mm(self) -> npt.NDArray[np.float64]:
        """Position of each (sorted) slice along the normal, in mm."""
        if not self.slices:
            return np.zeros(0)
        p = np.asarray([s.position_mm for s in self.slices], dtype=np.float64)
        return np.asarray(p @ self.normal(), dtype=np.float64)

    def slice_steps_mm(self) -> npt.NDArray[np.float64]:
        return np.diff(self.slice_offsets_mm())

    def slice_spacing_mm(self) -> float | None:
        """Median distance between consecutive slices along the normal (mm)."""
        steps = self.slice_steps_mm()
        return float(np.median(steps)) if steps.size else None

    def tilt_deg(self) -> float:
        """Angle between the slice stacking direction and the slice normal (gantry tilt), degrees."""
        if len(self.slices) < 2:
            return 0.0
        d = np.asarray(self.slices[-1].position_mm) - np.asarray(self.slices[0].position_mm)
        nd = np.linalg.norm(d)
        if nd == 0:
            return 0.0
        c = abs(float(d @ self.normal())) / nd
        return math.degrees(math.acos(min(1.0, float(c))))

    def coverage_mm(self) -> float:
        off = self.slice_offsets_mm()
        return float(off[-1] - off[0]) if off.size else 0.0

    def orientation_label(self) -> str:
        """'axial', 'coronal' or 'sagittal' by the dominant component of the slice normal."""
        if not self.slices:
            return "unknown"
        n = np.abs(self.normal())
        return ("sagittal", "coronal", "axial")[int(np.argmax(n))]

    def geometry(self) -> VolumeGeometry:
        """Volume grid of the sorted slices (origin = first slice, z along the normal)."""
        s0 = self.slices[0]
        o = np.asarray(s0.orientation, dtype=np.float64)
        r, c = o[:3], o[3:]
        n = self.normal()
        dz = self.slice_spacing_mm() or (s0.slice_thickness_mm or 1.0)
        direction = (r[0], c[0], n[0], r[1], c[1], n[1], r[2], c[2], n[2])
        return VolumeGeometry(
            size=(s0.columns, s0.rows, len(self.slices)),
            spacing_mm=(s0.pixel_spacing_mm[1], s0.pixel_spacing_mm[0], abs(dz) if dz else 1.0),
            origin_mm=s0.position_mm,
            direction=tuple(float(v) for v in direction),
        )

    def summary(self) -> dict[str, Any]:
        """JSON-able description without any patient identifier."""
        spacing = self.slice_spacing_mm()
        return {
            "series_uid": self.series_uid,
            "modality": self.modality,
            "description": self.description,
            "image_type": list(self.image_type),
            "kernel": self.kernel,
            "manufacturer": self.manufacturer,
            "body_part": self.body_part,
            "slices": self.n_slices,
            "rows": self.rows,
            "columns": self.columns,
            "pixel_spacing_mm": [round(v, 4) for v in self.pixel_spacing_mm],
            "slice_thickness_mm": self.slice_thickness_mm,
            "slice_spacing_mm": None if spacing is None else round(spacing, 4),
            "coverage_mm": round(self.coverage_mm(), 2),
            "orientation": self.orientation_label(),
            "multiframe": self.multiframe,
            "transfer_syntaxes": list(self.transfer_syntaxes),
            "duplicates_removed": self.duplicates,
        }


@dataclass
class Study:
    """All series found in one archive, plus what was skipped (counts only)."""

    series: list[SeriesInfo]
    skipped: Counter[str] = field(default_factory=Counter)
    files: int = 0
    #: identifier values seen in headers, for log scrubbing; never serialised
    phi_tokens: frozenset[str] = frozenset()

    def get(self, series_uid: str) -> SeriesInfo | None:
        return next((s for s in self.series if s.series_uid == series_uid), None)
