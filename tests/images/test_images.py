"""The api and worker images, built and run as an operator would (`make test-images`, slow).

Builds both images with docker or podman (whichever answers), starts the compose stack in stages
(deploy/docker/stack.sh) with the CPU worker, and drives it from outside only: ``migrate`` runs as
the compose one-shot, an API key is made with ``service4ct apikey`` inside the api container, a
study (``../shared/data/real-ct/cap002.zip``, a phantom when absent) is uploaded through the api
container's published port, the worker container predicts with the demo model and Grad-CAM, and
the result and the explanation are read back through the api. Then the worker container is
restarted with jobs queued and each job must finish exactly once. Everything is torn down and no
container, volume or network of the test's compose project may remain.

Without a container registry (probed, or ``S4CT_IMAGES_OFFLINE=1``) the bases come from Debian
packages: deploy/docker/offline/base.sh (mmdebstrap) makes the Python base, and
deploy/docker/offline/Dockerfile PostgreSQL, Redis and a SeaweedFS S3 store
(deploy/docker/offline/compose.yml swaps them in). The CPU torch wheel is taken from pip's
find-links when it lies there (else PyTorch's CPU index), extra CAs from
/usr/local/share/ca-certificates (``S4CT_EXTRA_CA_DIR`` overrides). ``S4CT_IMAGES_STUDY`` names
another study ZIP; ``S4CT_ENGINE`` picks the engine (``none``: skip).
"""

from __future__ import annotations

import configparser
import contextlib
import gzip
import io
import os
import re
import secrets
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

ROOT = Path(__file__).resolve().parents[2]
SHARED_STUDY = ROOT / ".." / "shared" / "data" / "real-ct" / "cap002.zip"
TORCH = "2.13.0"
OFFLINE_BASE = "localhost/service4ct-base:bookworm"
OFFLINE_SERVICES = {
    "postgres": "localhost/service4ct-offline/postgres:15",
    "redis": "localhost/service4ct-offline/redis:7",
    "s3": "localhost/service4ct-offline/s3:4.48",
}
API_IMAGE = "localhost/service4ct-api:local"
WORKER_IMAGE = "localhost/service4ct-worker:local"
CONTEXT_PATHS = (
    "Dockerfile",
    ".dockerignore",
    "pyproject.toml",
    "README.md",
    "app",
    "ml",
    "migrations",
    "weights",
    "requirements",
    "deploy/docker",
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


def log(msg: str) -> None:
    print(f"[test-images] {msg}", flush=True)


def sh(
    *cmd: str, env: dict[str, str] | None = None, timeout: float = 1800, check: bool = True, echo: bool = True
) -> str:
    """Run ``cmd`` from the repository root, echo its output (unless it holds secrets), return stdout."""
    log("$ " + " ".join(cmd))
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    out = (r.stdout + r.stderr).strip()
    if out and (echo or r.returncode != 0):
        print(out[-6000:], flush=True)
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd[0]} exited {r.returncode}")
    return r.stdout


def engine_or_skip() -> str:
    r = subprocess.run([str(ROOT / "deploy/docker/engine.sh")], capture_output=True, text=True, check=False)
    engine = r.stdout.strip()
    if r.returncode != 0 or not engine:
        pytest.skip("no container engine: neither docker nor podman answers (install one to run this test)")
    compose = ["podman-compose", "version"] if engine == "podman" else [engine, "compose", "version"]
    if subprocess.run(compose, capture_output=True, check=False).returncode != 0:
        pytest.skip(f"{engine} answers but its compose tool does not ({' '.join(compose[:-1])})")
    return engine


def registry_reachable(engine: str) -> bool:
    forced = os.environ.get("S4CT_IMAGES_OFFLINE")
    if forced is not None:
        return forced in ("0", "false", "no")
    r = subprocess.run(
        ["timeout", "60", engine, "pull", "-q", "docker.io/library/python:3.11-slim-bookworm"],
        capture_output=True,
        check=False,
    )
    return r.returncode == 0


def pip_find_links() -> list[Path]:
    """The find-links folders of pip's configuration files (where a local torch wheel may lie)."""
    files = [Path("/etc/pip.conf"), Path("/etc/xdg/pip/pip.conf"), Path.home() / ".config/pip/pip.conf"]
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    dirs = [Path(p) for p in os.environ.get("PIP_FIND_LINKS", "").split()]
    for f in files:
        cp = configparser.ConfigParser()
        if f.is_file():
            cp.read(f)
            for section in cp.sections():
                dirs += [Path(p.removeprefix("file://")) for p in cp[section].get("find-links", "").split()]
    return [d for d in dirs if d.is_dir()]


