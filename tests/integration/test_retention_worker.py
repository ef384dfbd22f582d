"""The retention janitor inside a real worker process: its janitor thread deletes what is past
its client's retention, files included, and keeps the rest."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import LiveApi, list_keys, new_key, storage_of, wait_for, wait_job  # type: ignore[import-not-found]
from seeding import create_job, small_zip, upload  # type: ignore[import-not-found]

from app.config import Settings
from app.db import connect


@pytest.fixture(scope="module")
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(retention_days=1, retention_interval_s=0.5)


def test_the_workers_janitor_applies_the_retention(api: LiveApi, settings: Settings, worker: object) -> None:
    with api.client(new_key(settings, "janitor-site")) as c:
        study = upload(c, small_zip("janitor"))
        old, new = create_job(c, study), create_job(c, study)
        for job in (old, new):  # the worker runs them (not DICOM: failed, which is finished too)
            assert wait_job(c, job)["state"] == "failed"
        storage = storage_of(settings)
        for job in (old, new):
            storage.put_bytes(f"jobs/{job}/attempt-1/saliency/x.png", b"x")
        with connect(str(settings.database_url)) as conn:
            conn.execute("UPDATE jobs SET created_at = now() - interval '2 days' WHERE id = %s", (old,))
        wait_for(lambda: c.get(f"/v1/jobs/{old}").status_code == 404, timeout=60, what="the janitor")
        assert list_keys(storage, f"jobs/{old}/") == []
        assert c.get(f"/v1/jobs/{new}").status_code == 200  # less than a day old: kept
        assert c.get(f"/v1/studies/{study}").status_code == 200
        assert list_keys(storage, f"jobs/{new}/") != []
