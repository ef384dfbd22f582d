"""``service4ct performance``: a model's live performance report (xlsx or html) for operators."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer

from app.cli.service import ConfigOpt, _database_url, _settings

__all__ = ["performance"]


def _utc(v: dt.datetime) -> dt.datetime:
    return v if v.tzinfo is not None else v.replace(tzinfo=dt.UTC)


def performance(
    model: Annotated[str, typer.Argument(help="The model's name in the manifest.")],
    since: Annotated[
        dt.datetime,
        typer.Option(help="Jobs created from this time on (ISO date or date-time; UTC unless an offset)."),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="The report: a .xlsx or .html file.")],
    until: Annotated[
        dt.datetime | None, typer.Option(help="Jobs created before this time (default: now).")
    ] = None,
    client: Annotated[
        str | None, typer.Option(help="Only this client's jobs (default: every client).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Write MODEL's live performance against readers' feedback, with the ROC and calibration plots.

    The same figures as GET /v1/models/{name}/performance, for every client or one; reads the
    service's database (S4CT_DATABASE_URL, else the running `service4ct serve`).
    """
    from app.db import connect
    from app.performance import live_performance
    from app.performance_report import write_report
    from ml.model import Manifest

    if output.suffix.lower() not in (".xlsx", ".html", ".htm"):
        typer.echo("error: the report (-o) must end in .xlsx or .html", err=True)
        raise typer.Exit(2)
    settings = _settings(config)
    manifest = Manifest.load(settings.manifest_path)
    entry = manifest.entries.get(model)
    if entry is None:
        typer.echo(f"error: model_not_found: no model {model!r} in {settings.manifest_path}", err=True)
        raise typer.Exit(2)
    start, end = _utc(since), _utc(until) if until is not None else dt.datetime.now(dt.UTC)
    if start >= end:
        typer.echo("error: --since must be before --until", err=True)
        raise typer.Exit(2)
    with connect(_database_url(settings)) as conn:
        data = live_performance(conn, entry, start, end, client, shadows=manifest.shadows_of(model))
    write_report(data, output)
    r = data.performance
    auc = r.live.auc
    ci = f" (95 % CI {auc.ci95[0]:.3f}–{auc.ci95[1]:.3f})" if auc.ci95 else ""
    shown = "-" if auc.value is None else f"{auc.value:.3f}"
    typer.echo(f"{r.jobs} jobs, {r.with_feedback} with feedback, AUC {shown}{ci}: wrote {output}")
