"""Architecture rules that tests can enforce: app/ never loads torch, ml/ is a pure library."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def test_app_outside_worker_never_imports_torch() -> None:
    offenders = []
    for p in (ROOT / "app").rglob("*.py"):
        if "worker" in p.relative_to(ROOT / "app").parts:
            continue
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):  # anywhere, lazily inside functions too: torch work belongs to ml/
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] == "torch" for n in names):
                offenders.append(str(p.relative_to(ROOT)))
    assert offenders == []


def test_importing_app_modules_does_not_load_torch() -> None:
    mods = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in (ROOT / "app").rglob("*.py")
        if "worker" not in p.parts and p.name != "__main__.py"
    )
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in mods)
        + ("bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\nprint(len(bad))\n")
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0", f"torch loaded by importing {mods}"


def test_ml_never_imports_app_nor_reads_env() -> None:
    for p in (ROOT / "ml").rglob("*.py"):
        assert "app" not in _imports(p), p
        text = p.read_text()
        assert "os.environ" not in text and "getenv" not in text, p
