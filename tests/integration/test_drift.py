"""Drift gauges through the real service: worker observations, PSI on the API's metrics port.

Real jobs (upload → worker with the demo model → result) store their drift observation; the
window is then filled through the real storage layer (job rows and observations written with
the repository's functions) so that it holds enough studies without running a hundred models:

- an unshifted stream (the demo model's training grid, 2.5 mm slices; the other rows follow the
  model's reference histograms) leaves every ``s4ct_drift_psi`` under the alert threshold;
- a shifted stream (thick-slice phantoms, 5 mm: real jobs, and rows with their observations)
  drives ``s4ct_drift_psi{signal="slice_thickness_mm"}`` over it.

Deleting a job deletes its observation.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import LiveApi, new_key, wait_job  # type: ignore[import-not-found]
from prometheus_client.parser import text_string_to_metric_families
from seeding import create_job, upload  # type: ignore[import-not-found]

from app.config import Settings
from app.db import connect
from app.repository import claim_job, finish_job, insert_job
from app.repository.drift import DRIFT_COLUMNS, drift_window, insert_drift_observation
from ml.evaluate.drift import DriftReference, NumericBins
from ml.model import Manifest
from ml.phantom import make_study

CLIENT = "site-drift"
WINDOW = 100
GRID: dict[str, Any] = {"rows": 128, "cols": 128, "pixel_spacing_mm": 3.0}


@pytest.fixture(scope="module")
def settings(make_settings: Any) -> Settings:
    s: Settings = make_settings(
        drift_window_jobs=WINDOW, drift_min_jobs=WINDOW // 2, drift_refresh_s=0.0, max_batch=1
    )
    return s


@pytest.fixture(scope="module")
def client(api: LiveApi, worker: Any, settings: Settings) -> Iterator[httpx.Client]:
    with api.client(new_key(settings, CLIENT)) as c:
        yield c


def _reference(settings: Settings) -> DriftReference:
    entry = Manifest.load(settings.manifest_path).get(None)
    raw = entry.metrics.get("drift_reference")
    assert raw is not None, "the demo model's manifest entry has no drift_reference"
    return DriftReference.from_dict(raw)


def _scrape(api: LiveApi) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    text = httpx.get(f"http://127.0.0.1:{api.app.state.metrics_port}/metrics", timeout=30).text
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def _psi(metrics: dict[str, Any], model: str) -> dict[str, float]:
    return {
        dict(k)["signal"]: v
        for k, v in metrics.get("s4ct_drift_psi", {}).items()
        if dict(k)["model"] == model
    }


def _predict(c: httpx.Client, zip_path: Path) -> str:
    job = create_job(c, upload(c, zip_path.read_bytes()), explain="none")
    assert wait_job(c, job)["state"] == "succeeded"
    return job


def _phantom(path: Path, seed: int, slice_spacing_mm: float) -> Path:
    return make_study(path, seed=seed, slice_spacing_mm=slice_spacing_mm, **GRID).zip_path


def _observation(settings: Settings, job: str) -> dict[str, Any]:
    assert settings.database_url
    with connect(settings.database_url) as conn:
        row = conn.execute("SELECT * FROM drift_observations WHERE job_id = %s", (job,)).fetchone()
    assert row is not None, f"job {job} has no drift observation"
    return dict(row)


def _bin_values(bins: NumericBins, n: int, top: float | None = None) -> list[float]:
    """``n`` values spread over the bins as the reference's shares (largest remainder)."""
    exact = [s * n for s in bins.shares]
    counts = [int(x) for x in exact]
    for i in sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])[: n - sum(counts)]:
        counts[i] += 1
    edges = list(bins.edges)
    # bins are right-closed: an edge belongs to the bin it closes; the last bin: above the last edge
    reps = [*edges, (edges[-1] + top) / 2 if top is not None else edges[-1] + 1.0]
    return [reps[i] for i, c in enumerate(counts) for _ in range(c)]


