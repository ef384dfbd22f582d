"""``service4ct dicomweb``: a client's DICOMweb endpoints (PACS to import from, destination of results)."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from app.cli.service import ConfigOpt, _database_url, _settings

__all__ = ["dicomweb_cli"]

dicomweb_cli = typer.Typer(
    no_args_is_help=True,
    help="Configure a client's DICOMweb endpoints: the PACS it may import from (source) and the one "
    "its DICOM results are pushed to by STOW-RS (destination).",
)

Role = Annotated[str, typer.Option(help="source (import from) or destination (push results to)")]


def _role(role: str) -> Literal["source", "destination"]:
    if role not in ("source", "destination"):
        typer.echo("error: --role is source or destination", err=True)
        raise typer.Exit(2)
    return "source" if role == "source" else "destination"


@dicomweb_cli.command("add")
def dicomweb_add(
    client: Annotated[str, typer.Argument(help="An existing client (see `apikey create`).")],
    url: Annotated[str, typer.Argument(help="The DICOMweb base URL, e.g. http://pacs:8042/dicom-web")],
    role: Role = "destination",
    config: ConfigOpt = None,
) -> None:
    """Add a source endpoint, or set the destination (one per client) of CLIENT."""
    from app.db import connect
    from app.repository.dicom import add_endpoint

    if not url.startswith(("http://", "https://")):
        typer.echo("error: the URL must start with http:// or https://", err=True)
        raise typer.Exit(2)
    with connect(_database_url(_settings(config))) as conn:
        add_endpoint(conn, client, _role(role), url.rstrip("/"))
    typer.echo(f"{role}: {url.rstrip('/')}")


@dicomweb_cli.command("remove")
def dicomweb_remove(
    client: Annotated[str, typer.Argument()],
    url: Annotated[str, typer.Argument()],
    role: Role = "destination",
    config: ConfigOpt = None,
) -> None:
    """Remove an endpoint of CLIENT."""
    from app.db import connect
    from app.repository.dicom import remove_endpoint

    with connect(_database_url(_settings(config))) as conn:
        ok = remove_endpoint(conn, client, _role(role), url.rstrip("/"))
    if not ok:
        typer.echo("error: no such endpoint", err=True)
        raise typer.Exit(2)
    typer.echo("removed")


@dicomweb_cli.command("list")
def dicomweb_list(client: Annotated[str, typer.Argument()], config: ConfigOpt = None) -> None:
    """List CLIENT's endpoints."""
    from app.db import connect
    from app.repository.dicom import list_endpoints

    with connect(_database_url(_settings(config))) as conn:
        for role in ("source", "destination"):
            for url in list_endpoints(conn, client, role):
                typer.echo(f"{role:<12} {url}")
