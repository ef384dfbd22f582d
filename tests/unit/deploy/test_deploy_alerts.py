"""deploy/prometheus: the alert rules pass ``promtool check rules`` and their unit tests
(``promtool test rules``), the PrometheusRule of deploy/k8s/monitoring carries the same groups,
and every series they read is one the service exports. Skips the promtool checks when promtool
is not installed (Debian: ``apt-get install prometheus``)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from s4ct_deploy import ROOT

from app.config import Settings
from app.drift import DriftFigures, drift_families

RULES = ROOT / "deploy" / "prometheus" / "service4ct-rules.yml"
RULES_TEST = ROOT / "deploy" / "prometheus" / "service4ct-rules.test.yml"
OPERATOR = ROOT / "deploy" / "k8s" / "monitoring"


def _promtool(*args: str, cwd: Path = RULES.parent) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool is not installed")
    return subprocess.run([exe, *args], check=False, capture_output=True, text=True, timeout=60, cwd=cwd)


def test_rules_pass_promtool_check() -> None:
    r = _promtool("check", "rules", RULES.name)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 4 rules found" in r.stdout


def test_rules_unit_tests_pass() -> None:
    r = _promtool("test", "rules", RULES_TEST.name)
    assert r.returncode == 0, r.stdout + r.stderr


def test_rules_unit_tests_can_fail(tmp_path: Path) -> None:
    """A threshold that the test series never cross: promtool reports the missing alert."""
    (tmp_path / RULES.name).write_text(RULES.read_text().replace('kind="psi_alert"', 'kind="psi_never"'))
    (tmp_path / RULES_TEST.name).write_text(RULES_TEST.read_text())
    r = _promtool("test", "rules", RULES_TEST.name, cwd=tmp_path)
    assert r.returncode != 0 and "Service4ctInputDrift" in r.stdout + r.stderr


def test_prometheus_rule_equals_the_rule_file() -> None:
    doc = yaml.safe_load((OPERATOR / "prometheusrule.yaml").read_text())
    assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["kind"] == "PrometheusRule"
    assert doc["spec"] == yaml.safe_load(RULES.read_text())
    kust = yaml.safe_load((OPERATOR / "kustomization.yaml").read_text())
    assert kust["resources"] == ["prometheusrule.yaml"]


def test_rules_read_exported_series_and_every_threshold_setting() -> None:
    s = Settings()
    families = drift_families({"m": DriftFigures(jobs=1, psi={"probability": 0.0})}, s)
    exported = {f.name for f in families}
    kinds = {
        sample.labels["kind"] for f in families if f.name == "s4ct_drift_threshold" for sample in f.samples
    }
    groups = yaml.safe_load(RULES.read_text())["groups"]
    exprs = [r["expr"] for g in groups for r in g["rules"]]
    used = {w for e in exprs for w in re.findall(r"\bs4ct_[a-z_]+", e)}
    assert used <= exported, used - exported
    assert {k for e in exprs for k in re.findall(r'kind="([a-z_]+)"', e)} == kinds