def _fill(settings: Settings, observations: list[dict[str, Any]]) -> None:
    """Succeeded job rows and their observations, through the repository (as a worker writes them)."""
    assert settings.database_url
    with connect(settings.database_url) as conn:
        study = {"id": None, "sha256": "0" * 64}
        for obs in observations:
            job = insert_job(
                conn,
                client=CLIENT,
                study=study,
                model=str(obs["model"]),
                series_uid=None,
                explain="none",
                explain_params={},
                callback_url=None,
                max_attempts=1,
            )
            claimed = claim_job(conn, job.id, "drift-seed", 60.0)
            assert claimed is not None
            assert finish_job(conn, job.id, claimed.attempt, timings={"total": 0.1}) is not None
            insert_drift_observation(conn, job.id, {k: obs[k] for k in DRIFT_COLUMNS})


def test_unshifted_stream_stays_under_the_threshold_and_thick_slices_cross_it(
    client: httpx.Client, api: LiveApi, settings: Settings, tmp_path: Path
) -> None:
    ref = _reference(settings)
    model = Manifest.load(settings.manifest_path).default
    metrics = _scrape(api)
    thresholds = {dict(k)["kind"]: v for k, v in metrics["s4ct_drift_threshold"].items()}
    assert thresholds["psi_alert"] == settings.drift_psi_alert
    assert _psi(metrics, model) == {}  # an empty window exports no PSI

    # unshifted: two real jobs on the demo model's grid, the rest of the window as the reference
    real = [
        _predict(
            client, make_study(tmp_path / f"in{i}.zip", seed=40 + i, slice_spacing_mm=2.5, **GRID).zip_path
        )
        for i in range(2)
    ]
    seen = [_observation(settings, j) for j in real]
    assert {o["slice_thickness_mm"] for o in seen} == {2.5} and all(o["model"] == model for o in seen)
    n = WINDOW - len(real)
    columns = {k: _bin_values(b, n, 1.0 if k == "probability" else None) for k, b in ref.numeric.items()}
    rows = [
        {**seen[i % 2], **{k: v[i] for k, v in columns.items()}, "ood_flagged": False, "indeterminate": False}
        for i in range(n)
    ]
    _fill(settings, rows)
    metrics = _scrape(api)
    psi = _psi(metrics, model)
    assert set(psi) >= {"probability", "slice_thickness_mm", "kernel", "manufacturer"}, psi
    assert max(psi.values()) < settings.drift_psi_alert, psi
    assert metrics["s4ct_drift_window_jobs"][(("model", model),)] == WINDOW
    assert 0.0 <= metrics["s4ct_ood_flag_rate"][(("model", model),)] <= 2 / WINDOW
    assert 0.0 <= metrics["s4ct_indeterminate_rate"][(("model", model),)] <= 2 / WINDOW

    # shifted: thick-slice (5 mm) phantoms, real jobs and the rest of the window like them
    thick = [
        _predict(
            client, make_study(tmp_path / f"t{i}.zip", seed=60 + i, slice_spacing_mm=5.0, **GRID).zip_path
        )
        for i in range(2)
    ]
    shifted = [_observation(settings, j) for j in thick]
    assert {o["slice_thickness_mm"] for o in shifted} == {5.0}
    _fill(settings, [shifted[i % 2] for i in range(WINDOW - len(thick))])
    psi = _psi(_scrape(api), model)
    assert psi["slice_thickness_mm"] > settings.drift_psi_alert, psi

    # the window by hours too: everything here is minutes old
    assert settings.database_url
    with connect(settings.database_url) as conn:
        assert len(drift_window(conn, model, 10, hours=1.0)) == 10
        assert drift_window(conn, model, 10, hours=1e-9) == []

    # an observation goes with its job
    assert client.delete(f"/v1/jobs/{thick[0]}").status_code == 204
    assert settings.database_url
    with connect(settings.database_url) as conn:
        assert (
            conn.execute("SELECT 1 FROM drift_observations WHERE job_id = %s", (thick[0],)).fetchone() is None
        )
