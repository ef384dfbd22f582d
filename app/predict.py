"""``service4ct predict``: batch triage of study ZIPs into an Excel/CSV/JSON report.

The operator passes ZIP files and/or directories (searched recursively for
``*.zip``); each study becomes one row. The model is loaded once. One bad study
never stops the batch: an :class:`~ml.errors.InputError` gives a row with its
code, anything unexpected a row with ``internal_error``.

Resumable: the report (:mod:`app.report_files`) is rewritten atomically after every
study, and studies already in an existing report are skipped. Studies are keyed
by the sha256 of the ZIP's bytes (``study_key`` = its first 16 hex digits), not
by file name, so renamed or moved files are still recognised.

Identifiers: file names can embed patient IDs, so logs and the progress bar only
ever show ``study_key``; the ``path`` column of the report repeats the path as
the operator gave it (the report goes to that operator). Error details are the
stable codes' texts, never archive member names.

torch is not imported at module level (only the worker may import torch at
import time); :mod:`ml.inference` is imported inside :func:`run_batch`.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from app.config import DEFAULT_MANIFEST
from app.logs import logger, scrubber, setup_logging
from app.report_files import (
    FORMATS,
    ReportError,
    model_info,
    read_report,
    report_columns,
    report_format,
    write_report,
)
from ml.errors import InputError, ModelUnavailable
from ml.io import sha256_file

if TYPE_CHECKING:
    from ml.inference import Predictor

__all__ = ["BatchSummary", "collect_studies", "predict_command", "run_batch"]

DEVICES = ("auto", "cpu", "cuda")
KEY_LEN = 16

# --------------------------------------------------------------------------- inputs


def collect_studies(paths: Iterable[Path]) -> list[Path]:
    """ZIP files given directly plus ``*.zip`` under given directories (recursive, sorted).

    Paths keep the form the operator gave (not resolved); the same file reached
    twice is listed once. A missing path raises FileNotFoundError.
    """
    out: list[Path] = []
    seen: set[Path] = set()
    for p in paths:
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() == ".zip")
        elif p.is_file():
            found = [p]
        else:
            raise FileNotFoundError(str(p))
        for q in found:
            r = q.resolve()
            if r not in seen:
                seen.add(r)
                out.append(q)
    return out


# --------------------------------------------------------------------------- one study


def _error_row(code: str, detail: str) -> dict[str, Any]:
    return {"status": "error", "error_code": code, "error_detail": detail}


def process_study(predictor: Predictor, path: Path, explain: bool) -> dict[str, Any]:
    """Row fields of one study (everything but study_key/path/model/processed_at)."""
    from ml.io import read_study

    read = read_study(path, preprocess=predictor.preprocess_config, on_phi_tokens=scrubber.register)
    result = read.preprocessed
    assert result is not None
    row: dict[str, Any] = {
        "selected_series_uid": read.series.series_uid,
        "qc_warnings": ",".join(read.qc.selected.warning_codes),
    }
    t2 = time.perf_counter()
    pred = predictor.predict(result.tensor, [result.geometry.model_voxel_mm()])[0]
    t3 = time.perf_counter()
    row.update(
        status="ok",
        error_code=None,
        error_detail=None,
        probability=pred.probability,
        label=pred.label,
        ood_score=None if pred.ood is None else pred.ood.score,
        ood_flagged=None if pred.ood is None else pred.ood.flagged,
        indeterminate_reasons=",".join(pred.indeterminate_reasons),
    )
    for op, decision in pred.decisions.items():
        row[f"label_{op}"] = pred.label if pred.indeterminate else "pathology" if decision else "normal"
    read_s = sum(s for stage, s in read.timings.items() if stage != "preprocessing")
    row.update(read_s=read_s, preprocess_s=read.timings["preprocessing"], inference_s=t3 - t2)
    if explain:
        from ml.explain.methods import gradcam_peak

        peak, value = gradcam_peak(predictor, result.tensor)
        lps = result.geometry.model_to_lps([peak])[0]
        row.update(
            saliency_peak_x_mm=float(lps[0]),
            saliency_peak_y_mm=float(lps[1]),
            saliency_peak_z_mm=float(lps[2]),
            saliency_peak_value=value,
            explain_s=time.perf_counter() - t3,
        )
    return row


# --------------------------------------------------------------------------- the batch


@dataclass
class BatchSummary:
    """Counts of a batch run."""

    out: Path
    total: int = 0
    ok: int = 0
    errors: int = 0
    skipped: int = 0
    duplicates: int = 0
    error_codes: dict[str, int] = field(default_factory=dict)
    model_loaded: bool = False

    def line(self) -> str:
        codes = ", ".join(f"{k}={v}" for k, v in sorted(self.error_codes.items()))
        return (
            f"{self.out}: {self.ok} ok, {self.errors} error{' (' + codes + ')' if codes else ''}, "
            f"{self.skipped} already in the report, {self.duplicates} duplicate(s)"
        )


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _round(row: dict[str, Any]) -> dict[str, Any]:
    for k, v in row.items():
        if isinstance(v, float):
            row[k] = round(
                v, 6 if k in ("probability", "saliency_peak_value") else 4 if k.endswith("_s") else 2
            )
    return row


def run_batch(
    paths: Sequence[Path],
    out: Path,
    *,
    model: str | None = None,
    manifest: Path | None = None,
    explain: bool = False,
    device: str = "auto",
    retry_errors: bool = False,
    progress: bool = True,
    predictor_factory: Callable[[], Predictor] | None = None,
) -> BatchSummary:
    """Predict every study under ``paths`` into the report ``out`` (.xlsx, .csv or .json).

    Args:
        paths: ZIP files and/or directories (searched recursively for ``*.zip``).
        out: report path; its suffix picks the format. If it exists the batch
            resumes: studies whose ``study_key`` is already in it are skipped
            (``retry_errors`` re-runs rows with status ``error``).
        model: manifest model name (default: the manifest's default).
        manifest: weights manifest (default: the repository's ``weights/manifest.json``).
        explain: add the Grad-CAM peak (LPS mm) of each study, taken inside the patient's body.
        device: ``auto``, ``cpu`` or ``cuda``.
        progress: show a tqdm progress bar on stderr.
        predictor_factory: builds the predictor instead of loading it from the
            manifest (tests, embedding); called at most once.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: unknown report suffix or device.
        ReportError: the existing report cannot be resumed.
        ModelUnavailable: the model cannot be loaded.
    """
    from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

    from ml.model import Manifest

    report_format(out)
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    manifest_path = manifest or DEFAULT_MANIFEST
    predictor: Predictor | None = None
    if predictor_factory is not None:
        predictor = predictor_factory()
        entry = predictor.entry
    else:
        if not manifest_path.is_file():
            raise ModelUnavailable(f"weights manifest not found: {manifest_path}")
        try:
            loaded = Manifest.load(manifest_path)
        except (OSError, ValueError) as e:
            raise ModelUnavailable(f"cannot read the weights manifest: {e}") from e
        entry = loaded.get(model)
    info = model_info(entry)
    columns = report_columns(list(entry.operating_points), explain)

    rows: list[dict[str, Any]] = []
    if out.exists():
        old_cols, rows, old_model = read_report(out)
        names = {(str(r.get("model_name")), str(r.get("model_version"))) for r in rows}
        if rows and names != {(entry.name, str(entry.version))}:
            raise ReportError(
                f"{out} holds results of another model ({sorted(names)}); write to a new report instead"
            )
        if old_model is not None and old_model.get("sha256") not in (None, entry.sha256):
            raise ReportError(f"{out} was written with other weights (sha256 differs); use a new report")
        if rows and set(old_cols) != set(columns):
            raise ReportError(
                f"{out} has other columns (was --explain {'on' if 'explain_s' in old_cols else 'off'}?); "
                "use the same options or a new report"
            )
        if retry_errors:
            rows = [r for r in rows if r.get("status") != "error"]
    done = {str(r.get("study_key")) for r in rows}

    studies = collect_studies(paths)
    summary = BatchSummary(out=out, total=len(studies))
    pending: list[tuple[Path, str]] = []
    for p in studies:
        key = sha256_file(p)[:KEY_LEN]
        if key in done:
            summary.skipped += 1
            continue
        if any(key == k for _, k in pending):
            summary.duplicates += 1
            continue
        pending.append((p, key))
    logger.info(
        "predict: {} studies, {} to do, {} already in the report", len(studies), len(pending), summary.skipped
    )
    if not pending:
        return summary

    if predictor is None:
        from ml.inference import Predictor

        predictor = Predictor.from_manifest(manifest_path, model, device=device)
    summary.model_loaded = True
    logger.info("model {} {} on {}", entry.name, entry.version, predictor.device)

    bar = tqdm(pending, total=len(pending), unit="study", disable=not progress, dynamic_ncols=True)
    for path, key in bar:
        bar.set_postfix_str(key)
        t0 = time.perf_counter()
        try:
            row = process_study(predictor, path, explain)
        except InputError as e:
            row = _error_row(e.code, e.detail)
            logger.info("study {}: {}", key, e.code)
        except ModelUnavailable as e:
            row = _error_row(e.code, e.detail)
            logger.warning("study {}: {}", key, e.code)
        except MemoryError:
            row = _error_row("internal_error", "out of memory while processing the study")
            logger.error("study {}: internal_error (MemoryError)", key)
        except Exception as e:  # one bad study never stops the batch
            row = _error_row("internal_error", f"unexpected {type(e).__name__} while processing the study")
            logger.error("study {}: internal_error ({})", key, type(e).__name__)
        row.update(
            study_key=key,
            path=str(path),
            total_s=time.perf_counter() - t0,
            model_name=entry.name,
            model_version=str(entry.version),
            processed_at=_now(),
        )
        rows.append(_round(row))
        if row["status"] == "ok":
            summary.ok += 1
        else:
            summary.errors += 1
            summary.error_codes[row["error_code"]] = summary.error_codes.get(row["error_code"], 0) + 1
        write_report(out, columns, rows, info)
    bar.close()
    return summary


# --------------------------------------------------------------------------- CLI


def predict_command(
    paths: Annotated[
        list[Path],
        typer.Argument(help="Study ZIPs and/or directories (searched recursively for *.zip).", exists=True),
    ],
    out: Annotated[
        Path, typer.Option("-o", "--out", help="Report file: .xlsx, .csv or .json (resumed if it exists).")
    ],
    model: Annotated[str | None, typer.Option("--model", help="Model name in the manifest.")] = None,
    manifest: Annotated[
        Path | None, typer.Option("--manifest", help="Weights manifest (default: weights/manifest.json).")
    ] = None,
    explain: Annotated[
        bool, typer.Option("--explain", help="Add the Grad-CAM peak inside the body (LPS mm).")
    ] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    retry_errors: Annotated[
        bool, typer.Option("--retry-errors", help="Re-run studies whose row in the report is an error.")
    ] = False,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Progress bar on stderr.")
    ] = True,
    log_level: Annotated[str, typer.Option("--log-level", help="Log level (logs go to stderr).")] = "WARNING",
) -> None:
    """Predict a batch of study ZIPs into an Excel/CSV/JSON report (resumable)."""
    setup_logging(log_level)
    if out.suffix.lower() not in FORMATS:
        raise typer.BadParameter(f"must end in one of {', '.join(FORMATS)}", param_hint="--out")
    if device not in DEVICES:
        raise typer.BadParameter(f"must be one of {', '.join(DEVICES)}", param_hint="--device")
    try:
        summary = run_batch(
            paths,
            out,
            model=model,
            manifest=manifest,
            explain=explain,
            device=device,
            retry_errors=retry_errors,
            progress=progress,
        )
    except ModelUnavailable as e:
        typer.echo(f"error: {e.code}: {e.detail}", err=True)
        raise typer.Exit(2) from e
    except (ReportError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    typer.echo(summary.line())
