"""The React component ``@service4ct/react`` (clients/typescript/react) in headless Chromium.

The demo page (clients/typescript/demo, built with esbuild) is served by a static server on
another origin than the API, as a product's UI would be: every call crosses CORS (the API's
``cors_origins`` and the bucket's ``s3_cors_origins`` list the page's origin). A phantom study with
an obvious lesion goes through the real service (embedded stack, in-process worker) with a lesion
oracle as the model (test_viewer_page.py: Grad-CAM of a ``layer4`` that outputs the ground-truth
lesion), so the saliency the worker writes is the lesion; then, on the screenshot:

* canvas mode (the service's PNG layers): ≥ 90 % of the hot pixels lie on a lesion's box ± 10 mm
  and most of the lesion is coloured; the slider starts at the peak, the slice and opacity follow
  the keyboard.
* NiiVue mode (WebGL2 on SwiftShader): a CT NIfTI of the phantom written here with SimpleITK
  (a host's DICOM → NIfTI conversion, independent of the service's writer) with the saliency NIfTI
  (presigned S3 URL) over it. NiiVue's own patient-space → screen mapping gives where the lesion's
  voxels are: the hot pixels lie on them (the saliency NIfTI's affine), and with the heat at 0 %
  the CT shows the bright lesion there (the CT's affine): both volumes line up in patient space.
* an out-of-distribution study (a head phantom) renders as indeterminate: label, reasons, every
  decision, the probability muted, nothing in the red of a pathology.

``S4CT_REACT_SCREENSHOTS=docs/img`` keeps the two screenshots (docs/react.md shows them). The
tests skip when Node.js/npm or Debian's chromium are missing; ``npm ci`` runs when
clients/typescript/react/node_modules is absent.
"""

from __future__ import annotations

import functools
import http.server
import io
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import LiveApi, free_port, new_key, wait_job  # type: ignore[import-not-found]
from PIL import Image
from test_viewer_page import STUDY, _lesion_in_model_space, _LesionOracle  # type: ignore[import-not-found]
from viewer_browser import (  # type: ignore[import-not-found]
    CHROMIUM,
    MARGIN_MM,
    Chromium,
    Screen,
    boxes_around,
    coloured_pixels,
    grow,
    hot_pixels,
    needs_chromium,
    overlap,
    shrink,
)

from app.config import Settings
from app.worker.runner import Worker
from ml.geometry import VolumeGeometry
from ml.inference import Predictor
from ml.phantom import StudyInfo, make_family, make_study, write_family_study
from ml.phantom.corpus import write_mask_nifti

ROOT = Path(__file__).resolve().parents[2]
REACT = ROOT / "clients" / "typescript" / "react"
DEMO = ROOT / "clients" / "typescript" / "demo"
NODE, NPM = shutil.which("node"), shutil.which("npm")
PAGE_PORT = free_port()
ORIGIN = f"http://127.0.0.1:{PAGE_PORT}"  # the page's origin: not the API's

needs_node = pytest.mark.skipif(
    NODE is None or NPM is None, reason="Node.js and npm are not installed (apt-get install nodejs npm)"
)
pytestmark = [needs_node, needs_chromium]


# --------------------------------------------------------------------------- build, serve, browse


