"""``service4ct client``: per-client settings an operator manages (quotas)."""

from __future__ import annotations

from typing import Annotated

import typer

from app.cli.service import ConfigOpt, _database_url, _settings

__all__ = ["client_cli"]

client_cli = typer.Typer(no_args_is_help=True, help="Manage clients (quotas, retention).")

_RESET = "0 resets it to the service's default setting."


@client_cli.command("quota")
def client_quota(
    client: Annotated[str, typer.Argument(help="Client name.")],
    rate_per_minute: Annotated[
        int | None, typer.Option(min=0, help=f"Requests per minute, all API processes together; {_RESET}")
    ] = None,
    max_queued: Annotated[int | None, typer.Option(min=0, help=f"Jobs queued at once; {_RESET}")] = None,
    config: ConfigOpt = None,
) -> None:
    """Show CLIENT's quotas, or set them (429 rate_limited / quota_exceeded beyond them)."""
    from app.db import connect
    from app.repository.quotas import KEEP, set_quota

    settings = _settings(config)
    with connect(_database_url(settings)) as conn:
        quota = set_quota(
            conn,
            client,
            rate_limit_per_minute=KEEP if rate_per_minute is None else (rate_per_minute or None),
            max_queued_jobs=KEEP if max_queued is None else (max_queued or None),
        )
    if quota is None:
        typer.echo(f"error: no client {client!r} (service4ct apikey create {client} creates it)", err=True)
        raise typer.Exit(2)

    def show(own: int | None, default: int | None) -> str:
        if own is not None:
            return str(own)
        return f"{default} (default)" if default is not None else "no limit (default)"

    typer.echo(f"rate per minute: {show(quota.rate_limit_per_minute, settings.rate_limit_per_minute)}")
    typer.echo(f"max queued jobs: {show(quota.max_queued_jobs, settings.max_queued_jobs_per_client)}")


@client_cli.command("retention")
def client_retention(
    client: Annotated[str, typer.Argument(help="Client name.")],
    days: Annotated[
        int | None,
        typer.Option(
            min=0, help="Keep studies and jobs this many days from their creation; 0: until deleted."
        ),
    ] = None,
    default: Annotated[
        bool, typer.Option("--default", help="Use the service's retention_days setting.")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Show CLIENT's retention, or set it (the worker's janitor deletes what is older)."""
    from app.db import connect
    from app.repository.retention import get_retention, set_retention

    settings = _settings(config)
    with connect(_database_url(settings)) as conn:
        found = True
        if default or days is not None:
            found = set_retention(conn, client, None if default else days)
        found, own = get_retention(conn, client) if found else (False, None)
    if not found:
        typer.echo(f"error: no client {client!r} (service4ct apikey create {client} creates it)", err=True)
        raise typer.Exit(2)
    if own is not None:
        typer.echo("retention: kept until deleted" if own == 0 else f"retention: {own} days")
    elif settings.retention_days is not None:
        typer.echo(f"retention: {settings.retention_days} days (default)")
    else:
        typer.echo("retention: kept until deleted (default)")
