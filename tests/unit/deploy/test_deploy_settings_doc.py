"""docs/operations.md: its settings reference is generated from Settings and up to date."""

from __future__ import annotations

import re
import subprocess
import sys

from s4ct_deploy import ROOT, setting_env_names

sys.path.insert(0, str(ROOT / "deploy"))
import gen_settings_doc

from app.config import Settings


def test_the_settings_reference_is_up_to_date() -> None:
    text = gen_settings_doc.DOC.read_text()
    assert gen_settings_doc.updated(text) == text, "run: python deploy/gen_settings_doc.py"
    out = subprocess.run(
        [sys.executable, "deploy/gen_settings_doc.py", "--check"], check=False, cwd=ROOT, capture_output=True
    )
    assert out.returncode == 0, out.stderr


def test_every_setting_has_one_row_with_its_default() -> None:
    block = gen_settings_doc.render()
    for name, field in Settings.model_fields.items():
        rows = [ln for ln in block.splitlines() if ln.startswith(f"| `S4CT_{name.upper()}` |")]
        assert len(rows) == 1, name
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", rows[0].strip().strip("|"))]
        assert cells[1] in ("api", "worker", "both"), (name, cells[1])
        if field.default is not None and not isinstance(field.default, bool) and name != "manifest_path":
            assert str(field.default) in cells[3], (name, cells[3])


def test_a_stale_reference_is_detected() -> None:
    text = gen_settings_doc.DOC.read_text()
    stale = text.replace("| `S4CT_MAX_BATCH` |", "| `S4CT_MAX_BATCHES` |")
    assert gen_settings_doc.updated(stale) != stale


def test_every_s4ct_name_in_code_and_deploy_files_is_a_setting_and_documented() -> None:
    known = setting_env_names()
    doc = gen_settings_doc.DOC.read_text()
    files = [*ROOT.joinpath("app").rglob("*.py"), ROOT / "Dockerfile", ROOT / "docker-compose.yml"]
    files += [*ROOT.joinpath("deploy").rglob("*.yaml"), *ROOT.joinpath("deploy").rglob("*.py")]
    for path in files:
        for name in set(re.findall(r"\bS4CT_[A-Z0-9_]*[A-Z0-9]\b", path.read_text())):
            assert name in known, f"{path.relative_to(ROOT)}: {name} is not a setting"
            assert name in doc, f"{name} is not in docs/operations.md"
