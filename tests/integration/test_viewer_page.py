"""The reference viewer's page (``/viewer/{job_id}``) in headless Chromium.

A phantom study with an obvious lesion goes through upload → job (``explain:
gradcam``) → a real worker (layers in S3) → the page, which the tests drive over
the DevTools protocol (``chromium --remote-debugging-pipe``: no extra Python
package). On the screenshot, in screen pixels of the canvas:

* the demo model: the page polls while the job runs, starts at the saliency
  peak's slice, and draws the heatmap exactly where the saliency map (the NIfTI
  from the API, not the layers) is, and as hot as it is; after dragging the
  slice slider to the lesion and the opacity to 0 the CT shows the ground-truth
  lesion where the phantom's mask says, with no colour left; probability,
  decisions, model and the "not for clinical use" banner are on the page. How
  much of the demo model's heatmap lies on the lesion is measured and reported
  (``record_property`` and stdout), not asserted: a screen of heat measures the
  whole map, and even a map whose peak sits on the lesion spreads over a 16³ grid
  (model 0.5.0: its Grad-CAM peak lies within 5 mm of a lesion on 59 of 60
  held-out phantoms, ``bench/explain.py``; ``tests/unit/ml/test_demo_model.py``
  asserts the peak on two fresh phantoms).
* a worker whose model is a lesion oracle (Grad-CAM of a ``layer4`` that outputs
  the ground-truth lesion in model space): ≥ 90 % of the hot pixels on screen lie
  on a lesion's box ± 10 mm and most of the lesion is coloured. That is the
  heat-on-lesion criterion for the whole chain (worker mapping → layers → S3 →
  page → canvas), independent of what the demo model learnt.
* an indeterminate study (a head phantom: no lungs): the label says the model cannot judge
  it, with the reasons; the probability is muted with "(not a decision)" and no label,
  probability or decision cell is in the red of a pathology (computed styles of the page).
* the page gets a viewer token in memory (its form, or postMessage from the product page that
  opened it; never in the URL, storage or Navigation Timing); error states: a wrong token,
  another job's token, a failed job (its error code on the page), an old ``#key=`` link (the
  key is dropped from the address and not used).

The tests skip when Debian's ``chromium`` is absent (``apt-get install chromium``);
the route itself is tested without a browser in test_viewer_route.py.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import LiveApi, new_key, wait_job  # type: ignore[import-not-found]
from torch import nn
from viewer_browser import (
    CHROMIUM,
    MARGIN_MM,
    Chromium,
    Screen,
    coloured_pixels,
    grow,
    hot_pixels,
    needs_chromium,
    open_from_opener,
    open_viewer,
    overlap,
    shrink,
    viewer_token,
)

from app.config import Settings
from app.worker.runner import Worker
from ml.geometry import VolumeGeometry
from ml.inference import Predictor
from ml.io import read_study
from ml.model import ModelSpec
from ml.model.network import ResNet3D
from ml.phantom import StudyInfo, make_family, make_study, write_family_study

#: the study: an obvious consolidation, on the demo model's training grid (128², 3 mm, 2.5 mm slices)
STUDY = {
    "seed": 5,
    "label": 1,
    "kinds": ("consolidation",),
    "difficulty": (0.9, 1.0),
    "rows": 128,
    "cols": 128,
    "pixel_spacing_mm": 3.0,
    "slice_spacing_mm": 2.5,
}


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Chromium]:
    if CHROMIUM is None:  # the tests carry needs_chromium; this only guards other users
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    b = Chromium(CHROMIUM, profile)
    try:
        yield b
    finally:
        b.close()


# --------------------------------------------------------------------------- the service


@pytest.fixture(scope="module")
def key(settings: Settings) -> str:
    return new_key(settings, "site-viewer")


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> StudyInfo:
    zp = tmp_path_factory.mktemp("viewer-study") / "study.zip"
    return make_study(zp, **STUDY)  # type: ignore[arg-type]


def _submit(c: httpx.Client, zip_path: Path) -> str:
    r = c.post("/v1/studies", content=zip_path.read_bytes(), headers={"content-type": "application/zip"})
    assert r.status_code in (200, 201), r.text
    r = c.post("/v1/jobs", json={"study_id": r.json()["study_id"], "explain": "gradcam"})
    assert r.status_code == 202, r.text
    job: str = r.json()["job_id"]
    return job


def _run_job(c: httpx.Client, zip_path: Path) -> str:
    job = _submit(c, zip_path)
    status = wait_job(c, job)
    assert status["state"] == "succeeded", status
    return job


def _check_page_text(page: dict[str, Any], result: dict[str, Any]) -> None:
    text = page["text"]
    assert f"{100 * result['probability']:.1f} %" in text
    assert result["model"]["name"] in text and result["model"]["version"] in text
    for name, decision in result["decision"].items():
        assert name in text and decision in text
    assert page["banner"] is result["not_for_clinical_use"] is True and "NOT FOR CLINICAL USE" in text
    assert page["hash"] == "" and "s4c" not in page["href"]  # no credential in the address
    assert "s4c" not in page["timing"] and page["stored"] == 0  # nor in Navigation Timing, nor in storage
    assert ("Reasons:" in text) is bool(result["indeterminate_reasons"])


@needs_chromium
def test_viewer_shows_the_demo_models_gradcam_where_the_map_and_the_lesion_are(
    api: LiveApi, worker: Worker, key: str, study: StudyInfo, browser: Chromium, record_property: Any
) -> None:
    with api.client(key) as c:
        job = _submit(c, study.zip_path)
        seen: set[str] = set()
        token = viewer_token(api, job, key)  # read-only, this job only
        page = open_viewer(browser, api, job, token, timeout=180.0, seen=seen)  # opened while the job runs
        assert page["state"] == "ready", page
        assert "waiting" in seen, seen  # it polled GET /v1/jobs/{id} until the job succeeded
        page = open_viewer(browser, api, job, token)  # again, on the finished job: the render time
        assert page["state"] == "ready", page
        result = c.get(f"/v1/jobs/{job}/result").json()
        expl = c.get(f"/v1/jobs/{job}/explanation").json()
        nifti = httpx.get(expl["files"]["nifti"]["url"]).content
    assert {"ct_layer", "heat_layer", "saliency_layer"} <= set(expl["files"])
    geom = VolumeGeometry.from_dict(expl["geometry"])
    ph = study.phantom
    assert geom.size == ph.geometry.size  # the mask's grid is the series' grid
    np.testing.assert_allclose(geom.origin_mm, ph.geometry.origin_mm, atol=1e-3)
    np.testing.assert_allclose(geom.direction, ph.geometry.direction, atol=1e-6)
    nz, ny, nx = geom.shape_zyx
    L = expl["stats"]["layers"]
    peak_z = expl["stats"]["peak"]["index_zyx"][0]

    _check_page_text(page, result)
    assert page["slice"] == peak_z and L["slices"][page["tile"]] == peak_z  # starts at the peak
    shot = browser.screenshot()
    if os.environ.get("S4CT_VIEWER_SCREENSHOT"):  # e.g. docs/viewer.png
        Path(os.environ["S4CT_VIEWER_SCREENSHOT"]).write_bytes(browser.last_png)
    screen = Screen(page["rect"], ny, nx)
    aspect = (nx * geom.spacing_mm[0]) / (ny * geom.spacing_mm[1])
    assert abs(page["rect"]["width"] / page["rect"]["height"] - aspect) < 0.02  # physical aspect

    # 1. the heat is where the saliency map (the NIfTI, not the layers) says, and as hot as it says
    sal = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(nifti)).dataobj).transpose(2, 1, 0)[peak_z]
    frac = sal / float(sal.max())
    view = screen.region(shot)
    col, hot = coloured_pixels(view), hot_pixels(view)
    n_col, n_hot = int(col.sum()), int(hot.sum())
    shown = screen.voxel_mask(grow(frac > L["heat"]["threshold_fraction"], 2))
    warm = screen.voxel_mask(grow(frac >= 0.6, 2))
    core = screen.voxel_mask(shrink(frac >= 0.8, 1))
    assert n_col > 1000 and n_hot > 200 and core.sum() > 100, (n_col, n_hot, int(core.sum()))
    on_map = float((col & shown).sum()) / n_col
    hot_on_map = float((hot & warm).sum()) / n_hot
    core_hot = float((hot & core).sum()) / int(core.sum())
    assert on_map >= 0.97, f"{on_map:.3f} of the coloured pixels lie on the map (> threshold)"
    assert hot_on_map >= 0.95, f"{hot_on_map:.3f} of the hot pixels lie where the map is ≥ 0.6 of its max"
    assert core_hot >= 0.9, f"only {core_hot:.3f} of the map's ≥ 0.8 core is hot on screen"

    # 2. the demo model against the ground truth: measured and printed (see the module docstring)
    lesion = ph.mask > 0
    inside, covered, _ = overlap(shot, screen, ph.mask[peak_z], geom.spacing_mm[:2])
    area = lesion.reshape(nz, -1).sum(axis=1)
    lz = max(L["slices"], key=lambda z: int(area[z]))  # the layers' slice with the most lesion
    lesion_z = np.flatnonzero(lesion.any(axis=(1, 2)))
    record_property("demo_hot_on_lesion_fraction", round(inside, 4))
    record_property("demo_lesion_coloured_fraction", round(covered, 4))
    record_property("page_ready_ms", round(page["renderMs"]))
    print(
        f"\ndemo model gradcam: p={result['probability']:.3f}, peak slice {peak_z} "
        f"(lesion on slices {lesion_z.min()}–{lesion_z.max()}); on screen: {n_col} coloured, {n_hot} hot px, "
        f"{on_map:.3f} / {hot_on_map:.3f} / {core_hot:.3f} on the map; hot px on the lesion box "
        f"±{MARGIN_MM:g} mm: {inside:.3f}, lesion px coloured: {covered:.3f}; "
        f"page ready {page['renderMs']:.0f} ms after navigation ({page['wall_s']:.2f} s wall)"
    )

    # 3. the CT is where the ground truth is: slider to the lesion's slice, opacity 0 → the lesion is bright
    for control, value in (("slider", L["slices"].index(lz)), ("opacity", 0)):  # as a user drags them
        browser.eval(
            f"(() => {{ const e = document.getElementById('{control}'); e.value = {value};"
            " e.dispatchEvent(new Event('input')); })()"
        )
    assert browser.eval("window.s4ctViewer.slice") == lz and browser.eval("window.s4ctViewer.opacity") == 0
    ct_shot = browser.screenshot()
    view = screen.region(ct_shot).astype(float)
    assert not coloured_pixels(screen.region(ct_shot)).any(), "opacity 0 still shows colour"
    gray = view.mean(axis=2)
    inner = screen.voxel_mask(shrink(lesion[lz], 1))
    ring = screen.voxel_mask(grow(lesion[lz], 4) & ~grow(lesion[lz], 2) & ph.lung_mask[lz])
    assert inner.sum() > 50 and ring.sum() > 50
    contrast = float(gray[inner].mean() - gray[ring].mean())
    print(
        f"CT at the lesion slice {lz}: lesion {gray[inner].mean():.0f}, lung around {gray[ring].mean():.0f}"
    )
    assert contrast > 60, f"the lesion is not where the ground truth says (contrast {contrast:.1f})"


# --------------------------------------------------------------------------- the lesion oracle


class _LesionOracle(ResNet3D):
    """Logit margin = mean of ``layer4``'s output, and ``layer4`` outputs the ground-truth lesion map.

    Grad-CAM of ``layer4`` is then (up to a positive factor) that map, so the saliency
    the worker writes is the lesion itself, in model space. The network's own path
    (``features`` → average pool → ``fc``) computes it, as the predictor runs a model
    (logits and pooled features from one pass, :func:`ml.ood.features.logits_and_features`).
    """

    def __init__(self, lesion_zyx: torch.Tensor) -> None:
        super().__init__(ModelSpec(arch="resnet10"))
        self.register_buffer("lesion", lesion_zyx[None, None].float())
        self.layer4 = nn.Identity()  # type: ignore[assignment]
        self.fc = nn.Linear(1, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[-100.0], [100.0]]))  # logits (-s, s), s = 100 · mean

    def features(self, x: torch.Tensor) -> torch.Tensor:
        lesion: torch.Tensor = self.lesion  # type: ignore[assignment]
        out: torch.Tensor = self.layer4(lesion.expand(x.shape[0], -1, -1, -1, -1) + 0.0 * x)
        return out


def _lesion_in_model_space(study: StudyInfo, predictor: Predictor) -> torch.Tensor:
    """The lesion mask at the model voxels (nearest source voxel), preprocessed as the worker does.

    Weighted 0.6 at the rim to 1.0 at the centre of the largest lesion, so that the
    saliency peak (and the page's first slice) falls in the middle of that lesion.
    """
    prepared = read_study(study.zip_path, preprocess=predictor.preprocess_config).preprocessed
    assert prepared is not None
    g = prepared.geometry
    d, h, w = g.model_size_zyx
    zz, yy, xx = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    model_zyx = np.stack([zz, yy, xx], axis=-1).reshape(-1, 3)
    src = np.rint(g.model_to_source_index(model_zyx)).astype(int)
    mask = study.phantom.mask
    ok = np.all((src >= 0) & (src < np.asarray(mask.shape)), axis=1)
    labels = np.zeros(d * h * w, dtype=np.int64)
    labels[ok] = mask[src[ok, 0], src[ok, 1], src[ok, 2]]
    largest = int(np.argmax(np.bincount(labels)[1:])) + 1
    centre = model_zyx[labels == largest].mean(axis=0)
    bump = np.exp(-((model_zyx - centre) ** 2).sum(axis=1) / (2 * 10.0**2))
    out = np.where(labels > 0, 0.6 + 0.4 * bump, 0.0).astype(np.float32)
    return torch.from_numpy(out.reshape(d, h, w))


@needs_chromium
def test_viewer_puts_the_heat_on_the_lesion_for_a_lesion_oracle(
    api: LiveApi, worker: Worker, key: str, study: StudyInfo, browser: Chromium
) -> None:
    demo = worker.predictor(None)
    oracle = Predictor(demo.entry, _LesionOracle(_lesion_in_model_space(study, demo)), device="cpu")
    saved = dict(worker.predictors)
    for k in saved:
        worker.predictors[k] = oracle
    try:
        with api.client(key) as c:
            job = _run_job(c, study.zip_path)
            expl = c.get(f"/v1/jobs/{job}/explanation").json()
    finally:
        worker.predictors.update(saved)
    geom = VolumeGeometry.from_dict(expl["geometry"])
    _, ny, nx = geom.shape_zyx
    lesion = study.phantom.mask > 0
    peak_z = expl["stats"]["peak"]["index_zyx"][0]
    assert lesion[peak_z].any(), "the oracle's peak is not on a lesion slice"

    page = open_viewer(browser, api, job, viewer_token(api, job, key))
    assert page["state"] == "ready" and page["slice"] == peak_z, page
    shot = browser.screenshot()
    inside, covered, n_hot = overlap(
        shot, Screen(page["rect"], ny, nx), study.phantom.mask[peak_z], geom.spacing_mm[:2]
    )
    print(
        f"\nlesion oracle: peak slice {peak_z}; hot px on the lesion box ±{MARGIN_MM:g} mm: "
        f"{inside:.3f} of {n_hot}; lesion px coloured: {covered:.3f}; page ready {page['renderMs']:.0f} ms"
    )
    assert n_hot > 200
    assert inside >= 0.9, f"only {inside:.3f} of the hot pixels lie on the lesion"
    assert covered >= 0.6, f"only {covered:.3f} of the lesion is hot"


# --------------------------------------------------------------------------- an indeterminate study

#: what the result panel shows and in which colours (computed styles), and the page's own colours
#: of a pathology, a muted text and an indeterminate label (probe elements with those classes)
_RESULT_STYLES = """(() => {
  const probe = (cls) => { const e = document.createElement('span'); e.className = cls;
    document.body.appendChild(e); const c = getComputedStyle(e).color; e.remove(); return c; };
  const look = (e) => ({text: e.textContent, cls: e.className, color: getComputedStyle(e).color,
    hidden: e.hidden});
  const el = (id) => document.getElementById(id);
  return {red: probe('pathology'), muted: probe('muted'), amber: probe('indeterminate'),
    label: look(el('label')), probability: look(el('probability')), reasons: look(el('reasons')),
    cells: [...el('decisions').tBodies[0].rows].map((r) => ({op: r.dataset.op, ...look(r.cells[2])})),
    red_elements: document.querySelectorAll('.pathology').length}; })()"""


@needs_chromium
def test_viewer_shows_an_indeterminate_study_as_such(
    api: LiveApi, worker: Worker, key: str, browser: Chromium, tmp_path: Path
) -> None:
    zp = tmp_path / "head.zip"
    write_family_study(zp, make_family("head", 1))  # not a chest CT: no lungs
    with api.client(key) as c:
        job = _run_job(c, zp)
        result = c.get(f"/v1/jobs/{job}/result").json()
    reasons = result["indeterminate_reasons"]
    assert result["label"] == "indeterminate" and "no_lungs_found" in reasons, result

    page = open_viewer(browser, api, job, viewer_token(api, job, key))
    assert page["state"] == "ready", page
    _check_page_text(page, result)
    v = browser.eval(_RESULT_STYLES)
    red, muted, amber = v["red"], v["muted"], v["amber"]
    assert len({red, muted, amber}) == 3, (red, muted, amber)

    label = v["label"]
    assert label["text"] == "indeterminate: the model cannot judge this study", label
    assert label["cls"] == "indeterminate" and label["color"] == amber, label
    prob = v["probability"]
    assert prob["text"] == f"{100 * result['probability']:.1f} % (not a decision)", prob
    assert prob["cls"] == "muted" and prob["color"] == muted, prob  # a grey number, not a red percentage
    why = v["reasons"]
    assert not why["hidden"] and why["text"] == f"Reasons: {', '.join(reasons)}", why
    cells = {c["op"]: c for c in v["cells"]}
    assert set(cells) == set(result["operating_points"])
    for op, cell in cells.items():
        assert cell["text"] == "indeterminate" and cell["cls"] == "indeterminate", (op, cell)
        assert cell["color"] == amber, (op, cell)
    assert v["red_elements"] == 0  # nothing on the page is styled as a pathology
    for shown in (label, prob, why, *cells.values()):
        assert shown["color"] != red, shown


# --------------------------------------------------------------------------- error states


@needs_chromium
def test_viewer_shows_errors_a_missing_key_a_wrong_key_and_a_failed_job(
    api: LiveApi, worker: Worker, key: str, browser: Chromium, tmp_path: Path
) -> None:
    zp = tmp_path / "few.zip"
    make_study(zp, seed=3, variant="few_slices")
    with api.client(key) as c:
        job = _submit(c, zp)
        status = wait_job(c, job)
    assert status["state"] == "failed" and status["error"]["code"] == "too_few_slices", status

    page = open_viewer(browser, api, job, viewer_token(api, job, key))
    assert page["state"] == "error" and page["error"]["code"] == "too_few_slices", page
    assert "Job failed" in page["text"] and "too_few_slices" in page["text"]

    page = open_viewer(browser, api, job, "not-a-key")
    assert page["state"] == "error" and page["error"]["code"] == "unauthorized", page
    assert "Not authorised" in page["text"]

    # a product page opens the viewer and hands the token over by postMessage: accepted
    assert open_from_opener(browser, api, job, viewer_token(api, job, key)) == "error"
    assert browser.eval("window.s4ctChild.s4ctViewer.error.code") == "too_few_slices"
    assert browser.eval("window.s4ctChild.location.href") == f"{api.base}/viewer/{job}"

    # another job's token: refused by the API (the token reads its own job only)
    with api.client(key) as c:
        other = _submit(c, zp)
    page = open_viewer(browser, api, job, viewer_token(api, other, key))
    assert page["state"] == "error" and page["error"]["code"] == "forbidden", page

    # an old link with the API key in the fragment: the key leaves the address bar and is not used
    browser.open(f"{api.base}/viewer/{job}#key={key}")
    assert browser.wait_state(("token", "ready", "error")) == "token"
    assert browser.eval("location.href") == f"{api.base}/viewer/{job}"
    assert "not accepted" in browser.eval("document.body.innerText")
