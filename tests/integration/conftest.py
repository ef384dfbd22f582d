"""Real PostgreSQL, Redis and S3 for the service tests (embedded, started once per session).

Nothing is mocked: the fixtures start the same embedded services as
``service4ct serve``, a real API on a loopback port (uvicorn in a thread) and,
where a test needs one, a real worker (in-process threads + a spawned
preprocessing pool).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from app.api.server import uvicorn_config
from app.config import Settings
from app.db import connect
from app.devstack import EmbeddedStack
from app.main import create_app
from app.migrate import migrate
from app.repository import create_api_key
from app.storage import Storage, storage_from_settings

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def running_stack(root: Path) -> Iterator[EmbeddedStack]:
    """An embedded stack under ``root`` for tests (no fsync, nothing persisted), stopped on exit."""
    s = EmbeddedStack(root, fsync=False, persist=False)
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    with running_stack(tmp_path_factory.mktemp("stack")) as s:
        yield s


def _fresh_settings(stack: EmbeddedStack, tmp: Path, **overrides: Any) -> Settings:
    """Settings on a new database and bucket of the shared stack (tests stay independent)."""
    name = "t" + uuid.uuid4().hex[:12]
    db_url = stack.create_database(name)
    (tmp / "handoff").mkdir(parents=True, exist_ok=True)
    base = Settings(
        s3_bucket=name,
        work_dir=tmp / "work",
        handoff_dir=str(tmp / "handoff"),  # the tests' own: what a worker leaves there is checked
        var_dir=tmp / "var",
        weights_cache_dir=tmp / "weights",
        heartbeat_s=0.5,
        reconcile_s=1.0,
        claim_idle_s=2.0,
        lease_s=30.0,
        max_wait_ms=50,
        webhook_backoff_s=0.2,
        webhook_backoff_max_s=1.0,
        webhook_allow_loopback=True,  # the test receivers listen on 127.0.0.1
        device="cpu",
        metrics_port=0,  # Prometheus on its own ephemeral loopback port (app.state.metrics_port)
    ).with_services(
        database_url=db_url,
        redis_url=stack.redis_url,
        s3_endpoint=stack.s3_endpoint,
        s3_access_key=stack.s3_access_key,
        s3_secret_key=stack.s3_secret_key,
    )
    settings = base.model_copy(update={"stream": f"s4ct:{name}", **overrides})
    with connect(db_url) as conn:
        migrate(conn)
    storage_of(settings).ensure_bucket()
    return settings


def storage_of(settings: Settings) -> Storage:
    return storage_from_settings(settings)


def list_keys(storage: Storage, prefix: str) -> list[str]:
    return list(storage.list_keys(prefix))


@pytest.fixture(scope="module")
def settings(stack: EmbeddedStack, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return _fresh_settings(stack, tmp_path_factory.mktemp("svc"))


@pytest.fixture(scope="session")
def make_settings(stack: EmbeddedStack, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        return _fresh_settings(stack, tmp_path_factory.mktemp("svc"), **overrides)

    return make


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveApi:
    """The API served by uvicorn on a loopback port, in a thread of the test process."""

    def __init__(self, settings: Settings, services: Any = None) -> None:
        self.settings = settings
        self.app = create_app(settings, services)
        self._serve_on(free_port())

    def _serve_on(self, port: int) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{self.port}"
        config = uvicorn_config(self.app, self.settings, host="127.0.0.1", port=self.port, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveApi:
        for attempt in range(3):
            self.thread.start()
            deadline = time.monotonic() + 30
            while not self.server.started:
                if time.monotonic() > deadline:
                    raise RuntimeError("API did not start")
                if not self.thread.is_alive():
                    break  # the free port was taken meanwhile by another process: try another
                time.sleep(0.02)
            if self.server.started:
                return self
            if attempt < 2:
                self._serve_on(free_port())
        raise RuntimeError("API did not start")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def client(self, key: str | None = None, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=60, **kw)


@pytest.fixture(scope="module")
def api(settings: Settings) -> Iterator[LiveApi]:
    with LiveApi(settings) as live:
        yield live


@pytest.fixture(scope="module")
def worker(settings: Settings, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A real worker (model loaded, preprocessing pool spawned) serving the module's settings."""
    from app.worker.runner import Worker

    w = Worker(settings, worker_id=f"worker-{request.module.__name__}")
    w.start()
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    try:
        yield w
    finally:
        w.stop_event.set()
        t.join(timeout=10)
        w.stop(drain_s=5)


def new_key(settings: Settings, client: str) -> str:
    assert settings.database_url
    with connect(settings.database_url) as conn:
        return create_api_key(conn, client, "test")[1]


def wait_for(
    predicate: Callable[[], Any], timeout: float = 120.0, interval: float = 0.1, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def wait_job(client: httpx.Client, job_id: str, timeout: float = 180.0) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        r = client.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body if body["state"] in ("succeeded", "failed") else None

    result: dict[str, Any] = wait_for(done, timeout=timeout, interval=0.2, what=f"job {job_id}")
    return result


class Receiver:
    """A real HTTP server collecting webhook deliveries (status codes scripted per call)."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        self.statuses = list(statuses or [])
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                outer.requests.append(
                    {"headers": dict(self.headers), "body": body, "path": self.path, "at": time.monotonic()}
                )
                status = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(r["body"]) for r in self.requests]


@contextlib.contextmanager
def dispatching(
    settings: Settings, resolver: Callable[[str, int], list[str]] | None = None, *, thread: bool = False
) -> Iterator[Any]:
    """A webhook dispatcher on its own pool (its loop running when ``thread``), stopped on exit."""
    from app.callbacks import system_resolver
    from app.db import Database
    from app.webhooks import WebhookDispatcher

    assert settings.database_url
    db = Database(settings.database_url, min_size=1, max_size=4, name="webhook-test")
    db.open()
    d = WebhookDispatcher(db, settings, resolver=resolver or system_resolver)
    if thread:
        d.start()
    try:
        yield d
    finally:
        d.stop()
        db.close()


def run_cli(
    settings: Settings, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``service4ct ARGS`` in a subprocess against ``settings``' database (no other S4CT_ setting)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("S4CT_")}
    clean["S4CT_DATABASE_URL"] = str(settings.database_url)
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
