"""Reading studies: safe ZIP extraction, DICOM series discovery and decoding, QC and ranking.

- :mod:`ml.io.zipsafe`: vetting and extraction of hostile archives (:class:`ZipLimits`,
  :func:`precheck_zip`, :func:`safe_extract`).
- :mod:`ml.io.members`: the same vetting, members inflated into memory (:func:`read_members`,
  :class:`MemberStore`).
- :mod:`ml.io.headers`: guarded access to hostile DICOM headers, SOP classes, PHI tokens.
- :mod:`ml.io.series`: what discovery finds (:class:`SliceRef`, :class:`SeriesInfo`, :class:`Study`).
- :mod:`ml.io.discovery`: series discovery from headers only (:func:`discover_series`).
- :mod:`ml.io.decode`: pixel decoding into a :class:`~ml.geometry.CTVolume` (:func:`load_volume`).
- :mod:`ml.io.qc`: QC reason codes, series assessment and ranking (:func:`rank_series`).
- :mod:`ml.io.reading`: :func:`open_study`: a study's archive read safely, its series discovered.
- :mod:`ml.io.study`: :func:`read_study`, the one study reader.
- :mod:`ml.io.files`: file hashing.

Nothing here imports torch (preprocessing, when :func:`read_study` is asked for it, does).
The names below load from their submodule on first use, so that ``from ml.io import
sha256_file`` (or ``ZipLimits``) loads neither pydicom nor numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ml.io.decode import load_volume
    from ml.io.discovery import discover_series
    from ml.io.files import sha256_file
    from ml.io.headers import (
        CT_IMAGE_STORAGE,
        CT_SOP_CLASSES,
        ENHANCED_CT_IMAGE_STORAGE,
        LEGACY_ENHANCED_CT_IMAGE_STORAGE,
        PHI_KEYWORDS,
        read_header,
    )
    from ml.io.members import MemberStore, read_members
    from ml.io.qc import (
        QC_CODES,
        QCConfig,
        QCReason,
        QCReport,
        SeriesQC,
        Severity,
        assess_series,
        rank_series,
    )
    from ml.io.reading import open_study
    from ml.io.series import SeriesInfo, SliceRef, Study
    from ml.io.study import STAGES, StudyRead, read_study
    from ml.io.zipsafe import ExtractReport, ZipLimits, ZipSummary, precheck_zip, safe_extract

__all__ = [
    "CT_IMAGE_STORAGE",
    "CT_SOP_CLASSES",
    "ENHANCED_CT_IMAGE_STORAGE",
    "LEGACY_ENHANCED_CT_IMAGE_STORAGE",
    "PHI_KEYWORDS",
    "QC_CODES",
    "STAGES",
    "ExtractReport",
    "MemberStore",
    "QCConfig",
    "QCReason",
    "QCReport",
    "SeriesInfo",
    "SeriesQC",
    "Severity",
    "SliceRef",
    "Study",
    "StudyRead",
    "ZipLimits",
    "ZipSummary",
    "assess_series",
    "discover_series",
    "load_volume",
    "open_study",
    "precheck_zip",
    "rank_series",
    "read_header",
    "read_members",
    "read_study",
    "safe_extract",
    "sha256_file",
]

#: submodules in the order a name is looked up in: the light ones first
_SUBMODULES = (
    "files",
    "zipsafe",
    "members",
    "headers",
    "series",
    "qc",
    "discovery",
    "reading",
    "decode",
    "study",
)


def __getattr__(name: str) -> Any:
    """Load a public name from the submodule that defines it (PEP 562)."""
    if name in __all__:
        for sub in _SUBMODULES:
            module = importlib.import_module(f"{__name__}.{sub}")
            if hasattr(module, name):
                value = getattr(module, name)
                globals()[name] = value
                return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
