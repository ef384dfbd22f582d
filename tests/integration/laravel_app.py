"""The Laravel app of deploy/laravel run for real: artisan commands, queue workers, ``php -S``.

The app runs on Debian's packaged framework (php-laravel-framework 8.83, php-guzzlehttp-guzzle,
php-redis, php-curl; :func:`missing` says what is absent). Each :class:`LaravelApp` has its own
storage directory (JSON log lines in ``logs/laravel.json.log``, read back by :meth:`records`),
its own framework cache files and its own Redis databases, so that nothing is written into the
repository and no other user of the Redis server is touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
APP_DIR = ROOT / "deploy" / "laravel"
PHP = shutil.which("php")
REQUIRED_FILES = ("Illuminate/autoload.php", "GuzzleHttp/autoload.php")
REQUIRED_EXTENSIONS = ("redis", "curl", "pcntl")


def missing() -> str | None:
    """Why the app cannot run here (None when PHP and every package it needs are installed)."""
    if PHP is None:
        return "php not installed (apt-get install php-cli)"
    probe = (
        "foreach (['" + "','".join(REQUIRED_FILES) + "'] as $f) "
        '{ if (stream_resolve_include_path($f) === false) echo "$f "; }'
        "foreach (['" + "','".join(REQUIRED_EXTENSIONS) + "'] as $e) "
        '{ if (!extension_loaded($e)) echo "ext-$e "; }'
    )
    out = subprocess.run([PHP, "-r", probe], capture_output=True, text=True, timeout=60, check=False)
    absent = (out.stdout + out.stderr).split()
    if out.returncode != 0 or absent:
        return (
            "Laravel packages missing (" + ", ".join(absent or ["php -r failed"]) + "): apt-get install "
            "php-laravel-framework php-guzzlehttp-guzzle php-redis php-curl"
        )
    return None


class LaravelApp:
    """deploy/laravel with the environment ``env`` (SERVICE4CT_*, REDIS_*, ...) and storage under ``home``."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        assert PHP is not None
        self.php = PHP
        self.home = home
        self.storage = home / "storage"
        for sub in ("logs", "framework/cache/data"):
            (self.storage / sub).mkdir(parents=True, exist_ok=True)
        cache = home / "bootstrap-cache"
        cache.mkdir(parents=True, exist_ok=True)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("S4CT_", "SERVICE4CT_", "REDIS_"))}
        self.env = {
            **base,
            "APP_ENV": "testing",
            "LARAVEL_STORAGE_PATH": str(self.storage),
            "APP_SERVICES_CACHE": str(cache / "services.php"),
            "APP_PACKAGES_CACHE": str(cache / "packages.php"),
            "APP_CONFIG_CACHE": str(cache / "config.php"),
            "APP_ROUTES_CACHE": str(cache / "routes.php"),
            "APP_EVENTS_CACHE": str(cache / "events.php"),
            "LOG_CHANNEL": "json",
            **env,
        }
        self.log = self.storage / "logs" / "laravel.json.log"
        self._procs: list[subprocess.Popen[bytes]] = []

    def with_env(self, **env: str) -> LaravelApp:
        """The same app (same storage, so the same log) with some variables changed."""
        other = LaravelApp.__new__(LaravelApp)
        other.__dict__.update(self.__dict__)
        other.env = {**self.env, **env}
        other._procs = self._procs
        return other

    # ------------------------------------------------------------------ processes
    def artisan(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.php, "artisan", *args],
            cwd=APP_DIR,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _spawn(self, args: list[str], name: str) -> subprocess.Popen[bytes]:
        out = (self.home / f"{name}.out").open("ab")
        proc = subprocess.Popen(
            args, cwd=APP_DIR, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        out.close()
        self._procs.append(proc)
        return proc

    def queue_worker(self, *extra: str) -> subprocess.Popen[bytes]:
        """``php artisan queue:work redis`` in its own process group."""
        return self._spawn([self.php, "artisan", "queue:work", "redis", "--sleep=1", *extra], "worker")

    def http_server(self, port: int) -> subprocess.Popen[bytes]:
        """``php -S 127.0.0.1:PORT -t public``, ready when it answers."""
        proc = self._spawn([self.php, "-S", f"127.0.0.1:{port}", "-t", "public"], "php-s")
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
                return proc
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"php -S did not start: {self.output('php-s')}")
            time.sleep(0.1)

    def output(self, name: str) -> str:
        path = self.home / f"{name}.out"
        return path.read_text(errors="replace")[-4000:] if path.is_file() else ""

    @staticmethod
    def kill(proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL the process group (the worker dies mid-job, as on an OOM kill or a node loss)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                self.kill(proc)

    # ------------------------------------------------------------------ the log
    def records(self, message: str | None = None, **context: Any) -> list[dict[str, Any]]:
        """Log records (JSON lines) with this message whose context holds ``context``."""
        if not self.log.is_file():
            return []
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                ctx = rec.get("context") or {}
                if (message is None or rec.get("message") == message) and all(
                    ctx.get(k) == v for k, v in context.items()
                ):
                    found.append(rec)
        return found

    def crashes(self) -> list[dict[str, Any]]:
        """Records of exceptions that reached Laravel's handler (a job or a request that crashed)."""
        return [r for r in self.records() if "exception" in (r.get("context") or {})]

    def wait_record(self, message: str, timeout: float = 300, **context: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        crashes = len(self.crashes())
        while True:
            recs = self.records(message, **context)
            if recs:
                return recs[0]
            if len(self.crashes()) > crashes or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-4000:] if self.log.is_file() else "(no log)"
                raise AssertionError(f"no log record {message!r} {context} (or an exception):\n{tail}")
            time.sleep(0.1)
