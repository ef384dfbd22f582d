"""``python -m app.worker``: one worker process, settings from ``S4CT_*`` (and ``S4CT_CONFIG_FILE``)."""

from __future__ import annotations

from app.config import load_settings
from app.logs import setup_logging
from app.worker.runner import run_worker


def main() -> None:
    settings = load_settings()
    setup_logging(settings.log_level, json=settings.log_json)
    run_worker(settings)


if __name__ == "__main__":
    main()
