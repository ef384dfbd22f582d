"""Options and error output shared by the ``service4ct`` commands."""

from __future__ import annotations

import json
from typing import Annotated, NoReturn

import typer

from ml.errors import InputError, ModelUnavailable

__all__ = ["JsonOpt", "LogOpt", "SeriesOpt", "fail"]


JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
SeriesOpt = Annotated[
    str | None, typer.Option("--series-uid", help="Use this series instead of the best ranked.")
]
LogOpt = Annotated[str, typer.Option("--log-level", help="Log level (logs go to stderr).")]


def fail(err: InputError | ModelUnavailable, as_json: bool) -> NoReturn:
    """Print ``err`` (JSON on stdout, else a line on stderr) and exit with code 2."""
    if as_json:
        typer.echo(json.dumps(err.to_dict()))
    else:
        typer.echo(f"error: {err.code}: {err.detail}", err=True)
    raise typer.Exit(2)