def build_component() -> None:
    """``npm ci`` when node_modules is absent, then the type check and the esbuild bundles."""
    assert NODE is not None and NPM is not None
    if not (REACT / "node_modules").is_dir():
        r = subprocess.run(
            [NPM, "ci", "--no-audit", "--no-fund"],
            cwd=REACT,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if r.returncode != 0:  # no registry (offline): an install step, like apt-get in .ci/run
            pytest.skip(f"npm ci failed in clients/typescript/react (no npm registry?): {r.stderr[-500:]}")
    tsc = REACT / "node_modules" / "typescript" / "bin" / "tsc"
    r = subprocess.run(
        [NODE, str(tsc), "--noEmit", "-p", "."], cwd=REACT, capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, r.stdout + r.stderr
    subprocess.run([NODE, "build.mjs"], cwd=REACT, check=True, timeout=120)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("react-data")


@pytest.fixture(scope="module")
def page_server(data_dir: Path) -> Iterator[str]:
    """The demo page and its bundle on ORIGIN; ``/data/*`` serves ``data_dir`` (the host's CT NIfTI)."""
    build_component()

    class Static(http.server.SimpleHTTPRequestHandler):
        def translate_path(self, path: str) -> str:
            rel = path.split("?", 1)[0].lstrip("/")
            if rel.startswith("data/"):
                return str(data_dir / Path(rel).name)
            return super().translate_path(path)

        def log_message(self, *args: Any) -> None:
            pass

    handler = functools.partial(Static, directory=str(DEMO))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", PAGE_PORT), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield ORIGIN
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(cors_origins=[ORIGIN], s3_cors_origins=[ORIGIN])


@pytest.fixture(scope="module")
def key(settings: Settings) -> str:
    return new_key(settings, "site-react")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Chromium]:
    assert CHROMIUM is not None
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    b = Chromium(CHROMIUM, profile, webgl=True)
    try:
        yield b
    finally:
        b.close()


_STATE = """(() => { const s = window.s4ctDemo.state; const v = document.querySelector('.s4ct-viewer');
  const img = document.querySelector('.s4ct-image'); const r = img && img.getBoundingClientRect();
  const box = v && v.getBoundingClientRect();
  return {phase: s && s.phase, error: s && s.error, slice: s && s.slice, text: document.body.innerText,
    href: location.href, stored: sessionStorage.length + localStorage.length,
    rect: r && {left: r.left, top: r.top, width: r.width, height: r.height},
    box: box && {left: box.left, top: box.top, width: box.width, height: box.height}}; })()"""


def open_demo(browser: Chromium, api: LiveApi, job: str, key: str, mode: str, ct: str = "") -> dict[str, Any]:
    """Load the demo page, start the viewer with the key in memory, wait until ready or error."""
    browser.open(f"{ORIGIN}/index.html")
    deadline = time.monotonic() + 30
    while browser.eval("typeof window.s4ctDemo") != "object":
        assert time.monotonic() < deadline, "the demo bundle did not load"
        time.sleep(0.05)
    opts = {"apiBase": api.base, "apiKey": key, "jobId": job, "mode": mode, "ctNiftiUrl": ct}
    browser.eval(f"window.s4ctDemo.start({json.dumps(opts)})")
    browser.wait_state(("ready", "error"), timeout=90)
    page: dict[str, Any] = browser.eval(_STATE)
    assert key not in page["href"] and page["stored"] == 0  # the key is in no URL and not stored
    return page


def press(browser: Chromium, selector: str, key: str, code: int) -> None:
    """Focus ``selector`` and press ``key`` as a keyboard would (CDP input events)."""
    browser.eval(f"document.querySelector({json.dumps(selector)}).focus()")
    for kind in ("rawKeyDown", "keyUp"):
        browser.send(
            "Input.dispatchKeyEvent", {"type": kind, "key": key, "code": key, "windowsVirtualKeyCode": code}
        )


def settle(browser: Chromium, expression: str, expected: Any, timeout: float = 5.0) -> Any:
    """``expression``'s value once it equals ``expected`` (React renders after the event), else its last."""
    deadline = time.monotonic() + timeout
    while (value := browser.eval(expression)) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def keep_screenshot(browser: Chromium, page: dict[str, Any], name: str) -> None:
    """With S4CT_REACT_SCREENSHOTS=DIR: the viewer's box of the last screenshot, as DIR/name."""
    out = os.environ.get("S4CT_REACT_SCREENSHOTS")
    if not out:
        return
    b = page["box"]
    img = Image.open(io.BytesIO(browser.last_png)).convert("RGB")
    right, bottom = min(img.width, int(b["left"] + b["width"])), min(img.height, int(b["top"] + b["height"]))
    img = img.crop((int(b["left"]), int(b["top"]), right, bottom))
    img.quantize(colors=128).save(Path(out) / name, optimize=True)


# --------------------------------------------------------------------------- the oracle's job


@dataclass
class OracleJob:
    job: str
    expl: dict[str, Any]
    study: StudyInfo
    geom: VolumeGeometry

    @property
    def peak_z(self) -> int:
        return int(self.expl["stats"]["peak"]["index_zyx"][0])


@pytest.fixture(scope="module")
def oracle_job(api: LiveApi, worker: Worker, key: str, tmp_path_factory: pytest.TempPathFactory) -> OracleJob:
    study = make_study(tmp_path_factory.mktemp("react-study") / "study.zip", **STUDY)  # type: ignore[arg-type]
    demo = worker.predictor(None)
    oracle = Predictor(demo.entry, _LesionOracle(_lesion_in_model_space(study, demo)), device="cpu")
    served = dict(worker.predictors)
    worker.predictors.update(dict.fromkeys(served, oracle))
    try:
        with api.client(key) as c:
            r = c.post(
                "/v1/studies",
                content=study.zip_path.read_bytes(),
                headers={"content-type": "application/zip"},
            )
            r = c.post("/v1/jobs", json={"study_id": r.json()["study_id"], "explain": "gradcam"})
            job = r.json()["job_id"]
            assert wait_job(c, job)["state"] == "succeeded"
            expl = c.get(f"/v1/jobs/{job}/explanation").json()
    finally:
        worker.predictors.update(served)
    out = OracleJob(job, expl, study, VolumeGeometry.from_dict(expl["geometry"]))
    assert (study.phantom.mask[out.peak_z] > 0).any(), "the oracle's peak is not on a lesion slice"
    return out


# --------------------------------------------------------------------------- canvas mode


def test_canvas_mode_puts_the_heat_on_the_lesion_and_follows_the_keyboard(
    api: LiveApi, page_server: str, oracle_job: OracleJob, key: str, browser: Chromium
) -> None:
    o = oracle_job
    page = open_demo(browser, api, o.job, key, "canvas")
    assert page["phase"] == "ready", page
    assert page["slice"] == o.peak_z  # starts at the saliency peak
    _, ny, nx = o.geom.shape_zyx
    shot = browser.screenshot()
    keep_screenshot(browser, page, "react-canvas.png")
    inside, covered, n_hot = overlap(
        shot, Screen(page["rect"], ny, nx), o.study.phantom.mask[o.peak_z], o.geom.spacing_mm[:2]
    )
    print(f"\ncanvas mode: {n_hot} hot px, {inside:.3f} near the lesion, {covered:.3f} of it coloured")
    assert n_hot > 200
    assert inside >= 0.9, f"only {inside:.3f} of the hot pixels lie on the lesion"
    assert covered >= 0.6, f"only {covered:.3f} of the lesion is coloured"
    for text in ("Probability", "balanced", "NOT FOR CLINICAL USE", "Slice", "Heat opacity"):
        assert text in page["text"], text

    L = o.expl["stats"]["layers"]
    press(browser, ".s4ct-image", "ArrowUp", 38)  # the focused image steps the slice
    after = L["slices"][L["slices"].index(o.peak_z) + 1]
    assert settle(browser, "window.s4ctDemo.state.slice", after) == after
    press(browser, "#s4ct-opacity", "Home", 36)  # the opacity slider: Home = 0 %
    assert settle(browser, "document.querySelector('#s4ct-opacity').value", "0") == "0"
    assert not coloured_pixels(Screen(page["rect"], ny, nx).region(browser.screenshot())).any()
    labels = browser.eval(
        "[...document.querySelectorAll('input[type=range]')].map((e) => e.labels[0].textContent)"
    )
    assert labels == ["Slice", "Heat opacity"]


# --------------------------------------------------------------------------- NiiVue mode


class Projection:
    """Screen position of voxels (i, j) of slice k, from NiiVue's own RAS mm → canvas mapping."""

    def __init__(self, browser: Chromium, expl: dict[str, Any], k: int) -> None:
        A = np.asarray(expl["geometry"]["affine_ras"], dtype=float)
        _, ny, nx = expl["geometry"]["shape_zyx"]
        ijk = np.array([[0, 0, k, 1], [nx - 1, 0, k, 1], [0, ny - 1, k, 1]], dtype=float)
        mm = (A @ ijk.T).T[:, :3].tolist()
        pts = browser.eval(
            f"(() => {{ const v = window.s4ctDemo.state.niivue; const nv = v.niivue;"
            " const r = v.canvas.getBoundingClientRect(); const d = v.canvas.width / r.width;"
            f" return {json.dumps(mm)}.map((p) => {{ const c = nv.frac2canvasPos(nv.mm2frac(p));"
            " return c && [r.left + c[0] / d, r.top + c[1] / d]; }); })()"
        )
        assert all(p is not None for p in pts), pts
        p0, pi, pj = (np.asarray(p, dtype=float) for p in pts)
        self.origin = p0
        self.m = np.column_stack([(pi - p0) / (nx - 1), (pj - p0) / (ny - 1)])  # screen = p0 + m · (i, j)
        self.inv = np.linalg.inv(self.m)
        self.ny, self.nx = ny, nx

    def voxel_mask(self, mask_yx: np.ndarray[Any, Any], shape: tuple[int, int]) -> np.ndarray[Any, Any]:
        """``mask_yx`` sampled at every screen pixel centre (False off the slice)."""
        ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
        d = np.stack([xs + 0.5 - self.origin[0], ys + 0.5 - self.origin[1]], axis=-1) @ self.inv.T
        i, j = np.rint(d[..., 0]).astype(int), np.rint(d[..., 1]).astype(int)
        ok = (i >= 0) & (i < self.nx) & (j >= 0) & (j < self.ny)
        out = np.zeros(shape, dtype=bool)
        out[ok] = mask_yx[j[ok], i[ok]]
        return out


def test_niivue_mode_overlays_the_saliency_nifti_on_the_ct_in_patient_space(
    api: LiveApi, page_server: str, oracle_job: OracleJob, key: str, browser: Chromium, data_dir: Path
) -> None:
    o = oracle_job
    ph = o.study.phantom
    # the host's CT volume: the phantom's HU, LPS → RAS by SimpleITK (not the service's NIfTI writer)
    write_mask_nifti(ph.hu, ph.geometry, data_dir / "ct.nii.gz")
    page = open_demo(browser, api, o.job, key, "niivue", f"{ORIGIN}/data/ct.nii.gz")
    assert page["phase"] == "ready", page
    assert page["slice"] == o.peak_z
    shot = browser.screenshot()
    keep_screenshot(browser, page, "react-niivue.png")
    proj = Projection(browser, o.expl, o.peak_z)
    sp = o.geom.spacing_mm
    scale = np.abs(np.linalg.det(proj.m)) ** 0.5 / np.sqrt(sp[0] * sp[1])  # screen px per mm
    assert 0.5 < scale < 5, scale
    shape = shot.shape[:2]
    r = page["rect"]
    in_canvas = np.zeros(shape, dtype=bool)
    in_canvas[
        round(r["top"]) : round(r["top"] + r["height"]), round(r["left"]) : round(r["left"] + r["width"])
    ] = True
    lesion = ph.mask[o.peak_z]
    margin = (round(MARGIN_MM / sp[1]), round(MARGIN_MM / sp[0]))
    near = proj.voxel_mask(boxes_around(lesion, margin), shape)
    on = proj.voxel_mask(lesion > 0, shape)
    hot = hot_pixels(shot) & in_canvas
    n_hot = int(hot.sum())
    inside = float((hot & near).sum()) / max(n_hot, 1)
    covered = float((coloured_pixels(shot) & on).sum()) / max(int(on.sum()), 1)
    print(f"\nniivue mode: {n_hot} hot px, {inside:.3f} near the lesion, {covered:.3f} of it coloured")
    assert n_hot > 200
    assert inside >= 0.9, f"only {inside:.3f} of the hot pixels lie on the lesion"
    assert covered >= 0.6, f"only {covered:.3f} of the lesion is coloured"

    # the CT volume at the same place: heat at 0 % (keyboard), the lesion is bright against the lung
    press(browser, "#s4ct-opacity", "Home", 36)
    ct = browser.screenshot()
    assert not (coloured_pixels(ct) & in_canvas).any(), "opacity 0 still shows colour"
    gray = ct.astype(float).mean(axis=2)
    inner = proj.voxel_mask(shrink(lesion > 0, 1), shape)
    ring = proj.voxel_mask(grow(lesion > 0, 4) & ~grow(lesion > 0, 2) & ph.lung_mask[o.peak_z], shape)
    assert inner.sum() > 50 and ring.sum() > 50
    contrast = float(gray[inner].mean() - gray[ring].mean())
    print(f"CT under the lesion: {gray[inner].mean():.0f}, lung around it {gray[ring].mean():.0f}")
    assert contrast > 60, f"the CT's lesion is not where the saliency's is (contrast {contrast:.1f})"
    press(browser, ".s4ct-image", "ArrowDown", 40)  # the focused NiiVue canvas steps the slice
    assert settle(browser, "window.s4ctDemo.state.slice", o.peak_z - 1) == o.peak_z - 1


# --------------------------------------------------------------------------- indeterminate


def test_an_out_of_distribution_study_renders_as_indeterminate(
    api: LiveApi, worker: Worker, page_server: str, key: str, browser: Chromium, tmp_path: Path
) -> None:
    zp = tmp_path / "head.zip"
    write_family_study(zp, make_family("head", 1))  # not a chest CT: no lungs
    with api.client(key) as c:
        r = c.post("/v1/studies", content=zp.read_bytes(), headers={"content-type": "application/zip"})
        job = c.post("/v1/jobs", json={"study_id": r.json()["study_id"], "explain": "gradcam"}).json()[
            "job_id"
        ]
        assert wait_job(c, job)["state"] == "succeeded"
        result = c.get(f"/v1/jobs/{job}/result").json()
    assert result["label"] == "indeterminate" and result["indeterminate_reasons"], result
    page = open_demo(browser, api, job, key, "canvas")
    assert page["phase"] == "ready", page
    v = browser.eval(
        """(() => { const q = (s) => document.querySelector(s); const col = (e) => getComputedStyle(e).color;
        return {label: q('.s4ct-result').dataset.label, text: q('.s4ct-label').textContent,
          labelColor: col(q('.s4ct-label')),
          prob: q('.s4ct-probability').textContent, probColor: col(q('.s4ct-probability')),
          reasons: q('.s4ct-reasons').textContent, alert: !!q('.s4ct-indeterminate[role=alert]'),
          cells: [...document.querySelectorAll('[data-decision]')].map((e) => [e.dataset.decision, col(e)]),
          red: document.querySelectorAll('.pathology').length}; })()"""
    )
    assert v["label"] == "indeterminate" and v["alert"], v
    assert v["text"] == "indeterminate: the model cannot judge this study", v
    assert v["prob"] == f"{100 * result['probability']:.1f} % (not a decision)", v
    assert v["reasons"] == f"Reasons: {', '.join(result['indeterminate_reasons'])}", v
    amber, grey, red = "rgb(178, 106, 0)", "rgb(107, 107, 107)", "rgb(198, 40, 40)"
    assert v["labelColor"] == amber and v["probColor"] == grey, v
    assert len(v["cells"]) == len(result["operating_points"]) and all(
        c == ["indeterminate", amber] for c in v["cells"]
    ), v
    assert v["red"] == 0 and red not in json.dumps(v), v
