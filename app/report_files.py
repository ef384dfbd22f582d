"""The batch report's files (``service4ct predict``): columns, XLSX/CSV/JSON writing and reading.

A report is rewritten atomically (temp file + rename) after every study, so a crash
never leaves a half-written file; :func:`read_report` reads one back for resuming.
Label cells are highlighted in the XLSX: pathology red, indeterminate amber.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ml.model import ModelEntry

__all__ = [
    "FORMATS",
    "NOT_FOR_CLINICAL_USE",
    "ReportError",
    "model_info",
    "read_report",
    "report_columns",
    "write_report",
]

FORMATS = (".xlsx", ".csv", ".json")
NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE"

_BASE_COLUMNS = ("study_key", "path", "status", "error_code", "error_detail", "probability", "label")
#: whether the model can judge the study: its OOD score and why the label is "indeterminate"
_TRUST_COLUMNS = ("ood_score", "ood_flagged", "indeterminate_reasons")
_LABEL_STYLES = ("pathology", "indeterminate")  # label cells highlighted in the XLSX report
_TAIL_COLUMNS = (
    "selected_series_uid",
    "qc_warnings",
    "read_s",
    "preprocess_s",
    "inference_s",
    "total_s",
    "model_name",
    "model_version",
    "processed_at",
)
_EXPLAIN_COLUMNS = (
    "saliency_peak_x_mm",
    "saliency_peak_y_mm",
    "saliency_peak_z_mm",
    "saliency_peak_value",
    "explain_s",
)


class ReportError(Exception):
    """The existing report cannot be resumed (unreadable, other model, other columns)."""


def report_columns(operating_points: Sequence[str], explain: bool) -> list[str]:
    """Column order of a report: one ``label_<op>`` column per operating point.

    ``label`` and every ``label_<op>`` are ``indeterminate`` when the model cannot judge the
    study; ``indeterminate_reasons`` then lists the codes (comma-separated) and ``ood_score``
    / ``ood_flagged`` give the out-of-distribution check (empty without OOD statistics).
    """
    cols = list(_BASE_COLUMNS) + [f"label_{op}" for op in operating_points]
    cols += list(_TRUST_COLUMNS)
    cols += list(_TAIL_COLUMNS[:2])
    if explain:
        cols += list(_EXPLAIN_COLUMNS[:4])
    cols += list(_TAIL_COLUMNS[2:5])
    if explain:
        cols.append(_EXPLAIN_COLUMNS[4])
    cols += list(_TAIL_COLUMNS[5:])
    return cols


def model_info(entry: ModelEntry) -> dict[str, Any]:
    """The model block of a report (JSON-able)."""
    ops = {
        name: {
            "threshold": op.threshold,
            "sensitivity": op.sensitivity,
            "specificity": op.specificity,
            "sensitivity_ci95": list(op.sensitivity_ci95) if op.sensitivity_ci95 is not None else None,
            "specificity_ci95": list(op.specificity_ci95) if op.specificity_ci95 is not None else None,
        }
        for name, op in entry.operating_points.items()
    }
    return {
        "name": entry.name,
        "version": entry.version,
        "sha256": entry.sha256,
        "arch": entry.spec.arch,
        "input_size": list(entry.input_size),
        "calibration": dict(entry.calibration or {}),
        "default_operating_point": entry.default_operating_point,
        "operating_points": ops,
        "clinical_use": bool(entry.clinical_use),
        "notice": "" if entry.clinical_use else NOT_FOR_CLINICAL_USE,
    }


def report_format(out: Path) -> str:
    """The report format of ``out`` by its suffix (ValueError for anything but .xlsx, .csv, .json)."""
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"report must end in one of {', '.join(FORMATS)}, got {suffix or 'no suffix'!r}")
    return suffix


def read_report(out: Path) -> tuple[list[str], list[dict[str, Any]], dict[str, Any] | None]:
    """(columns, rows, model block or None) of an existing report; ReportError if unreadable."""
    fmt = report_format(out)
    try:
        if fmt == ".csv":
            with out.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                rows = [dict(r) for r in reader]
                return list(reader.fieldnames or []), rows, None
        if fmt == ".json":
            doc = json.loads(out.read_text(encoding="utf-8"))
            rows = list(doc["studies"])
            return list(doc.get("columns") or (rows[0].keys() if rows else [])), rows, doc.get("model")
        from openpyxl import load_workbook  # type: ignore[import-untyped,unused-ignore]

        wb = load_workbook(out, read_only=True)
        ws = wb["studies"]
        it = ws.iter_rows(values_only=True)
        header = [str(c) for c in next(it, ()) if c is not None]
        rows = [dict(zip(header, r, strict=False)) for r in it if any(v is not None for v in r)]
        wb.close()
        return header, rows, None
    except (OSError, ValueError, KeyError, TypeError, StopIteration) as e:
        raise ReportError(f"cannot read the existing report {out}: {type(e).__name__}") from e


@contextlib.contextmanager
def _atomic(out: Path) -> Iterator[Path]:
    """A temp file beside ``out``, renamed over it when the block succeeds."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, out)
    finally:
        tmp_path.unlink(missing_ok=True)