def build_context(tmp: Path) -> tuple[Path, dict[str, str]]:
    """A clean build context (sources, extra CAs, a local CPU torch wheel) and how the worker gets torch."""
    ctx = tmp / "context"
    for rel in CONTEXT_PATHS:
        src, dst = ROOT / rel, ctx / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dst)
    ca_dir = Path(os.environ.get("S4CT_EXTRA_CA_DIR", "/usr/local/share/ca-certificates"))
    for crt in sorted(ca_dir.glob("*.crt")) if ca_dir.is_dir() else []:
        shutil.copy2(crt, ctx / "deploy/docker/certs" / crt.name)
        log(f"extra CA for the builds: {crt.name}")
    wheel_name = f"torch-{TORCH}+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    for d in pip_find_links():
        if (d / wheel_name).is_file():
            dst = ctx / "deploy/docker/wheels" / wheel_name
            try:
                os.link(d / wheel_name, dst)
            except OSError:
                shutil.copy2(d / wheel_name, dst)
            log(f"CPU torch from the local wheel {d / wheel_name}")
            return ctx, {"WORKER_TORCH_LOCK": "requirements/torch-cpu.txt"}  # checked against its sha256
    log("CPU torch from PyTorch's CPU index")
    return ctx, {"WORKER_TORCH_SPEC": f"torch=={TORCH}+cpu --index-url https://download.pytorch.org/whl/cpu"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def study_zip(tmp: Path) -> Path:
    chosen = os.environ.get("S4CT_IMAGES_STUDY")
    if chosen:
        return Path(chosen)
    if SHARED_STUDY.is_file():
        return SHARED_STUDY
    from ml.phantom import make_study

    path = tmp / "phantom.zip"
    make_study(path, seed=21, label=1, rows=128, cols=128, pixel_spacing_mm=3.0, slice_spacing_mm=2.5)
    log("../shared/data/real-ct/cap002.zip absent: a phantom study instead")
    return path


class Stack:
    """The compose project of the test, driven through deploy/docker/stack.sh and the engine."""

    def __init__(self, engine: str, tmp: Path, offline: bool) -> None:
        self.engine, self.offline = engine, offline
        self.project = "s4ct-imgtest-" + uuid.uuid4().hex[:6]
        self.api_port, self.s3_port = free_port(), free_port()
        self.secrets = {
            "POSTGRES_PASSWORD": secrets.token_hex(16),
            "REDIS_PASSWORD": secrets.token_hex(16),
            "S3_ROOT_USER": "s4ct-admin",
            "S3_ROOT_PASSWORD": secrets.token_hex(16),
            "S3_ACCESS_KEY": "service4ct",
            "S3_SECRET_KEY": secrets.token_hex(16),
        }
        env_file = tmp / "stack.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in self.secrets.items()))
        env_file.chmod(0o600)
        files = ["docker-compose.yml"] + (["deploy/docker/offline/compose.yml"] if offline else [])
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "S4CT_"))},
            "S4CT_ENGINE": engine,
            "COMPOSE_FILE": ":".join(files),
            "COMPOSE_PROJECT_NAME": self.project,
            "COMPOSE_PROFILES": "cpu",
            "COMPOSE_ENV_FILE": str(env_file),
            "API_IMAGE": API_IMAGE,
            "WORKER_IMAGE": WORKER_IMAGE,
            "API_PORT": str(self.api_port),
            "MINIO_PORT": str(self.s3_port),
        }

    def stack(self, action: str) -> str:
        return sh(str(ROOT / "deploy/docker/stack.sh"), action, env=self.env, timeout=900)

    def container(self, service: str) -> str:
        out = subprocess.run(
            [self.engine, "ps", "-a", "--filter", f"label=com.docker.compose.project={self.project}",
             "--filter", f"label=com.docker.compose.service={service}", "--format", "{{.Names}}"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        assert out, f"no container for {service}"
        return out[0]

    def leftovers(self) -> dict[str, list[str]]:
        label = f"label=com.docker.compose.project={self.project}"
        found = {}
        for kind, cmd in (
            ("containers", ["ps", "-a", "--filter", label, "--format", "{{.Names}}"]),
            ("volumes", ["volume", "ls", "--filter", label, "--format", "{{.Name}}"]),
            ("networks", ["network", "ls", "--format", "{{.Name}}"]),
        ):
            r = subprocess.run([self.engine, *cmd], capture_output=True, text=True, check=True)
            names = r.stdout.split()
            found[kind] = [n for n in names if n.startswith(self.project)]
        return found


def build_images(engine: str, tmp: Path, offline: bool) -> None:
    ctx, torch_env = build_context(tmp)
    env = {**os.environ, "S4CT_ENGINE": engine, "BUILD_CONTEXT": str(ctx), **torch_env}
    env.update(API_IMAGE=API_IMAGE, WORKER_IMAGE=WORKER_IMAGE)
    if offline:
        have = subprocess.run([engine, "image", "exists" if engine == "podman" else "inspect", OFFLINE_BASE],
                              capture_output=True, check=False).returncode == 0  # fmt: skip
        if not have:
            if shutil.which("mmdebstrap") is None:
                pytest.skip("no registry and no mmdebstrap to build the Python base from Debian packages")
            sh(str(ROOT / "deploy/docker/offline/base.sh"), OFFLINE_BASE, env=env)
        env["PYTHON_IMAGE"] = OFFLINE_BASE
        env["PYTHON_IMAGE_ID"] = subprocess.run(  # build.sh builds from that very image only
            [engine, "image", "inspect", "--format", "{{.Id}}", OFFLINE_BASE],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        fmt = ["--format", "docker"] if engine == "podman" else []
        # podman builds FROM the base's image ID (pinned); docker's BuildKit resolves a tag only
        base_ref = env["PYTHON_IMAGE_ID"].removeprefix("sha256:") if engine == "podman" else OFFLINE_BASE
        for target, image in OFFLINE_SERVICES.items():
            sh(engine, "build", *fmt, "-q", "--build-arg", f"BASE_IMAGE={base_ref}", "--target", target,
               "-t", image, "-f", str(ctx / "deploy/docker/offline/Dockerfile"), str(ctx))  # fmt: skip
    out = sh(str(ROOT / "deploy/docker/build.sh"), env=env, timeout=3000)
    built = re.findall(r"^built (api|worker) (\S+) ([0-9a-f]{64})", out, re.M)
    assert {t for t, _, _ in built} == {"api", "worker"}, out[-2000:]
    for target, image, image_id in built:
        log(f"image {target}: {image} id {image_id}")
        health = sh(engine, "image", "inspect", "--format", "{{json .Config.Healthcheck}}", image)
        assert "healthcheck.py" in health, f"{image} lost its HEALTHCHECK"


def wait_job(client: httpx.Client, job_id: str, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if body["state"] in ("succeeded", "failed"):
            return body
        time.sleep(1)
    raise AssertionError(f"job {job_id} not finished after {timeout} s")


def upload(client: httpx.Client, path: Path) -> str:
    with path.open("rb") as f:
        r = client.post("/v1/studies", content=f, headers={"content-type": "application/zip"})
    assert r.status_code == 201, r.text
    study_id: str = r.json()["study_id"]
    return study_id


def check_least_privilege(stack: Stack) -> None:
    """The services' S3 user reaches its bucket and nothing else (only the init job uses the root)."""
    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{stack.s3_port}",
        region_name="us-east-1",
        aws_access_key_id=stack.secrets["S3_ACCESS_KEY"],
        aws_secret_access_key=stack.secrets["S3_SECRET_KEY"],
        config=Config(s3={"addressing_style": "path"}),
    )
    s3.head_bucket(Bucket="service4ct")
    with pytest.raises(ClientError):
        s3.create_bucket(Bucket="not-ours")
    with pytest.raises(ClientError):
        s3.put_object(Bucket="service4ct-models", Key="x", Body=b"x")


def fetch_presigned(url: str, s3_port: int) -> bytes:
    """A presigned URL names http://minio:9000 (the compose network); reach it through the published port."""
    m = re.match(r"http://([^/]+)(/.*)", url)
    assert m, url
    r = httpx.get(f"http://127.0.0.1:{s3_port}{m[2]}", headers={"Host": m[1]}, timeout=60)
    assert r.status_code == 200, (r.status_code, r.text[:300])
    return r.content


def run_study(stack: Stack, key: str, study: Path) -> None:
    with httpx.Client(
        base_url=f"http://127.0.0.1:{stack.api_port}", headers={"Authorization": f"Bearer {key}"}, timeout=120
    ) as c:
        # the worker registers (and /readyz turns ready) only after its warm-up job
        deadline = time.monotonic() + 300
        while (ready := c.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline, ready.text
            time.sleep(2)
        log(f"ready: {ready.text}")
        sid = upload(c, study)
        log(f"study {study.name} uploaded through the api container: {sid}")
        job = c.post("/v1/jobs", json={"study_id": sid, "explain": "gradcam"}).json()["job_id"]
        done = wait_job(c, job)
        assert done["state"] == "succeeded", done
        result = c.get(f"/v1/jobs/{job}/result").json()
        assert 0.0 <= result["probability"] <= 1.0 and result["label"], result
        assert result["model"]["name"] and result["series"]["selected_uid"], result
        log(f"result read back through the api: p={result['probability']:.4f} label={result['label']}")
        expl = c.get(f"/v1/jobs/{job}/explanation").json()
        assert expl["method"] == "gradcam", expl
        urls = [f["url"] for f in expl["files"].values()]
        assert urls and all(u.startswith("http://minio:9000/") for u in urls), expl
        data = fetch_presigned(expl["files"]["nifti"]["url"], stack.s3_port)
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as nii:
            header = nii.read(348)
        assert struct.unpack_from("<i", header, 0)[0] == 348, "not a NIfTI-1 header"
        dims = struct.unpack_from("<8h", header, 40)
        shape_zyx = expl["geometry"]["shape_zyx"]
        assert dims[0] == 3 and list(dims[1:4]) == shape_zyx[::-1], (dims, shape_zyx)  # source geometry
        assert expl["stats"]["peak"], expl["stats"]
        log(f"explanation: gradcam, {len(urls)} presigned URLs, NIfTI {len(data)} bytes, {dims[1:4]} voxels")

        # the worker container restarts with jobs queued: each finishes, exactly once
        body = {"study_id": sid, "explain": "none"}
        jobs = [c.post("/v1/jobs", json=body).json()["job_id"] for _ in range(3)]
        states = [c.get(f"/v1/jobs/{j}").json()["state"] for j in jobs]
        log(f"restarting the worker container with jobs {states}")
        sh(stack.engine, "restart", "-t", "60", stack.container("worker-cpu"))
        for j in jobs:
            assert wait_job(c, j)["state"] == "succeeded", j
    query = (
        "SELECT j.id, j.state, count(r.job_id) FROM jobs j LEFT JOIN results r ON r.job_id = j.id "
        "WHERE j.id IN ({}) GROUP BY j.id, j.state".format(",".join(f"'{j}'" for j in jobs))
    )
    psql = f'PGPASSWORD="$POSTGRES_PASSWORD" psql -h 127.0.0.1 -U service4ct -d service4ct -At -c "{query}"'
    rows = sh(stack.engine, "exec", stack.container("postgres"), "sh", "-c", psql)
    got = {line.split("|")[0]: line.split("|")[1:] for line in rows.split()}
    assert got == {j: ["succeeded", "1"] for j in jobs}, rows
    logs = subprocess.run(
        [stack.engine, "logs", stack.container("worker-cpu")], capture_output=True, text=True, check=True
    )
    text = logs.stdout + logs.stderr
    lines = text.splitlines()  # one JSON record per line (it names the job twice)
    counts = {j: sum(f"job {j} succeeded in" in line for line in lines) for j in jobs}
    assert counts == dict.fromkeys(jobs, 1), counts
    log("3 jobs queued across a worker restart: each succeeded exactly once (one success, one result row)")


def test_images_build_and_run_a_study_through_the_compose_stack() -> None:
    engine = engine_or_skip()
    offline = not registry_reachable(engine)
    log(f"engine: {engine}; bases: {'Debian packages (no registry)' if offline else 'the official images'}")
    with tempfile.TemporaryDirectory(prefix="s4ct-images-") as t:
        tmp = Path(t)
        build_images(engine, tmp, offline)
        study = study_zip(tmp)
        assert zipfile.is_zipfile(study), study
        stack = Stack(engine, tmp, offline)
        try:
            t0 = time.monotonic()
            stack.stack("up")
            log(f"stack up in {time.monotonic() - t0:.1f} s")
            sh(stack.engine, "ps", "--filter", f"label=com.docker.compose.project={stack.project}",
               "--format", "{{.Names}} {{.ImageID}} {{.Status}}")  # fmt: skip
            check_least_privilege(stack)
            api = stack.container("api")
            out = sh(stack.engine, "exec", api, "service4ct", "apikey", "create", "images-test", echo=False)
            key = re.search(r"^api key:\s+(\S+)", out, re.M)
            assert key, out
            run_study(stack, key[1], study)
        except BaseException:
            for service in ("migrate", "api", "worker-cpu"):
                with contextlib.suppress(Exception):
                    sh(stack.engine, "logs", "--tail", "40", stack.container(service), check=False)
            raise
        finally:
            stack.stack("purge")
            left = stack.leftovers()
            assert left == {"containers": [], "volumes": [], "networks": []}, left
