"""Warm start: the worker registers (``/readyz`` ready) only after its pool and its own pipeline are warm.

Before the heartbeat row exists, the preprocessing processes have started and run their
warm-up (imports, a synthetic volume), and this process has imported Captum and run a
synthetic study through the model, Grad-CAM and the writers.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import LiveApi, wait_for

from app.config import Settings
from app.db import connect
from app.worker import runner as runner_module
from app.worker.runner import Worker


def _registered(settings: Settings, worker_id: str) -> bool:
    assert settings.database_url
    with connect(settings.database_url) as conn:
        row = conn.execute("SELECT 1 FROM workers WHERE worker_id = %s", (worker_id,)).fetchone()
    return row is not None


def test_ready_only_once_warm(settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    gate, inside = threading.Event(), threading.Event()
    seen: dict[str, Any] = {}
    real = runner_module.warm_up

    def gated(predictor: Any, workdir: Path) -> None:
        real(predictor, workdir)
        seen["captum"] = "captum" in sys.modules
        seen["workdir_empty"] = not any(Path(workdir).iterdir())  # the synthetic study's files are gone
        inside.set()
        gate.wait(60)

    monkeypatch.setattr(runner_module, "warm_up", gated)
    with LiveApi(settings) as api:
        w = Worker(settings, worker_id="worker-warm")
        starting = threading.Thread(target=w.start, daemon=True)
        starting.start()
        try:
            assert inside.wait(300), "warm-up did not run"
            # warm but not yet registered: not ready, no heartbeat row
            assert not _registered(settings, "worker-warm")
            with api.client() as c:
                assert c.get("/readyz").status_code == 503
            gate.set()
            starting.join(300)
            assert w.warm_up_s is not None and w.warm_up_s > 0
            assert seen == {"captum": True, "workdir_empty": True}
            pool = w.intake.pool
            assert pool is not None
            procs = list(pool._processes.values())  # started before any job, one per setting
            assert len(procs) == settings.preprocess_workers and all(p.is_alive() for p in procs)
            assert all(p.pid != os.getpid() for p in procs)
            assert _registered(settings, "worker-warm")
            with api.client() as c:
                wait_for(lambda: c.get("/readyz").status_code == 200, timeout=30, what="ready")
        finally:
            gate.set()
            starting.join(60)
            w.stop(drain_s=1)
