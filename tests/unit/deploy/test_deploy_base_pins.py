"""deploy/docker/build.sh builds only from a pinned base image (docs/security.md, "Supply chain").

Run with ``S4CT_DRY_RUN=1``: the pin check runs as in a real build, the engine commands are
printed instead of run. A registry image must carry ``@sha256:<digest>``; a local image (the
offline base of deploy/docker/offline/base.sh, which no registry knows) is accepted when its
image ID, read with ``<engine> image inspect``, equals ``PYTHON_IMAGE_ID``. For that case the
engine is a small script that answers ``image inspect`` like docker does (no engine runs here;
tests/images builds real images).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from s4ct_deploy import ROOT

BUILD = ROOT / "deploy" / "docker" / "build.sh"
DIGEST = "sha256:" + "ab" * 32
LOCAL_ID = "sha256:" + "0c" * 32


def build(tmp: Path, **env: str) -> subprocess.CompletedProcess[str]:
    engine = tmp / "engine"
    if not engine.exists():  # answers `image inspect --format {{.Id}} localhost/base:x` only
        engine.write_text(
            "#!/bin/sh\n"
            '[ "$1 $2" = "image inspect" ] && [ "$5" = localhost/base:x ] && '
            f"echo {LOCAL_ID} && exit 0\n"
            "exit 1\n"
        )
        engine.chmod(0o755)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("S4CT_", "PYTHON_IMAGE"))}
    return subprocess.run(
        ["bash", str(BUILD)],
        env={**base, "S4CT_ENGINE": str(engine), "S4CT_DRY_RUN": "1", **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def builds(r: subprocess.CompletedProcess[str]) -> list[str]:
    return [ln for ln in r.stdout.splitlines() if ln.startswith("+ ") and " build " in ln]


def test_the_dockerfile_default_is_pinned_and_builds(tmp_path: Path) -> None:
    r = build(tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(builds(r)) == 2 and "PYTHON_IMAGE=" not in r.stdout  # the Dockerfile's own digest
    assert "warning" not in r.stderr


def test_a_tag_only_base_is_refused(tmp_path: Path) -> None:
    for ref in ("python:3.11-slim-bookworm", "python@sha256:short", "localhost/base:x"):
        r = build(tmp_path, PYTHON_IMAGE=ref)
        assert r.returncode == 4, (ref, r.stdout, r.stderr)
        assert "is not pinned" in r.stderr and not builds(r), ref


def test_an_unpinned_base_builds_only_when_allowed(tmp_path: Path) -> None:
    r = build(tmp_path, PYTHON_IMAGE="python:3.11-slim-bookworm", S4CT_ALLOW_UNPINNED="1")
    assert r.returncode == 0, r.stderr
    assert "unpinned base image python:3.11-slim-bookworm" in r.stderr
    assert all("--build-arg PYTHON_IMAGE=python:3.11-slim-bookworm" in b for b in builds(r))


def test_a_digest_pinned_base_is_accepted(tmp_path: Path) -> None:
    ref = f"registry.example/python:3.11-slim-bookworm@{DIGEST}"
    r = build(tmp_path, PYTHON_IMAGE=ref)
    assert r.returncode == 0, r.stderr
    assert len(builds(r)) == 2 and all(f"--build-arg PYTHON_IMAGE={ref}" in b for b in builds(r))


def test_a_local_base_is_checked_against_its_image_id(tmp_path: Path) -> None:
    by_id = build(tmp_path, PYTHON_IMAGE=LOCAL_ID.removeprefix("sha256:"))  # FROM <image id>: immutable
    assert by_id.returncode == 0, by_id.stderr
    ok = build(tmp_path, PYTHON_IMAGE="localhost/base:x", PYTHON_IMAGE_ID=LOCAL_ID)
    assert ok.returncode == 0, ok.stderr
    assert len(builds(ok)) == 2
    bare = build(tmp_path, PYTHON_IMAGE="localhost/base:x", PYTHON_IMAGE_ID=LOCAL_ID.removeprefix("sha256:"))
    assert bare.returncode == 0, bare.stderr  # the ID with or without its sha256: prefix
    other = build(tmp_path, PYTHON_IMAGE="localhost/base:x", PYTHON_IMAGE_ID="sha256:" + "ee" * 32)
    assert other.returncode == 4 and f"has ID {LOCAL_ID}" in other.stderr and not builds(other)
    missing = build(tmp_path, PYTHON_IMAGE="localhost/other:y", PYTHON_IMAGE_ID=LOCAL_ID)
    assert missing.returncode == 4 and "not found" in missing.stderr


def test_the_offline_base_script_prints_the_id_to_pin() -> None:
    text = (ROOT / "deploy" / "docker" / "offline" / "base.sh").read_text()
    assert "image inspect --format '{{.Id}}'" in text and "PYTHON_IMAGE_ID" in text
