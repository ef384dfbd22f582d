"""Container healthcheck (stdlib only): ``healthcheck.py api`` or ``healthcheck.py worker``.

api: GET http://127.0.0.1:$S4CT_PORT/healthz must answer 200.
worker: GET http://127.0.0.1:$S4CT_WORKER_METRICS_PORT/metrics must answer 200 (the metrics
server starts before the model loads); without that setting there is nothing to probe and the
check passes (the worker's liveness is then its heartbeat in PostgreSQL, seen by /readyz).
"""

from __future__ import annotations

import os
import sys
import urllib.request


def url_for(role: str, env: dict[str, str]) -> str | None:
    if role == "api":
        return f"http://127.0.0.1:{env.get('S4CT_PORT') or '8000'}/healthz"
    if role == "worker":
        port = env.get("S4CT_WORKER_METRICS_PORT")
        return f"http://127.0.0.1:{port}/metrics" if port else None
    raise SystemExit(f"usage: {sys.argv[0]} api|worker")


def main() -> int:
    url = url_for(sys.argv[1] if len(sys.argv) > 1 else "api", dict(os.environ))
    if url is None:
        return 0
    try:
        with urllib.request.urlopen(url, timeout=4) as resp:
            return 0 if resp.status == 200 else 1
    except OSError as e:
        print(f"unhealthy: {url}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
