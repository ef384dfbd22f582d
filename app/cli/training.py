"""Offline commands that build and measure models: ``phantom``, ``train``, ``retune``, ``evaluate``,
``fit-ood``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from app.cli.common import LogOpt, fail
from app.config import DEFAULT_MANIFEST
from app.logs import setup_logging
from ml.errors import ModelUnavailable

__all__ = ["drift_reference", "evaluate", "fit_ood", "phantom", "retune", "train"]


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


def retune(
    config: Annotated[
        Path,
        typer.Argument(
            help="Training YAML of the published model, with tune_labels_csv set.",
            exists=True,
            dir_okay=False,
        ),
    ],
    keep_calibration: Annotated[
        bool,
        typer.Option(
            "--keep-calibration",
            help="Keep the published calibration temperature (and validation metrics) instead of "
            "refitting it with calibrate_on: tuning.",
        ),
    ] = False,
    log_level: LogOpt = "INFO",
) -> None:
    """Re-choose a published model's operating points on its tuning corpus; weights untouched.

    Thresholds are picked on the config's ``tune_labels_csv`` and measured on its
    ``test_labels_csv``; the manifest entry, ROC/calibration plots and model card are rewritten.
    With ``calibrate_on: tuning`` in the config the calibration temperature is refitted on the
    tuning corpus first (and the validation split re-scored with it), unless --keep-calibration.
    The out-of-distribution statistics (the config's ood_method) are refitted on the tuning
    corpus and published beside the weights.
    """
    from ml.train import TrainConfig
    from ml.train import retune as run_retune

    setup_logging(log_level)
    cfg = TrainConfig.from_yaml(config)
    try:
        summary = run_retune(cfg, keep_calibration=keep_calibration)
    except ModelUnavailable as e:
        fail(e, as_json=False)
        return
    except ValueError as e:  # a config that does not match the published model
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    keys = ("tuning", "test", "operating_points", "operating_points_selected_on", "ood", "published")
    typer.echo(json.dumps({k: summary[k] for k in keys if k in summary}, indent=2, default=float))


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
        fail(e, as_json=False)
        return
    typer.echo(
        json.dumps(
            {k: result[k] for k in ("model", "data", "summary", "operating_points")}, indent=2, default=float
        )
    )


def fit_ood(
    model: Annotated[str, typer.Argument(help="Manifest entry whose OOD statistics are fitted.")],
    corpus: Annotated[
        Path,
        typer.Argument(
            help="The operator's in-distribution studies: a folder of study ZIPs (unlabelled) or a "
            "labels.csv (study_id,label,zip).",
            exists=True,
        ),
    ],
    manifest: Annotated[Path | None, typer.Option(help="Weights manifest.")] = None,
    method: Annotated[str, typer.Option(help="OOD score: mahalanobis, energy or msp.")] = "mahalanobis",
    keep: Annotated[
        float, typer.Option(help="Share of held-out in-distribution studies the threshold keeps.")
    ] = 0.95,
    fitted_on: Annotated[str | None, typer.Option(help="Name of the corpus in the manifest.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    log_level: LogOpt = "WARNING",
) -> None:
    """Fit out-of-distribution statistics for a model on your own studies and publish them.

    Reads each study with the model's preprocessing and runs the model once on it; studies
    that cannot be read are skipped (counted by error code). The statistics file is written
    beside the weights and the manifest entry's ``ood`` block (method, threshold, sha256, n,
    in-distribution rate) is replaced: from then on the service answers ``indeterminate`` for
    studies unlike these.
    """
    from ml.data import read_labels_csv
    from ml.ood.corpus import fit_model_ood

    setup_logging(log_level)
    if corpus.is_dir():
        studies, labels = sorted(corpus.glob("*.zip")), None
    else:
        records = [r for r in read_labels_csv(corpus) if r.zip_path is not None]
        studies, labels = [r.zip_path for r in records if r.zip_path], [r.label for r in records]
    try:
        fitted = fit_model_ood(
            manifest or DEFAULT_MANIFEST,
            model,
            studies,
            labels,
            method=method,
            keep=keep,
            fitted_on=fitted_on or corpus.name,
            device=device,
        )
    except ModelUnavailable as e:
        fail(e, as_json=False)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    typer.echo(json.dumps(fitted.to_dict(), indent=2))


def drift_reference(
    model: Annotated[str, typer.Argument(help="Manifest entry whose drift reference is recorded.")],
    corpus: Annotated[
        Path,
        typer.Argument(
            help="The model card's test corpus: a folder of study ZIPs or a labels.csv (study_id,label,zip).",
            exists=True,
        ),
    ],
    manifest: Annotated[Path | None, typer.Option(help="Weights manifest.")] = None,
    fitted_on: Annotated[str | None, typer.Option(help="Name of the corpus in the manifest.")] = None,
    log_level: LogOpt = "WARNING",
) -> None:
    """Record the drift reference of a model: binned probabilities, OOD scores and input properties.

    Runs the model once on each study (on the CPU) and writes the histograms that the drift
    gauges compare the live window with into the manifest entry's ``metrics.drift_reference``.
    The weights and the OOD statistics file are only read: their sha256 does not change.
    """
    from ml.data import read_labels_csv
    from ml.evaluate.drift_corpus import corpus_reference

    setup_logging(log_level)
    if corpus.is_dir():
        studies = sorted(corpus.glob("*.zip"))
    else:
        studies = [r.zip_path for r in read_labels_csv(corpus) if r.zip_path is not None]
    try:
        ref, skipped = corpus_reference(
            manifest or DEFAULT_MANIFEST, model, studies, fitted_on=fitted_on or corpus.name
        )
    except ModelUnavailable as e:
        fail(e, as_json=False)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    typer.echo(json.dumps({**ref.to_dict(), "skipped": dict(skipped)}, indent=2))
