"""The series picker: every series of a study with its ranking, usability and QC reasons.

Read from DICOM headers only (``stop_before_pixels``, architecture rule 6): the archive is
vetted and read like the worker does (``ml.io.reading.open_study``), series are discovered from
their headers (``ml.io.discovery``) and assessed and ranked by the same QC as a prediction
(``ml.io.qc``); no pixel is decoded and torch is never imported. The API runs it once per
study, on the first ``GET /v1/studies/{id}/series``, and keeps the answer in
``studies.series``. Free-text header values that carry a registered identifier are
withheld; file names never leave the scan.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ml.errors import InputError, QCError
from ml.io.qc import SeriesQC, assess_series, rank_series
from ml.io.reading import open_study
from ml.io.series import Study

__all__ = ["scan_series"]

_WITHHELD = "[withheld]"
#: the API process reads archives up to this size in memory (two scans may run at once); larger
#: ones are extracted to the scan's temporary directory
_SCAN_IN_MEMORY_MAX_BYTES = 512 << 20


def _text(value: str, phi: frozenset[str]) -> str:
    """A free-text header value, unless an identifier of the study appears in it."""
    upper = value.upper()
    return _WITHHELD if any(t and t.upper() in upper for t in phi) else value


def _entry(q: SeriesQC, selected: str | None, phi: frozenset[str]) -> dict[str, Any]:
    s = q.series
    summary = s.summary()
    return {
        "series_uid": s.series_uid,
        "rank": q.rank,
        "usable": q.usable,
        "selected": s.series_uid == selected,
        "score": round(q.score, 3),
        "reasons": [r.to_dict() for r in q.reasons],
        "ranking_notes": list(q.ranking_notes),
        "modality": s.modality,
        "description": _text(s.description, phi),
        "kernel": _text(s.kernel, phi),
        "body_part": _text(s.body_part, phi),
        "image_type": list(s.image_type),
        "slices": summary["slices"],
        "rows": summary["rows"],
        "columns": summary["columns"],
        "pixel_spacing_mm": summary["pixel_spacing_mm"],
        "slice_thickness_mm": summary["slice_thickness_mm"],
        "slice_spacing_mm": summary["slice_spacing_mm"],
        "coverage_mm": summary["coverage_mm"],
        "orientation": summary["orientation"],
        "multiframe": summary["multiframe"],
    }


def _ranked(study: Study) -> dict[str, Any]:
    try:
        report = rank_series(study)
    except QCError as e:  # nothing usable: every series with its reasons, none selected
        assessed = [assess_series(s) for s in study.series]
        return {
            "selected_uid": None,
            "error": {"code": e.code, "detail": e.detail},
            "series": [_entry(q, None, study.phi_tokens) for q in assessed],
        }
    selected = report.selected.series.series_uid
    return {
        "selected_uid": selected,
        "error": None,
        "series": [_entry(q, selected, study.phi_tokens) for q in report.series],
    }


def scan_series(fetch: Callable[[Path], object], workdir: Path | None = None) -> dict[str, Any]:
    """The series picker's body (without ``study_id``) of the archive ``fetch(path)`` writes.

    A study that cannot be read at all answers ``{"error": {code, detail}}`` only (its code
    is an input refusal: ``zip_invalid``, ``no_dicom``, ...); one that has no usable series
    lists them with ``error`` set and ``selected_uid`` null.
    """
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="s4ct-scan-", dir=workdir))
    try:
        archive = tmp / "study.zip"
        fetch(archive)
        try:
            with open_study(archive, workdir=tmp, in_memory_max_bytes=_SCAN_IN_MEMORY_MAX_BYTES) as study:
                return _ranked(study)
        except InputError as e:
            return {"error": {"code": e.code, "detail": e.detail}}
        except RecursionError:  # pydicom on a hostile header (rule 6)
            return {"error": {"code": "dicom_invalid", "detail": "a DICOM header could not be parsed"}}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
