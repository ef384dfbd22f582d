"""`service4ct serve` as a user runs it: one command, embedded services, API + worker, clean Ctrl-C.

Also the whole flow on the real, JPEG-lossless compressed chest CT (skipped when absent).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cli import run_cli  # type: ignore[import-not-found]
from phi_guard import watch_log  # type: ignore[import-not-found]

from ml.model import Manifest
from ml.phantom import make_study

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _descendants(pid: int) -> set[int]:
    out: set[int] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            child = int(stat.parent.name)
            out |= {child} | _descendants(child)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Served:
    def __init__(self, var: Path, port: int, proc: subprocess.Popen[str]) -> None:
        self.var, self.port, self.proc = var, port, proc
        self.base = f"http://127.0.0.1:{port}"

    def client(self) -> httpx.Client:
        key = (self.var / "dev-api-key").read_text().strip()
        return httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {key}"}, timeout=120)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    var = tmp_path_factory.mktemp("serve-var")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("S4CT_")}
    env.update({"S4CT_VAR_DIR": str(var), "S4CT_DEVICE": "cpu", "S4CT_HEARTBEAT_S": "1"})
    log = (var / "serve.log").open("w")
    watch_log(var / "serve.log")  # scanned for patient identifiers at the end of the session
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    s = Served(var, port, proc)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{s.base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                raise AssertionError(
                    "serve did not become ready:\n" + (var / "serve.log").read_text()[-4000:]
                )
            time.sleep(0.5)
        yield s
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


def _predict(
    c: httpx.Client, zip_path: Path, explain: str = "gradcam", timeout: float = 600
) -> dict[str, Any]:
    with zip_path.open("rb") as f:
        r = c.post("/v1/studies", content=f, headers={"Content-Type": "application/zip"})
    assert r.status_code in (200, 201), r.text
    r = c.post("/v1/jobs", json={"study_id": r.json()["study_id"], "explain": explain})
    assert r.status_code == 202, r.text
    job = r.json()["job_id"]
    deadline = time.monotonic() + timeout
    while True:
        st = c.get(f"/v1/jobs/{job}").json()
        if st["state"] in ("succeeded", "failed"):
            return st
        assert time.monotonic() < deadline, st
        time.sleep(0.5)


def test_serve_runs_the_whole_flow(served: Served, tmp_path: Path) -> None:
    zp = tmp_path / "s.zip"
    make_study(zp, seed=3, label=1)
    banner = (served.var / "serve.log").read_text()
    assert "/docs" in banner and "NOT FOR CLINICAL USE" in banner
    stack = served.var / "stack"
    pg_password = (stack / "pg" / "password").read_text().strip()
    redis_password = (stack / "redis" / "redis.conf").read_text().split()[1]
    assert pg_password not in banner and redis_password not in banner  # URLs printed without them
    with served.client() as c:
        assert httpx.get(f"{served.base}/docs").status_code == 200
        st = _predict(c, zp)
        assert st["state"] == "succeeded", st
        res = c.get(f"/v1/jobs/{st['job_id']}/result").json()
        assert res["model"]["name"] == "resnet10-demo"
        expl = c.get(f"/v1/jobs/{st['job_id']}/explanation").json()
        assert httpx.get(expl["files"]["heat_layer"]["url"]).status_code == 200


@pytest.fixture(scope="module")
def real_run(served: Served, real_ct_zip: Path) -> dict[str, Any]:
    """The real study through the service, once: job status, result and explanation."""
    with served.client() as c:
        st = _predict(c, real_ct_zip)
        assert st["state"] == "succeeded", st
        res = c.get(f"/v1/jobs/{st['job_id']}/result").json()
        expl = c.get(f"/v1/jobs/{st['job_id']}/explanation").json()
    return {"status": st, "result": res, "explanation": expl}


@pytest.mark.realdata
def test_real_ct_through_the_service(real_run: dict[str, Any]) -> None:
    res, expl = real_run["result"], real_run["explanation"]
    assert 0 <= res["probability"] <= 1 and res["series"]["selected_uid"]
    assert res["qc"]["plausibility"]["reasons"] == []  # a real chest CT: lungs, full coverage
    shape = expl["geometry"]["shape_zyx"]
    assert shape[1] == 512 and shape[2] == 512 and shape[0] > 50


@pytest.mark.realdata
def test_real_ct_is_out_of_distribution_for_the_demo_model(real_run: dict[str, Any]) -> None:
    """The demo model, trained on phantoms, says it cannot judge a real patient's CT (issue: p = 1.000)."""
    res = real_run["result"]
    ref = Manifest.load(ROOT / "weights" / "manifest.json").get(res["model"]["name"]).ood
    if ref is None:
        assert res["ood"] is None and "out_of_distribution" not in res["indeterminate_reasons"]
        pytest.skip(
            "weights/manifest.json has no `ood` block for the demo model: without OOD statistics "
            "the service cannot flag cap002 out_of_distribution"
        )
    ood = res["ood"]
    assert ood["method"] == ref.method and ood["threshold"] == pytest.approx(ref.threshold)
    assert ood["flagged"] is True and ood["score"] > ood["threshold"], ood
    assert res["label"] == "indeterminate" and "out_of_distribution" in res["indeterminate_reasons"], res
    assert set(res["decision"].values()) == {"indeterminate"}
    assert 0 <= res["probability"] <= 1  # still reported, not a decision


def test_operator_commands_need_no_environment(served: Served) -> None:
    """`service4ct apikey create` as README says, while serve runs: it finds the stack under var/."""
    published = served.var / "connection.json"
    assert published.stat().st_mode & 0o777 == 0o600
    env = {k: v for k, v in os.environ.items() if not k.startswith("S4CT_")}
    env["S4CT_VAR_DIR"] = str(served.var)
    r = run_cli("apikey", "create", "laravel", timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    key = dict(line.split(":", 1) for line in r.stdout.splitlines() if ":" in line)["api key"].strip()
    with httpx.Client(base_url=served.base, headers={"Authorization": f"Bearer {key}"}) as c:
        assert c.get("/v1/jobs").status_code == 200


def test_ctrl_c_stops_everything(served: Served) -> None:
    kids = _descendants(served.proc.pid)
    assert kids, "serve should have children (postgres, redis, weed, worker)"
    served.proc.send_signal(signal.SIGINT)
    assert served.proc.wait(timeout=90) == 0
    deadline = time.monotonic() + 15
    while any(_alive(p) for p in kids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in kids if _alive(p)]
    # PostgreSQL daemonizes (not a descendant): its pid file is gone once it stopped
    assert not list(served.var.glob("**/postmaster.pid"))
    assert not (served.var / "connection.json").exists()  # withdrawn with the stack
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{served.base}/healthz", timeout=2)
