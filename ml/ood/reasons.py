"""Stable codes of why a prediction is ``indeterminate`` (NumPy- and torch-free: the API documents them)."""

from __future__ import annotations

from typing import Final

__all__ = ["INDETERMINATE_REASONS", "REASON_OUT_OF_DISTRIBUTION"]

REASON_OUT_OF_DISTRIBUTION: Final = "out_of_distribution"

INDETERMINATE_REASONS: Final[dict[str, str]] = {
    REASON_OUT_OF_DISTRIBUTION: "the study is unlike the data the model's OOD statistics were fitted on "
    "(its OOD score exceeds the model's threshold)",
    "implausible_hu": "no air anywhere in the volume: the pixel values are probably not Hounsfield units "
    "(missing or wrong RescaleSlope/RescaleIntercept)",
    "no_lungs_found": "no lungs found: the study does not look like a chest CT",
    "incomplete_chest_coverage": "the lungs are only partly covered by the scan",
}
"""Reason code → what it means; a reason is listed in ``indeterminate_reasons``, most fundamental first."""
