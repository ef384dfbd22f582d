"""``service4ct audit``: who read or deleted which result, explanation, study or job."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import orjson
import typer

from app.cli.service import ConfigOpt, _database_url, _settings

__all__ = ["audit"]

_COLUMNS = ("at", "client", "key", "via", "action", "object", "object_id", "request_id")


def audit(
    since: Annotated[
        dt.datetime,
        typer.Option(help="From this time on (ISO date or date-time; UTC unless an offset is given)."),
    ],
    client: Annotated[str | None, typer.Option(help="Only this client's rows.")] = None,
    json_lines: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
    limit: Annotated[int, typer.Option(min=1, help="At most this many rows (oldest first).")] = 10_000,
    config: ConfigOpt = None,
) -> None:
    """Print who read or deleted which result, explanation, study or job, and when.

    Each row: time, client, key (id and prefix; for a viewer token, the key that issued it),
    via, action, object, its id, the request id.
    """
    from app.db import connect
    from app.repository.audit import audit_rows

    settings = _settings(config)
    start = since if since.tzinfo is not None else since.replace(tzinfo=dt.UTC)
    with connect(_database_url(settings)) as conn:
        rows = audit_rows(conn, start, client, limit)
    out = [
        {
            "at": r["at"].astimezone(dt.UTC).isoformat(),
            "client": r["client"],
            "key_id": str(r["key_id"]) if r["key_id"] else None,
            "key": r["key_prefix"],
            "via": r["via"],
            "action": r["action"],
            "object": r["object"],
            "object_id": str(r["object_id"]),
            "request_id": r["request_id"],
        }
        for r in rows
    ]
    if json_lines:
        for o in out:
            typer.echo(orjson.dumps(o).decode())
        return
    table = [_COLUMNS, *([str(o[c] or "-") for c in _COLUMNS] for o in out)]
    widths = [max(len(row[i]) for row in table) for i in range(len(_COLUMNS))]
    for row in table:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