def _csv_value(v: Any) -> Any:
    return "" if v is None else v


def write_report(
    out: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]], model: dict[str, Any]
) -> None:
    """Write the report atomically in the format given by ``out``'s suffix."""
    fmt = report_format(out)
    with _atomic(out) as tmp:
        if fmt == ".csv":
            with tmp.open("w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
                w.writeheader()
                for r in rows:
                    w.writerow({c: _csv_value(r.get(c)) for c in columns})
        elif fmt == ".json":
            doc = {
                "model": model,
                "columns": list(columns),
                "studies": [{c: r.get(c) for c in columns} for r in rows],
            }
            tmp.write_text(json.dumps(doc, indent=2), encoding="utf-8")
        else:
            _write_xlsx(tmp, columns, rows, model)


def _write_xlsx(
    path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]], model: dict[str, Any]
) -> None:
    from openpyxl import Workbook  # type: ignore[import-untyped,unused-ignore]
    from openpyxl.styles import Alignment, Font, PatternFill  # type: ignore[import-untyped,unused-ignore]
    from openpyxl.utils import get_column_letter  # type: ignore[import-untyped,unused-ignore]

    red = PatternFill(start_color="FFC7CE", end_color="FFC7CE", fill_type="solid")
    styles = {
        "pathology": (red, Font(color="9C0006")),
        "indeterminate": (
            PatternFill(start_color="FFEB9C", end_color="FFEB9C", fill_type="solid"),
            Font(color="9C5700"),
        ),
    }
    bold = Font(bold=True)
    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = "studies"
    ws.append(list(columns))
    for cell in ws[1]:
        cell.font = bold
        cell.alignment = Alignment(vertical="center")
    ws.freeze_panes = "A2"
    col_idx = {c: i + 1 for i, c in enumerate(columns)}
    for r in rows:
        ws.append([r.get(c) for c in columns])
        row_no = ws.max_row
        if r.get("status") == "error":
            for i in range(1, len(columns) + 1):
                ws.cell(row=row_no, column=i).fill = red
            continue
        for c in columns:
            if (c == "label" or c.startswith("label_")) and r.get(c) in _LABEL_STYLES:
                cell = ws.cell(row=row_no, column=col_idx[c])
                cell.fill, cell.font = styles[str(r.get(c))]
    if "probability" in col_idx:
        letter = get_column_letter(col_idx["probability"])
        for cell in ws[letter][1:]:
            cell.number_format = "0.0%"
    for c in columns:
        if c.endswith("_s"):
            for cell in ws[get_column_letter(col_idx[c])][1:]:
                cell.number_format = "0.000"
        elif c.endswith("_mm"):
            for cell in ws[get_column_letter(col_idx[c])][1:]:
                cell.number_format = "0.0"
    widths = {"study_key": 18, "path": 40, "error_detail": 48, "selected_series_uid": 40, "processed_at": 26}
    for c, i in col_idx.items():
        ws.column_dimensions[get_column_letter(i)].width = widths.get(c, max(10, min(28, len(c) + 2)))
    if rows:
        ws.auto_filter.ref = f"A1:{get_column_letter(len(columns))}{ws.max_row}"

    ms = wb.create_sheet("model")
    if model.get("notice"):
        ms.append([model["notice"]])
        ms["A1"].font = Font(bold=True, color="C00000", size=14)
        ms.append([])
    for key in ("name", "version", "sha256", "arch", "input_size", "default_operating_point", "clinical_use"):
        v = model.get(key)
        ms.append([key, json.dumps(v) if isinstance(v, list | dict) else v])
        ms.cell(row=ms.max_row, column=1).font = bold
    ms.append(["calibration", json.dumps(model.get("calibration", {}))])
    ms.cell(row=ms.max_row, column=1).font = bold
    ms.append([])
    ms.append(
        ["operating point", "threshold", "sensitivity", "sensitivity CI95", "specificity", "specificity CI95"]
    )
    for cell in ms[ms.max_row]:
        cell.font = bold
    for name, op in model.get("operating_points", {}).items():

        def ci(v: Any) -> str:
            return "" if not v else f"{v[0]:.3f}–{v[1]:.3f}"

        ms.append(
            [
                name,
                op["threshold"],
                op["sensitivity"],
                ci(op["sensitivity_ci95"]),
                op["specificity"],
                ci(op["specificity_ci95"]),
            ]
        )
    for letter, width in zip("ABCDEF", (26, 70, 14, 18, 14, 18), strict=True):
        ms.column_dimensions[letter].width = width
    wb.save(path)
