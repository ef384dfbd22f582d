"""The ``service4ct`` command.

Offline operator commands work on files and need no running service: ``inspect`` and
``preprocess`` (one study: :mod:`app.cli.study`), ``phantom``, ``train``, ``retune``,
``evaluate``, ``fit-ood`` and ``drift-reference`` (corpora and models: :mod:`app.cli.training`),
``predict`` (a batch report: :mod:`app.predict`). Service commands run or administer the
service: ``serve``, ``api``,
``worker``, ``migrate`` and ``apikey`` (:mod:`app.cli.service`), ``client`` (quotas, retention,
webhook, secret rotation: :mod:`app.cli.clients`), ``audit`` (:mod:`app.cli.audit`), ``performance`` (a
model's live performance report: :mod:`app.cli.performance`).

Commands print identifiers of studies and series only (UIDs, counts, geometry),
never patient identifiers or archive member names.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import typer

from app.cli import audit, clients, dicomweb, performance, service, study, training
from app.predict import predict_command

__all__ = ["cli", "main"]

cli = typer.Typer(add_completion=False, no_args_is_help=True, help="Service4CT chest-CT triage service.")

#: the commands in the order of ``service4ct --help``
OFFLINE_COMMANDS: tuple[Callable[..., None], ...] = (
    study.inspect,
    study.preprocess,
    training.phantom,
    training.train,
    training.retune,
    training.evaluate,
    training.fit_ood,
    training.drift_reference,
)
SERVICE_COMMANDS: tuple[Callable[..., None], ...] = (
    service.serve,
    service.api,
    service.worker,
    service.migrate,
)

for _command in OFFLINE_COMMANDS:
    cli.command()(_command)
# the batch command lives in app/predict.py (its own module: report writing, resume logic)
cli.command("predict")(predict_command)
for _command in SERVICE_COMMANDS:
    cli.command()(_command)
cli.add_typer(service.apikey_cli, name="apikey")
cli.add_typer(clients.client_cli, name="client")
cli.add_typer(dicomweb.dicomweb_cli, name="dicomweb")
cli.command("audit")(audit.audit)
cli.command("performance")(performance.performance)


def main() -> None:
    """Entry point of the ``service4ct`` script."""
    try:
        cli()
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)
