"""Offline commands on one study ZIP: ``inspect`` (series, QC, ranking) and ``preprocess``.

They print identifiers of studies and series only (UIDs, counts, geometry), never patient
identifiers or archive member names.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from app.cli.common import JsonOpt, LogOpt, SeriesOpt, fail
from app.config import DEFAULT_MANIFEST
from app.logs import logger, scrubber, setup_logging
from ml.errors import InputError, ModelUnavailable

if TYPE_CHECKING:
    from ml.io import StudyRead
    from ml.preprocess import PreprocessConfig

__all__ = ["inspect", "preprocess"]

StudyArg = Annotated[Path, typer.Argument(help="DICOM study as a ZIP archive.", exists=True, dir_okay=False)]


def _series_table(report: dict[str, Any]) -> str:
    lines = [
        f"{'rank':>4}  {'slices':>6}  {'rows×cols':>9}  {'spacing mm (x,y,z)':>20}  "
        f"{'cover mm':>8}  {'kernel':<8} {'orient':<8} verdict"
    ]
    for s in report["series"]:
        sm = s["summary"]
        ps = sm["pixel_spacing_mm"]
        z = sm["slice_spacing_mm"]
        spacing = f"{ps[1]:.2f},{ps[0]:.2f},{z if z is not None else float('nan'):.2f}" if ps else "-"
        verdict = "usable" if s["usable"] else "rejected"
        codes = ", ".join(r["code"] for r in s["reasons"])
        lines.append(
            f"{s['rank'] or '-':>4}  {sm['slices']:>6}  {sm['rows']:>4}×{sm['columns']:<4}  {spacing:>20}  "
            f"{sm['coverage_mm']:>8.1f}  {sm['kernel'][:8]:<8} {sm['orientation']:<8} "
            f"{verdict}{' (' + codes + ')' if codes else ''}"
        )
        lines.append(
            f"      series {s['series_uid']}  modality {sm['modality']}  "
            f"multiframe {sm['multiframe']}  transfer syntax {','.join(sm['transfer_syntaxes'])}"
        )
    return "\n".join(lines)


def _read(study: Path, series_uid: str | None, as_json: bool, **options: Any) -> StudyRead:
    """:func:`ml.io.read_study` with the log scrubber fed; an input error exits with code 2."""
    from ml.io import read_study

    try:
        return read_study(study, series_uid=series_uid, on_phi_tokens=scrubber.register, **options)
    except InputError as e:
        fail(e, as_json)


def inspect(
    study: StudyArg,
    as_json: JsonOpt = False,
    series_uid: SeriesOpt = None,
    log_level: LogOpt = "WARNING",
) -> None:
    """Discover the series of a study ZIP, run QC and print the ranking."""
    setup_logging(log_level)
    t0 = time.perf_counter()
    read = _read(study, series_uid, as_json, decode=False)
    logger.info("inspected study: {} series, {} files", len(read.study.series), read.study.files)
    report = read.qc.to_dict()
    report["elapsed_s"] = round(time.perf_counter() - t0, 3)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(_series_table(report))
    typer.echo(f"selected: {report['selected_series_uid']} ({report['selected_by']})")
    for w in report["warnings"]:
        typer.echo(f"warning: {w['code']}: {w['detail']}")
    if report["skipped_files"]:
        typer.echo("skipped files: " + ", ".join(f"{k}={v}" for k, v in report["skipped_files"].items()))


def _model_preprocess_config(manifest: Path, model: str | None) -> PreprocessConfig:
    """The preprocessing that the manifest's ``model`` (None: its default) was trained with."""
    from ml.model import Manifest

    try:
        return Manifest.load(manifest).get(model).preprocess
    except (OSError, ValueError) as e:
        raise ModelUnavailable(f"cannot read the weights manifest: {e}") from e


def preprocess(
    study: StudyArg,
    out: Annotated[
        Path, typer.Option("-o", "--out", help="Output tensor file (.pt); metadata goes beside it.")
    ],
    size: Annotated[
        int | None,
        typer.Option(help="Cubic model input size in voxels (default: the model's input size)."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Manifest entry whose preprocessing is used (default: the manifest's default)."),
    ] = None,
    manifest: Annotated[
        Path | None, typer.Option(help="Weights manifest (default: weights/manifest.json).")
    ] = None,
    series_uid: SeriesOpt = None,
    as_json: JsonOpt = False,
    log_level: LogOpt = "WARNING",
) -> None:
    """Run the seed preprocessing on the selected series; write the tensor and a metadata JSON.

    The preprocessing (input size, spacing, HU window, crop) is by default the one the
    manifest's default model was trained with, so the tensor is what `predict` and the
    service feed that model; --model picks another manifest entry, --size overrides the
    input size.
    """
    setup_logging(log_level)
    try:
        cfg = _model_preprocess_config(manifest or DEFAULT_MANIFEST, model)
    except ModelUnavailable as e:
        fail(e, as_json)
    if size is not None:
        cfg = dataclasses.replace(cfg, target_size=(size, size, size))
    t0 = time.perf_counter()
    read = _read(study, series_uid, as_json, preprocess=cfg)
    result = read.preprocessed
    assert result is not None
    out.parent.mkdir(parents=True, exist_ok=True)
    result.save(out)
    meta = {
        "series_uid": read.series.series_uid,
        "source_geometry": result.geometry.source.to_dict(),
        "preprocess_config": cfg.to_dict(),
        "geometry": result.geometry.to_dict(),
        "crop_box_zyx": result.crop_box.to_dict(),
        "tensor_shape": list(result.tensor.shape),
        "qc_warnings": [r.to_dict() for r in read.qc.selected.reasons if r.severity == "warn"],
        "timings_s": {
            "extract_and_scan": round(read.timings["reading"], 4),
            "qc_and_decode": round(read.timings["qc"] + read.timings["decoding"], 4),
            **{k: round(v, 4) for k, v in result.timings_s.items()},
            "total": round(time.perf_counter() - t0, 4),
        },
    }
    meta_path = out.with_suffix(".json")
    meta_path.write_text(json.dumps(meta, indent=2))
    if as_json:
        typer.echo(json.dumps(meta, indent=2))
    else:
        typer.echo(f"wrote {out} {tuple(result.tensor.shape)} and {meta_path}")
        typer.echo(f"series {read.series.series_uid}; timings: {meta['timings_s']}")
