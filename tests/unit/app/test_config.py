"""Settings: precedence of YAML, environment and overrides; secrets kept out of reprs."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import load_settings
from app.devstack.serve import worker_env


def test_settings_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text("max_batch: 8\nport: 9000\ns3_bucket: from-yaml\n")
    monkeypatch.setenv("S4CT_PORT", "9100")
    s = load_settings(cfg, s3_bucket="from-override")
    assert (s.max_batch, s.port, s.s3_bucket) == (8, 9100, "from-override")
    assert s.embedded and s.work_path == Path("var/work")
    with pytest.raises(ValueError, match="S4CT_DATABASE_URL"):
        s.require_services()
    cfg.write_text("no_such_setting: 1\n")
    with pytest.raises(ValueError):
        load_settings(cfg)
    monkeypatch.setenv("S4CT_MAX_BATCH", "0")
    with pytest.raises(ValueError):
        load_settings(None)


def test_secrets_are_not_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S4CT_S3_SECRET_KEY", "very-secret-value")
    s = load_settings(None)
    assert "very-secret-value" not in repr(s) and "very-secret-value" not in str(s.model_dump())


def test_cors_origins_from_the_environment_and_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S4CT_CORS_ORIGINS", " https://worklist.example.org, http://127.0.0.1:5173 ")
    assert load_settings().cors_origins == ["https://worklist.example.org", "http://127.0.0.1:5173"]
    monkeypatch.setenv("S4CT_CORS_ORIGINS", "")
    assert load_settings().cors_origins == []
    # the JSON list a parent process hands its worker (app.devstack.serve.worker_env)
    monkeypatch.setenv("S4CT_CORS_ORIGINS", '["https://worklist.example.org"]')
    assert load_settings().cors_origins == ["https://worklist.example.org"]
    monkeypatch.setenv("S4CT_CORS_ORIGINS", "[]")
    assert load_settings().cors_origins == []
    env = worker_env(load_settings(cors_origins="https://a.example.org,https://b.example.org"))
    monkeypatch.setenv("S4CT_CORS_ORIGINS", env["S4CT_CORS_ORIGINS"])
    assert load_settings().cors_origins == ["https://a.example.org", "https://b.example.org"]
    monkeypatch.delenv("S4CT_CORS_ORIGINS")
    cfg = tmp_path / "s.yaml"
    cfg.write_text("s3_cors_origins: ['*']\n")
    assert load_settings(cfg).s3_cors_origins == ["*"]
    for bad in ("https://worklist.example.org/app", "worklist.example.org", "ftp://x"):
        with pytest.raises(ValueError, match="is not an origin"):
            load_settings(cors_origins=bad)
