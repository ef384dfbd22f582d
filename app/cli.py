"""The ``service4ct`` command.

Commands print identifiers of studies and series only (UIDs, counts, geometry),
never patient identifiers or archive member names.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from app.logs import logger, scrubber, setup_logging
from app.predict import predict_command
from ml.errors import InputError, ModelUnavailable

DEFAULT_MANIFEST = Path(__file__).resolve().parents[1] / "weights" / "manifest.json"

cli = typer.Typer(add_completion=False, no_args_is_help=True, help="Service4CT chest-CT triage service.")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
SeriesOpt = Annotated[
    str | None, typer.Option("--series-uid", help="Use this series instead of the best ranked.")
]
LogOpt = Annotated[str, typer.Option("--log-level", help="Log level (logs go to stderr).")]


def _fail(err: InputError | ModelUnavailable, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(err.to_dict()))
    else:
        typer.echo(f"error: {err.code}: {err.detail}", err=True)
    raise typer.Exit(2)


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


@cli.command()
def inspect(
    study: Annotated[Path, typer.Argument(help="DICOM study as a ZIP archive.", exists=True, dir_okay=False)],
    as_json: JsonOpt = False,
    series_uid: SeriesOpt = None,
    log_level: LogOpt = "WARNING",
) -> None:
    """Discover the series of a study ZIP, run QC and print the ranking."""
    from ml.io import open_study, rank_series

    setup_logging(log_level)
    t0 = time.perf_counter()
    try:
        with open_study(study) as st:
            scrubber.register(st.phi_tokens)
            logger.info("inspected study: {} series, {} files", len(st.series), st.files)
            report = rank_series(st, series_uid=series_uid).to_dict()
    except InputError as e:
        _fail(e, as_json)
        return
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


@cli.command()
def preprocess(
    study: Annotated[Path, typer.Argument(help="DICOM study as a ZIP archive.", exists=True, dir_okay=False)],
    out: Annotated[
        Path, typer.Option("-o", "--out", help="Output tensor file (.pt); metadata goes beside it.")
    ],
    size: Annotated[int, typer.Option(help="Cubic model input size in voxels.")] = 256,
    series_uid: SeriesOpt = None,
    as_json: JsonOpt = False,
    log_level: LogOpt = "WARNING",
) -> None:
    """Run the seed preprocessing on the selected series; write the tensor and a metadata JSON."""
    from ml.io import load_volume, open_study, rank_series
    from ml.preprocess import PreprocessConfig
    from ml.preprocess import preprocess as run_preprocess

    setup_logging(log_level)
    cfg = PreprocessConfig(target_size=(size, size, size))
    t0 = time.perf_counter()
    try:
        with open_study(study) as st:
            scrubber.register(st.phi_tokens)
            t_read = time.perf_counter()
            report = rank_series(st, series_uid=series_uid)
            volume = load_volume(report.selected.series)
            t_load = time.perf_counter()
        result = run_preprocess(volume, cfg)
    except InputError as e:
        _fail(e, as_json)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    result.save(out)
    meta = {
        "series_uid": volume.series_uid,
        "source_geometry": volume.geometry.to_dict(),
        "preprocess_config": cfg.to_dict(),
        "geometry": result.geometry.to_dict(),
        "crop_box_zyx": result.crop_box.to_dict(),
        "tensor_shape": list(result.tensor.shape),
        "qc_warnings": [r.to_dict() for r in report.selected.reasons if r.severity == "warn"],
        "timings_s": {
            "extract_and_scan": round(t_read - t0, 4),
            "qc_and_decode": round(t_load - t_read, 4),
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
        typer.echo(f"series {volume.series_uid}; timings: {meta['timings_s']}")


@cli.command()
def phantom(
    out_dir: Annotated[Path, typer.Argument(help="Directory for studies/, labels.csv and masks/.")],
    n: Annotated[int, typer.Option("--n", help="Number of studies (half of them with pathology).")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the corpus.")] = 0,
    variant: Annotated[list[str] | None, typer.Option(help="Variant(s), cycled (see ml.phantom).")] = None,
    rows: Annotated[int | None, typer.Option(help="Rows = columns per slice (pixels).")] = None,
    pixel_spacing: Annotated[float | None, typer.Option(help="In-plane pixel spacing (mm).")] = None,
    slice_spacing: Annotated[float | None, typer.Option(help="Slice spacing (mm).")] = None,
) -> None:
    """Write a seeded corpus of synthetic chest-CT studies (DICOM ZIPs, labels.csv, NIfTI masks).

    Sizes default to 128² pixels of 3 mm and 2.5 mm slices, except for the
    ``real_like`` variant (512², 0.7 mm, 2 mm, JPEG lossless) which keeps its own.
    """
    from ml.phantom import STUDY_VARIANTS, write_corpus

    setup_logging("WARNING")
    variants = tuple(variant or ["standard"])
    unknown = [v for v in variants if v not in STUDY_VARIANTS]
    if unknown:
        typer.echo(f"error: unknown variant(s) {unknown}; choose from {', '.join(STUDY_VARIANTS)}", err=True)
        raise typer.Exit(2)
    own_sizes = "real_like" in variants
    kwargs: dict[str, Any] = {
        "rows": rows if rows is not None else (None if own_sizes else 128),
        "pixel_spacing_mm": pixel_spacing if pixel_spacing is not None else (None if own_sizes else 3.0),
        "slice_spacing_mm": slice_spacing if slice_spacing is not None else (None if own_sizes else 2.5),
    }
    kwargs["cols"] = kwargs["rows"]
    t0 = time.perf_counter()
    labels = write_corpus(out_dir, n, seed, variants=variants, **kwargs)
    typer.echo(f"wrote {n} studies ({', '.join(variants)}) to {out_dir} in {time.perf_counter() - t0:.1f} s")
    typer.echo(f"labels: {labels}")


@cli.command()
def train(
    config: Annotated[
        Path,
        typer.Argument(
            help="Training YAML (see weights/resnet10-demo.train.yaml).", exists=True, dir_okay=False
        ),
    ],
    log_level: LogOpt = "INFO",
) -> None:
    """Train with the seed recipe; publishes weights, manifest entry and model card if configured."""
    from ml.train import TrainConfig
    from ml.train import train as run_train

    setup_logging(log_level)
    cfg = TrainConfig.from_yaml(config)
    summary = run_train(cfg)
    keys = (
        "data",
        "fit",
        "calibration",
        "validation",
        "test",
        "cross_validation",
        "operating_points",
        "published",
    )
    typer.echo(json.dumps({k: summary[k] for k in keys if k in summary}, indent=2, default=float))


@cli.command()
def retune(
    config: Annotated[
        Path,
        typer.Argument(
            help="Training YAML of the published model, with tune_labels_csv set.",
            exists=True,
            dir_okay=False,
        ),
    ],
    log_level: LogOpt = "INFO",
) -> None:
    """Re-choose a published model's operating points on its tuning corpus; weights untouched.

    Thresholds are picked on the config's ``tune_labels_csv`` and measured on its
    ``test_labels_csv``; the manifest entry, ROC/calibration plots and model card are rewritten.
    With ``calibrate_on: tuning`` in the config the calibration temperature is refitted on the
    tuning corpus first (and the validation split re-scored with it).
    """
    from ml.train import TrainConfig
    from ml.train import retune as run_retune

    setup_logging(log_level)
    cfg = TrainConfig.from_yaml(config)
    try:
        summary = run_retune(cfg)
    except ModelUnavailable as e:
        _fail(e, as_json=False)
        return
    except ValueError as e:  # a config that does not match the published model
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    keys = ("tuning", "test", "operating_points", "operating_points_selected_on", "published")
    typer.echo(json.dumps({k: summary[k] for k in keys if k in summary}, indent=2, default=float))


@cli.command()
def evaluate(
    labels: Annotated[
        Path, typer.Argument(help="labels.csv (study_id,label,zip).", exists=True, dir_okay=False)
    ],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder (metrics.json, roc.png).")],
    model: Annotated[
        str | None, typer.Option(help="Manifest entry (default: the manifest's default).")
    ] = None,
    manifest: Annotated[Path | None, typer.Option(help="Weights manifest.")] = None,
    cache_dir: Annotated[Path, typer.Option(help="Preprocessed tensor cache.")] = Path("var/cache"),
    n_bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the 95% CIs.")] = 1000,
    log_level: LogOpt = "WARNING",
) -> None:
    """Evaluate a manifest model on a labelled corpus (AUC, sensitivity, specificity with 95% CIs, ROC)."""
    from ml.train import evaluate_model

    setup_logging(log_level)
    try:
        result = evaluate_model(
            manifest or DEFAULT_MANIFEST,
            labels,
            out,
            name=model,
            cache_dir=cache_dir,
            n_bootstrap=n_bootstrap,
        )
    except ModelUnavailable as e:
        _fail(e, as_json=False)
        return
    typer.echo(
        json.dumps(
            {k: result[k] for k in ("model", "data", "summary", "operating_points")}, indent=2, default=float
        )
    )


# the batch command lives in app/predict.py (its own module: report writing, resume logic)
cli.command("predict")(predict_command)


# --------------------------------------------------------------------------- the service

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="YAML settings file (else S4CT_CONFIG_FILE, S4CT_* env).")
]


def _settings(config: Path | None, **overrides: Any) -> Any:
    from app.config import load_settings

    try:
        settings = load_settings(config, **{k: v for k, v in overrides.items() if v is not None})
    except Exception as e:
        typer.echo(f"error: invalid settings: {e}", err=True)
        raise typer.Exit(2) from None
    setup_logging(settings.log_level, json=settings.log_json)
    return settings


def _database_url(settings: Any) -> str:
    if settings.database_url is None:
        typer.echo("error: S4CT_DATABASE_URL is not set (service4ct serve starts an embedded one)", err=True)
        raise typer.Exit(2)
    return str(settings.database_url)


@cli.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Bind address of the API.")] = None,
    port: Annotated[int | None, typer.Option(help="Port of the API.")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
) -> None:
    """Run the whole service: embedded PostgreSQL/Redis/S3 (unless configured), API and worker(s)."""
    from app.serve import serve as run_serve

    run_serve(_settings(config, host=host, port=port), workers=workers)


@cli.command()
def api(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
) -> None:
    """Run the API only (production: S4CT_* settings point at PostgreSQL, Redis and S3)."""
    import uvicorn

    from app.main import build_services, create_app
    from app.migrate import NotMigratedError

    settings = _settings(config, host=host, port=port)
    try:  # connect and check the schema before serving: refuse clearly, not with a traceback
        services = build_services(settings)
    except (ValueError, NotMigratedError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    try:
        app = create_app(settings, services)
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False)
    finally:
        services.close()


@cli.command()
def worker(config: ConfigOpt = None) -> None:
    """Run one worker process (loads the model once; GPU if present, else CPU)."""
    from app.migrate import NotMigratedError
    from app.worker.runner import run_worker

    settings = _settings(config)
    try:
        run_worker(settings)
    except (ValueError, NotMigratedError, ModelUnavailable) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


@cli.command()
def migrate(config: ConfigOpt = None) -> None:
    """Apply pending database migrations (under an advisory lock; safe to run concurrently)."""
    from app.db import connect
    from app.migrate import migrate as run_migrate

    settings = _settings(config)
    with connect(_database_url(settings)) as conn:
        applied = run_migrate(conn)
    typer.echo("applied: " + ", ".join(applied) if applied else "database is up to date")


apikey_cli = typer.Typer(no_args_is_help=True, help="Manage API keys (stored hashed).")
cli.add_typer(apikey_cli, name="apikey")


@apikey_cli.command("create")
def apikey_create(
    client: Annotated[
        str, typer.Argument(help="Client name (created if new); its studies and jobs are its own.")
    ],
    label: Annotated[str, typer.Option(help="Free-text label of this key.")] = "",
    config: ConfigOpt = None,
) -> None:
    """Create an API key for CLIENT; the key is printed once and stored only as a hash."""
    from app.db import connect
    from app.repository import create_api_key, ensure_client

    settings = _settings(config)
    with connect(_database_url(settings)) as conn:
        secret, created = ensure_client(conn, client)
        key_id, key = create_api_key(conn, client, label)
    typer.echo(f"api key:        {key}")
    typer.echo(f"key id:         {key_id}")
    if created:
        typer.echo(f"webhook secret: {secret}   (verifies X-Service4CT-Signature; shown once)")


@apikey_cli.command("list")
def apikey_list(config: ConfigOpt = None) -> None:
    """List keys (id, client, prefix, dates); keys themselves are not stored."""
    from app.db import connect
    from app.repository import list_api_keys

    settings = _settings(config)
    with connect(_database_url(settings)) as conn:
        for r in list_api_keys(conn):
            state = "revoked" if r["revoked_at"] else "active"
            typer.echo(f"{r['id']}  {r['client']:<16} {r['key_prefix']}…  {state:<8} {r['label']}")


@apikey_cli.command("revoke")
def apikey_revoke(
    key_id: Annotated[str, typer.Argument(help="Key id from `apikey list`.")], config: ConfigOpt = None
) -> None:
    """Revoke a key (effective within seconds)."""
    import uuid

    from app.db import connect
    from app.repository import revoke_api_key

    settings = _settings(config)
    with connect(_database_url(settings)) as conn:
        ok = revoke_api_key(conn, uuid.UUID(key_id))
    if not ok:
        typer.echo("error: no active key with this id", err=True)
        raise typer.Exit(2)
    typer.echo("revoked")


def main() -> None:
    try:
        cli()
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
