"""Commands that run or administer the service: ``serve``, ``api``, ``worker``, ``migrate``, ``apikey``.

Settings come from ``--config`` (YAML), else ``S4CT_CONFIG_FILE`` and the ``S4CT_*``
environment (see app/config.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from app.logs import setup_logging
from ml.errors import ModelUnavailable

__all__ = ["api", "apikey_cli", "migrate", "serve", "worker"]

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
    """The database of an operator command: configured, else the one a running ``serve`` published."""
    if settings.database_url is None:
        from app.devstack.serve import published_connection

        live = published_connection(settings)
        if live is not None:
            return str(live.database_url)
        typer.echo(
            "error: S4CT_DATABASE_URL is not set and no running `service4ct serve` published its "
            f"connection in {settings.var_dir}/ (start it, or set S4CT_VAR_DIR to its var directory)",
            err=True,
        )
        raise typer.Exit(2)
    return str(settings.database_url)


def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Bind address of the API.")] = None,
    port: Annotated[int | None, typer.Option(help="Port of the API.")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
) -> None:
    """Run the whole service: embedded PostgreSQL/Redis/S3 (unless configured), API and worker(s)."""
    from app.devstack.serve import serve as run_serve

    run_serve(_settings(config, host=host, port=port), workers=workers)


def api(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
) -> None:
    """Run the API only (production: S4CT_* settings point at PostgreSQL, Redis and S3)."""
    import uvicorn

    from app.api.server import uvicorn_config
    from app.main import build_services, create_app
    from app.migrate import DatabaseEncodingError, NotMigratedError

    settings = _settings(config, host=host, port=port)
    try:  # connect and check the schema before serving: refuse clearly, not with a traceback
        services = build_services(settings)
    except (ValueError, NotMigratedError, DatabaseEncodingError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    try:
        app = create_app(settings, services)
        uvicorn.Server(uvicorn_config(app, settings)).run()
    finally:
        services.close()


def worker(config: ConfigOpt = None) -> None:
    """Run one worker process (loads the model once; GPU if present, else CPU)."""
    from app.migrate import DatabaseEncodingError, NotMigratedError
    from app.worker.runner import run_worker

    settings = _settings(config)
    try:
        run_worker(settings)
    except (ValueError, NotMigratedError, DatabaseEncodingError, ModelUnavailable) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def migrate(config: ConfigOpt = None) -> None:
    """Apply pending database migrations (under an advisory lock; safe to run concurrently)."""
    from app.db import connect
    from app.migrate import DatabaseEncodingError, NotMigratedError
    from app.migrate import migrate as run_migrate

    settings = _settings(config)
    try:
        with connect(_database_url(settings)) as conn:
            applied = run_migrate(conn)
    except (NotMigratedError, DatabaseEncodingError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo("applied: " + ", ".join(applied) if applied else "database is up to date")


apikey_cli = typer.Typer(no_args_is_help=True, help="Manage API keys (stored hashed).")


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
    """Revoke a key: every API process connected to the same Redis drops it at once."""
    import uuid

    from app.db import connect
    from app.repository import revoke_api_key_hash

    settings = _settings(config)
    with connect(_database_url(settings)) as conn:
        key_hash = revoke_api_key_hash(conn, uuid.UUID(key_id))
    if key_hash is None:
        typer.echo("error: no active key with this id", err=True)
        raise typer.Exit(2)
    typer.echo("revoked")
    _broadcast_revocation(settings, key_hash)


def _broadcast_revocation(settings: Any, key_hash: str) -> None:
    import redis

    from app.api.keys import broadcast_revocation

    if settings.redis_url is None:
        typer.echo(f"API processes drop the key within {settings.key_cache_ttl_s:g} s (no S4CT_REDIS_URL)")
        return
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        listeners = broadcast_revocation(client, key_hash)
    except redis.RedisError as e:
        typer.echo(
            f"warning: revocation not broadcast ({type(e).__name__}); API processes drop the key "
            f"within {settings.key_cache_ttl_s:g} s",
            err=True,
        )
        return
    finally:
        client.close()
    typer.echo(f"dropped by {listeners} API process(es) now")
