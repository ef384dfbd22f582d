"""``service4ct serve``: the whole service on one machine.

Without ``S4CT_DATABASE_URL``/``S4CT_REDIS_URL``/``S4CT_S3_ENDPOINT`` it starts
the embedded PostgreSQL, Redis and SeaweedFS S3 under ``var/`` (docs/architecture.md §6);
then it applies migrations, creates the bucket and, the first time, a dev API
key (printed once, also kept in ``var/dev-api-key`` with mode 0600 for
``make run``), and runs the API (uvicorn, this process) and one worker (a
child process). Ctrl-C or SIGTERM stops the worker, the API and the services,
in that order.

While it runs the embedded stack, it publishes the stack's connection settings in
``var/connection.json`` (mode 0600, removed on exit), so that the operator commands
(``service4ct apikey``, ``migrate``) work against it without any environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import SecretStr

from app.config import Settings
from app.db import connect
from app.devstack.stack import EmbeddedStack
from app.logs import logger
from app.migrate import migrate
from app.repository import create_api_key
from app.storage import storage_from_settings

__all__ = [
    "CONNECTION_FILE",
    "ensure_dev_key",
    "prepare_services",
    "publish_connection",
    "published_connection",
    "serve",
    "worker_env",
]

DEV_CLIENT = "dev"
#: under ``var_dir``: the connection settings of the embedded stack a running ``serve`` owns
CONNECTION_FILE = "connection.json"


@contextlib.contextmanager
def embedded_or_external(settings: Settings) -> Iterator[Settings]:
    """Settings pointing at running services: the configured ones, or a started embedded stack."""
    if not settings.embedded:
        settings.require_services()
        yield settings
        return
    stack = EmbeddedStack(settings.var_dir / "stack")
    stack.start()
    try:
        yield settings.with_services(
            database_url=stack.database_url,
            redis_url=stack.redis_url,
            s3_endpoint=stack.s3_endpoint,
            s3_access_key=stack.s3_access_key,
            s3_secret_key=stack.s3_secret_key,
        )
    finally:
        stack.stop()


def prepare_services(settings: Settings) -> None:
    """Apply migrations and create the bucket (idempotent)."""
    assert settings.database_url and settings.s3_access_key and settings.s3_secret_key
    with connect(settings.database_url) as conn:
        applied = migrate(conn)
    if applied:
        logger.info("applied migrations: {}", ", ".join(applied))
    storage_from_settings(settings).ensure_bucket()


def ensure_dev_key(settings: Settings) -> tuple[str, bool]:
    """(dev API key, created now). The key is kept in ``var/dev-api-key`` (0600)."""
    path = settings.var_dir / "dev-api-key"
    if path.is_file():
        key = path.read_text().strip()
        if key:
            return key, False
    assert settings.database_url
    with connect(settings.database_url) as conn:
        _, key = create_api_key(conn, DEV_CLIENT, "dev key of service4ct serve")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key, True


def publish_connection(live: Settings, var_dir: Path) -> Path:
    """Write the running stack's connection settings to ``var_dir/connection.json`` (0600, atomically)."""
    assert live.s3_access_key and live.s3_secret_key
    data = {
        "pid": os.getpid(),
        "database_url": live.database_url,
        "redis_url": live.redis_url,
        "s3_endpoint": live.s3_endpoint,
        "s3_access_key": live.s3_access_key.get_secret_value(),
        "s3_secret_key": live.s3_secret_key.get_secret_value(),
        "s3_bucket": live.s3_bucket,
    }
    path = var_dir / CONNECTION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)
    return path


def published_connection(settings: Settings) -> Settings | None:
    """``settings`` pointed at the stack a running ``service4ct serve`` published under its var dir.

    None when services are configured (``S4CT_DATABASE_URL``, …), nothing is published, or the
    ``serve`` that published it is gone.
    """
    path = settings.var_dir / CONNECTION_FILE
    if not settings.embedded or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        os.kill(int(data["pid"]), 0)  # the publishing serve still runs (signal 0 only checks)
    except PermissionError:
        pass  # it runs, as another user
    except (OSError, ValueError, KeyError, TypeError):
        return None
    live = settings.with_services(
        database_url=data["database_url"],
        redis_url=data["redis_url"],
        s3_endpoint=data["s3_endpoint"],
        s3_access_key=data["s3_access_key"],
        s3_secret_key=data["s3_secret_key"],
    )
    return live.model_copy(update={"s3_bucket": data["s3_bucket"]})


def worker_env(settings: Settings) -> dict[str, str]:
    """Environment of a worker child process: every setting of ``settings`` as ``S4CT_*``.

    All fields travel (not only the connections), so that a child runs with the
    same queue, lease and batch settings as its parent, YAML values included.
    """
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if value is None:
            env.pop(f"S4CT_{name.upper()}", None)
            continue
        if isinstance(value, SecretStr):
            env[f"S4CT_{name.upper()}"] = value.get_secret_value()
        elif isinstance(value, dict | list | tuple):  # complex fields are read back as JSON
            env[f"S4CT_{name.upper()}"] = json.dumps(value)
        else:
            env[f"S4CT_{name.upper()}"] = str(value)
    env["S4CT_WORK_DIR"] = str(settings.work_path)
    return env


def _stop_child(proc: subprocess.Popen[bytes], timeout_s: float = 40.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    """SIGTERM behaves like Ctrl-C, so that every ``finally`` of :func:`serve` runs."""
    raise KeyboardInterrupt


def serve(settings: Settings, *, workers: int = 1) -> None:
    """Run everything until Ctrl-C / SIGTERM."""
    import uvicorn

    from app.api.server import uvicorn_config
    from app.main import create_app

    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    if "webhook_allow_loopback" not in settings.model_fields_set:  # development: a receiver on this machine
        settings = settings.model_copy(update={"webhook_allow_loopback": True})
    with embedded_or_external(settings) as live:
        prepare_services(live)
        key, created = ensure_dev_key(live)
        published = publish_connection(live, settings.var_dir) if settings.embedded else None
        procs = [
            subprocess.Popen([sys.executable, "-m", "app.worker"], env=worker_env(live))
            for _ in range(workers)
        ]
        try:
            base = f"http://{live.host}:{live.port}"
            banner = [
                "",
                f"Service4CT API on {base}   (OpenAPI docs: {base}/docs)",
                f"dev API key: {key}" if created else f"dev API key: in {live.var_dir / 'dev-api-key'}",
                f"services: postgres {_redact(live.database_url)}, redis {_redact(live.redis_url)}, "
                f"s3 {live.s3_endpoint}",
                "the demo model is NOT FOR CLINICAL USE",
                "",
            ]
            print("\n".join(banner), flush=True)
            config = uvicorn_config(create_app(live), live)
            server = uvicorn.Server(config)
            server.run()
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            for p in procs:
                _stop_child(p)
            if published is not None:
                published.unlink(missing_ok=True)
            time.sleep(0.1)


def _redact(url: str | None) -> str:
    """``url`` without its credentials: user:password and the query (``?password=…``) become "…"."""
    if not url:
        return str(url)
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    netloc = f"…@{host}" if "@" in parts.netloc else host
    return f"{parts.scheme}://{netloc}{parts.path}" + ("?…" if parts.query else "")
