"""Series quality control and ranking.

Each discovered series gets a list of :class:`QCReason` (stable codes, a
severity and human text). Series with a ``reject`` reason are unusable; the
usable ones are ranked (chest CT, thin but reasonable slices, most coverage,
preferred reconstruction kernel, original images) and the best is selected
unless the caller names a ``series_uid``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from ml.errors import QCError
from ml.io.headers import CT_SOP_CLASSES
from ml.io.series import SeriesInfo, Study

__all__ = [
    "QC_CODES",
    "QCConfig",
    "QCReason",
    "QCReport",
    "SeriesQC",
    "Severity",
    "assess_series",
    "rank_series",
]

Severity = Literal["reject", "warn"]

#: every QC reason code with its severity (rejections make a series unusable)
QC_CODES: dict[str, Severity] = {
    "not_ct": "reject",
    "localizer": "reject",
    "too_few_slices": "reject",
    "slice_thickness_too_large": "reject",
    "inconsistent_spacing": "reject",
    "mixed_image_sizes": "reject",
    "non_axial": "reject",
    "duplicate_slices": "warn",
    "gantry_tilt": "warn",
    "derived_images": "warn",
    "not_chest": "warn",
    "dicom_invalid": "warn",
}

_SOFT_KERNEL = re.compile(
    r"^(B[1-4]\d|I[1-4]\d|D[1-4]\d|Br[1-4]\d|Qr[1-4]\d|FC0\d|FC1\d|FC2\d)|STANDARD|SOFT|BODY|MEDIASTIN|SMOOTH",
    re.IGNORECASE,
)
_LUNG_KERNEL = re.compile(
    r"^(B[5-9]\d|I[5-9]\d|D[5-9]\d|Br[5-9]\d|Bl\d\d|Qr[5-9]\d|FC5\d|FC8\d)|LUNG|BONE|SHARP|DETAIL|YA|YB",
    re.IGNORECASE,
)
_CHEST = re.compile(r"CHEST|THORAX|LUNG|THX|TORAX|PULM|CTPA|THORAC", re.IGNORECASE)


@dataclass(frozen=True)
class QCConfig:
    """QC thresholds (mm, degrees, counts)."""

    min_slices: int = 20
    max_slice_thickness_mm: float = 5.0
    #: a slice step deviating from the median by more than this fraction is irregular
    spacing_tolerance: float = 0.1
    #: absolute tolerance (mm) added to the relative one (DICOM positions are rounded)
    spacing_tolerance_mm: float = 0.05
    max_tilt_deg: float = 0.5
    #: largest angle (degrees) between the slice normal and the patient's z axis for 'axial'
    max_axial_obliquity_deg: float = 30.0
    prefer_kernel: Literal["soft", "lung"] = "soft"


@dataclass(frozen=True)
class QCReason:
    code: str
    severity: Severity
    detail: str

    def __post_init__(self) -> None:
        if QC_CODES.get(self.code) != self.severity:
            raise ValueError(f"QC code {self.code!r} is not a known {self.severity} code")

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "severity": self.severity, "detail": self.detail}


@dataclass
class SeriesQC:
    """QC verdict of one series."""

    series: SeriesInfo
    reasons: list[QCReason] = field(default_factory=list)
    score: float = 0.0
    rank: int | None = None
    #: why it ranks where it does (human text)
    ranking_notes: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return not any(r.severity == "reject" for r in self.reasons)

    @property
    def reject_codes(self) -> list[str]:
        return [r.code for r in self.reasons if r.severity == "reject"]

    @property
    def warning_codes(self) -> list[str]:
        return [r.code for r in self.reasons if r.severity == "warn"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "series_uid": self.series.series_uid,
            "usable": self.usable,
            "score": round(self.score, 3),
            "reasons": [r.to_dict() for r in self.reasons],
            "ranking_notes": self.ranking_notes,
            "summary": self.series.summary(),
        }


@dataclass
class QCReport:
    """Ranking of all series of a study and the selected one."""

    series: list[SeriesQC]
    selected: SeriesQC
    override: bool
    skipped_files: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "selected_series_uid": self.selected.series.series_uid,
            "selected_by": "override" if self.override else "ranking",
            "warnings": [r.to_dict() for r in self.selected.reasons if r.severity == "warn"],
            "series": [s.to_dict() for s in self.series],
            "skipped_files": dict(sorted(self.skipped_files.items())),
        }


def assess_series(s: SeriesInfo, cfg: QCConfig | None = None) -> SeriesQC:
    """Check one series and return its QC reasons (unranked)."""
    cfg = cfg or QCConfig()
    out = SeriesQC(series=s)
    add = out.reasons.append
    if s.modality != "CT" or (s.sop_class_uid and s.sop_class_uid not in CT_SOP_CLASSES):
        add(QCReason("not_ct", "reject", f"modality {s.modality or 'missing'}, not CT"))
    if "LOCALIZER" in s.image_type or "SCOUT" in s.image_type or "TOPOGRAM" in s.image_type:
        add(QCReason("localizer", "reject", "localizer/scout image"))
    if not s.slices:
        add(QCReason("too_few_slices", "reject", "no image with plane geometry"))
        return out
    if "mixed_image_sizes" in s.issues:
        add(
            QCReason(
                "mixed_image_sizes", "reject", "slices differ in rows/columns, pixel spacing or orientation"
            )
        )
    if "dicom_invalid" in s.issues:
        add(QCReason("dicom_invalid", "warn", "some images had invalid headers and were left out"))
    if s.n_slices < cfg.min_slices:
        add(QCReason("too_few_slices", "reject", f"{s.n_slices} slices (< {cfg.min_slices})"))
    normal = s.normal()
    obliquity = math.degrees(math.acos(min(1.0, abs(float(normal[2])))))
    if obliquity > cfg.max_axial_obliquity_deg:
        add(
            QCReason(
                "non_axial", "reject", f"{s.orientation_label()} series (normal {obliquity:.0f}° from axial)"
            )
        )
    spacing = s.slice_spacing_mm()
    thickness = s.slice_thickness_mm
    worst = max(v for v in (spacing or 0.0, thickness or 0.0))
    if worst > cfg.max_slice_thickness_mm + 1e-3:
        add(
            QCReason(
                "slice_thickness_too_large",
                "reject",
                f"slice spacing/thickness {worst:.2f} mm (> {cfg.max_slice_thickness_mm:g} mm)",
            )
        )
    steps = s.slice_steps_mm()
    if steps.size and spacing:
        dev = abs(steps - spacing)
        bad = dev > cfg.spacing_tolerance * abs(spacing) + cfg.spacing_tolerance_mm
        if bad.any():
            gaps = int((steps > 1.5 * spacing).sum())
            what = f"{gaps} gap(s) suggest missing slices; " if gaps else ""
            add(
                QCReason(
                    "inconsistent_spacing",
                    "reject",
                    f"{what}{int(bad.sum())} irregular step(s), range {steps.min():.3f}–{steps.max():.3f} mm",
                )
            )
    if s.duplicates:
        add(
            QCReason(
                "duplicate_slices", "warn", f"{s.duplicates} slice(s) at an already used position removed"
            )
        )
    tilt = max(s.tilt_deg(), s.gantry_tilt_tag_deg)
    if tilt > cfg.max_tilt_deg:
        add(QCReason("gantry_tilt", "warn", f"gantry tilt {tilt:.1f}° (geometry approximated without shear)"))
    if "DERIVED" in s.image_type or "SECONDARY" in s.image_type:
        add(QCReason("derived_images", "warn", "derived/secondary reconstruction"))
    chest = bool(_CHEST.search(s.body_part) or _CHEST.search(s.description))
    if s.body_part and not chest:
        add(QCReason("not_chest", "warn", f"body part {s.body_part[:16]}"))
    return out


def _score(q: SeriesQC, cfg: QCConfig) -> None:
    s = q.series
    notes = q.ranking_notes
    score = 0.0
    if _CHEST.search(s.body_part) or _CHEST.search(s.description):
        score += 2.0
        notes.append("chest")
    spacing = max(s.slice_spacing_mm() or 5.0, s.slice_thickness_mm or 0.0)
    # thinner is better down to ~0.6 mm; below that only cost grows
    score -= 0.8 * math.log2(max(spacing, 0.6))
    notes.append(f"slice spacing {spacing:.2f} mm")
    score += min(s.coverage_mm(), 400.0) / 100.0
    notes.append(f"coverage {s.coverage_mm():.0f} mm")
    soft = bool(_SOFT_KERNEL.search(s.kernel))
    lung = bool(_LUNG_KERNEL.search(s.kernel)) and not soft
    if (cfg.prefer_kernel == "soft" and soft) or (cfg.prefer_kernel == "lung" and lung):
        score += 1.0
        notes.append(f"preferred {cfg.prefer_kernel} kernel")
    if "ORIGINAL" in s.image_type:
        score += 0.5
    score -= 1.0 * len(q.warning_codes)
    q.score = score


def rank_series(study: Study, cfg: QCConfig | None = None, series_uid: str | None = None) -> QCReport:
    """Assess, rank and select a series.

    Raises :class:`~ml.errors.QCError`: ``series_not_found`` for an unknown
    override, the series' own reject code for an unusable override, and when no
    series is usable the shared reject code (e.g. ``not_ct``, ``too_few_slices``)
    or ``no_usable_series`` when reasons differ.
    """
    cfg = cfg or QCConfig()
    assessed = [assess_series(s, cfg) for s in study.series]
    for q in assessed:
        _score(q, cfg)
    usable = sorted((q for q in assessed if q.usable), key=lambda q: (-q.score, q.series.series_uid))
    unusable = [q for q in assessed if not q.usable]
    ranked = usable + unusable
    for i, q in enumerate(usable):
        q.rank = i + 1
    if series_uid is not None:
        chosen = next((q for q in assessed if q.series.series_uid == series_uid), None)
        if chosen is None:
            raise QCError("series_not_found", "the requested series_uid is not in the study")
        if not chosen.usable:
            r = next(r for r in chosen.reasons if r.severity == "reject")
            raise QCError(r.code, f"requested series is unusable: {r.detail}")
        return QCReport(ranked, chosen, True, dict(study.skipped))
    if not usable:
        firsts = {q.reject_codes[0] for q in unusable}
        detail = "; ".join(f"series {i + 1}: {', '.join(q.reject_codes)}" for i, q in enumerate(unusable))
        if len(firsts) == 1:
            code = firsts.pop()
            # a study of several series none of which is CT is 'not_ct'; mixed reasons are generic
            raise QCError(code, f"no usable series ({detail})")
        if all("not_ct" in q.reject_codes or "localizer" in q.reject_codes for q in unusable) and not any(
            q.series.modality == "CT" and "localizer" not in q.reject_codes for q in unusable
        ):
            raise QCError("not_ct", f"no CT series ({detail})")
        raise QCError("no_usable_series", f"no usable series ({detail})")
    return QCReport(ranked, usable[0], False, dict(study.skipped))
