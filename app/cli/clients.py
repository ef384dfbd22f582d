"""``service4ct client``: per-client settings an operator manages (quotas, webhooks, secret rotation)."""

from __future__ import annotations

from typing import Annotated

import typer

from app.cli.service import ConfigOpt, _database_url, _settings

__all__ = ["client_cli"]

client_cli = typer.Typer(
    no_args_is_help=True, help="Manage clients (quotas, retention, webhooks, webhook secrets)."
)

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
        raise _no_client(client)

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
        raise _no_client(client)
    if own is not None:
        typer.echo("retention: kept until deleted" if own == 0 else f"retention: {own} days")
    elif settings.retention_days is not None:
        typer.echo(f"retention: {settings.retention_days} days (default)")
    else:
        typer.echo("retention: kept until deleted (default)")


def _no_client(client: str) -> typer.Exit:
    typer.echo(f"error: no client {client!r} (service4ct apikey create {client} creates it)", err=True)
    return typer.Exit(2)


@client_cli.command("webhook")
def client_webhook(
    client: Annotated[str, typer.Argument(help="Client name.")],
    url: Annotated[
        str | None, typer.Option(help="Default webhook URL (callback URL policy applies); '' removes it.")
    ] = None,
    events: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated events to deliver, e.g. job.started,job.succeeded; 'default' resets."
        ),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Show CLIENT's default webhook URL and event selection, or set them (a job callback_url wins)."""
    from app.callbacks import CallbackURLError, check_callback_url, policy_of
    from app.db import connect
    from app.repository.events import get_webhook_config, set_webhook_config

    settings = _settings(config)
    with connect(_database_url(settings)) as conn:
        current = get_webhook_config(conn, client)
        if current is None:
            raise _no_client(client)
        new_url = current.url if url is None else (url or None)
        chosen: list[str] | None = list(current.events) if current.selected else None
        if events is not None:
            chosen = (
                None if events.strip() == "default" else [e.strip() for e in events.split(",") if e.strip()]
            )
        try:
            if new_url is not None and new_url != current.url:
                check_callback_url(new_url, policy_of(settings))
            updated = set_webhook_config(conn, client, new_url, chosen)
        except (CallbackURLError, ValueError) as e:  # a refused URL, an unknown event
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
    assert updated is not None
    typer.echo(f"url: {updated.url or '(none: only jobs with a callback_url are called)'}")
    typer.echo(f"events: {','.join(updated.events)}{'' if updated.selected else ' (default)'}")
    if updated.previous_until is not None:
        typer.echo(f"secret rotation open until {updated.previous_until.isoformat()}")


@client_cli.command("rotate-secret")
def client_rotate_secret(
    client: Annotated[str, typer.Argument(help="Client name.")],
    overlap_hours: Annotated[
        float, typer.Option(min=0.01, help="How long the previous secret keeps signing deliveries.")
    ] = 72.0,
    finish: Annotated[
        bool, typer.Option("--finish", help="End the overlap now: only the new secret signs.")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Give CLIENT a new webhook secret; deliveries carry both signatures until --finish or overlap end."""
    import datetime as dt

    from app.db import connect
    from app.repository.events import finish_rotation, rotate_secret

    settings = _settings(config)
    with connect(_database_url(settings)) as conn:
        if finish:
            if not finish_rotation(conn, client):
                raise _no_client(client)
            typer.echo("rotation finished: deliveries are signed with the current secret only")
            return
        rotated = rotate_secret(conn, client, dt.timedelta(hours=overlap_hours))
    if rotated is None:
        raise _no_client(client)
    secret, until = rotated
    typer.echo(f"new webhook secret: {secret}   (shown once)")
    typer.echo(f"the previous secret also signs deliveries until {until.isoformat()} (or --finish)")
