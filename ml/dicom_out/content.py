"""The finding the result objects carry, and the codes they carry it with.

Standard codes where DICOM has them (DCM ``Finding``, LOINC ``CT Chest``, UCUM ``no
units``); the triage values themselves are in the private coding scheme ``99S4CT``
(Service4CT), whose meanings are spelled out in every code item.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

P = ParamSpec("P")
R = TypeVar("R")

__all__ = [
    "FINDING",
    "INDETERMINATE_REASON",
    "INTENDED_USE",
    "LABEL_CODES",
    "OPERATING_POINT",
    "PROBABILITY",
    "PROCEDURE",
    "SCHEME",
    "THRESHOLD",
    "UNITLESS",
    "Finding",
    "no_value_warnings",
    "quiet",
    "reason_code",
    "scheme_identification",
    "use_code",
]

SCHEME = "99S4CT"

PROCEDURE = Code("24627-2", "LN", "CT Chest")
FINDING = Code("121071", "DCM", "Finding")
UNITLESS = Code("1", "UCUM", "no units")
PROBABILITY = Code("S4CT-PROB", SCHEME, "Calibrated probability of pathology")
THRESHOLD = Code("S4CT-THRESHOLD", SCHEME, "Decision threshold of the operating point")
OPERATING_POINT = Code("S4CT-OPPOINT", SCHEME, "Operating point")
INTENDED_USE = Code("S4CT-USE", SCHEME, "Intended use of the result")
INDETERMINATE_REASON = Code("S4CT-INDET", SCHEME, "Reason the result is indeterminate")

LABEL_CODES: dict[str, Code] = {
    "pathology": Code("S4CT-PATHOLOGY", SCHEME, "Pathology suspected (chest CT triage)"),
    "normal": Code("S4CT-NORMAL", SCHEME, "No pathology suspected (chest CT triage)"),
    "indeterminate": Code("S4CT-INDETERM", SCHEME, "Indeterminate: the model cannot judge this study"),
}

_REASONS = {
    "out_of_distribution": ("S4CT-OOD", "Out of the model's distribution"),
    "implausible_hu": ("S4CT-HU", "Implausible Hounsfield units"),
    "no_lungs_found": ("S4CT-NOLUNGS", "No lungs found"),
    "incomplete_chest_coverage": ("S4CT-COVERAGE", "Incomplete chest coverage"),
}


@contextlib.contextmanager
def no_value_warnings() -> Iterator[None]:
    """Silence highdicom's and pydicom's warnings while building an object: they quote values
    (e.g. "The string <patient name> is unlikely to represent …"), which are identifiers."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"highdicom(\.|$)")
        warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
        yield


def quiet(build: Callable[P, R]) -> Callable[P, R]:
    """``build`` run under :func:`no_value_warnings`."""

    @functools.wraps(build)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with no_value_warnings():
            return build(*args, **kwargs)

    return wrapper


def scheme_identification() -> Dataset:
    """An item of the Coding Scheme Identification Sequence declaring the private scheme."""
    item = Dataset()
    item.CodingSchemeDesignator = SCHEME
    item.CodingSchemeName = "Service4CT chest CT triage"
    item.CodingSchemeResponsibleOrganization = "Service4CT"
    return item


def reason_code(reason: str) -> Code:
    """The code of an indeterminate reason (an unknown reason keeps its name as meaning)."""
    value, meaning = _REASONS.get(reason, ("S4CT-OTHER", reason[:64] or "other"))
    return Code(value, SCHEME, meaning)


def use_code(clinical_use: bool) -> Code:
    """Intended use: cleared for clinical use, or not for clinical use (research and demonstration)."""
    if clinical_use:
        return Code("S4CT-CLINICAL", SCHEME, "For clinical use as cleared by the operator")
    return Code("S4CT-NOTCLIN", SCHEME, "Not for clinical use")


@dataclass(frozen=True)
class Finding:
    """A job's result as the DICOM and FHIR objects report it.

    Attributes:
        probability: calibrated probability of pathology (0–1).
        label: ``pathology``, ``normal`` or ``indeterminate``.
        operating_point: the name of the model's default operating point; ``threshold`` its threshold.
        model_name, model_version, model_sha256: the weights that produced it.
        clinical_use: False adds the "not for clinical use" flag (in the SR and in the banner).
        indeterminate_reasons: stable codes, most fundamental first (empty unless indeterminate).
        peak_slice: index (z) in the source series of the slice through the saliency peak, if any.
    """

    probability: float
    label: str
    operating_point: str
    threshold: float
    model_name: str
    model_version: str
    model_sha256: str
    clinical_use: bool
    indeterminate_reasons: tuple[str, ...] = field(default_factory=tuple)
    peak_slice: int | None = None

    def __post_init__(self) -> None:
        if self.label not in LABEL_CODES:
            raise ValueError(f"label must be one of {sorted(LABEL_CODES)}, got {self.label!r}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must be in [0, 1], got {self.probability}")

    def banner(self) -> str:
        """One line for burned-in annotations (no patient data)."""
        label = self.label.upper()
        use = "" if self.clinical_use else "NOT FOR CLINICAL USE | "
        return f"{use}AI triage: {label} p={self.probability:.3f} | {self.model_name} {self.model_version}"
