"""Headless Chromium over the DevTools protocol, and where source voxels land on its screenshots.

Helpers of the viewer tests (test_viewer_page.py): :class:`Chromium` drives the page over
``chromium --remote-debugging-pipe`` (no extra Python package); :class:`Screen` maps a
displayed slice's voxels to the canvas pixels; :func:`coloured_pixels` and :func:`hot_pixels` classify
screen pixels (the CT is gray, the heatmap is jet).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import LiveApi  # type: ignore[import-not-found]
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"
)

WINDOW = (1040, 800)
#: a screen pixel is "strongly coloured" (heatmap) when max(R, G, B) - min(R, G, B) exceeds this (CT is gray)
CHROMA = 40
#: a pixel is "hot" when R - B and R - G exceed these: jet at ≥ 0.75 of the maximum, never below 0.65
#: (at the page's initial 60 % opacity; the heat layer's alpha ramps 0.35 → 1 from 0.2 to 1 of the maximum)
HOT_RB, HOT_RG = 60, 30
#: WebGL2 without a GPU: ANGLE on SwiftShader, Chromium's CPU renderer (NiiVue needs WebGL2)
SWIFTSHADER = ("--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist")
#: margin around the lesion's box on screen that still counts as "on the lesion"
MARGIN_MM = 10.0


# --------------------------------------------------------------------------- a DevTools client on a pipe


class Chromium:
    """Headless Chromium driven by the DevTools protocol over ``--remote-debugging-pipe``.

    Chromium reads commands on fd 3 and writes answers and events on fd 4, each a
    JSON message ended by a NUL byte.
    """

    def __init__(self, binary: str, profile: Path, timeout: float = 60.0, webgl: bool = False) -> None:
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()
        # the child's ends go to fds ≥ 10 so that the shell can place them on 3 and 4 without clashes
        child_r = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10)
        child_w = fcntl.fcntl(out_w, fcntl.F_DUPFD, 10)
        os.close(cmd_r)
        os.close(out_w)
        self._log = (profile / "chromium.log").open("wb")
        args = [
            binary,
            "--headless",
            "--no-sandbox",
            *(SWIFTSHADER if webgl else ("--disable-gpu",)),
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            [
                "/bin/bash",
                "-c",
                f'exec "$@" 3<&{child_r} 4>&{child_w} {child_r}<&- {child_w}>&-',
                "bash",
                *args,
            ],
            pass_fds=(child_r, child_w),
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        os.close(child_r)
        os.close(child_w)
        self.timeout = timeout
        self._buf = b""
        self._next = 0
        self.session: str | None = None

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._out_r], [], [], left)[0]:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self._out_r, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium exited (rc {self.proc.poll()})")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        msg: dict[str, Any] = json.loads(raw)
        return msg

    def send(self, method: str, params: dict[str, Any] | None = None, session: bool = True) -> dict[str, Any]:
        self._next += 1
        msg: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            answer = self._read_message(deadline)
            if answer.get("id") == self._next:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                result: dict[str, Any] = answer.get("result", {})
                return result

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send(
            "Target.attachToTarget", {"targetId": target, "flatten": True}, session=False
        )["sessionId"]
        w, h = WINDOW
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": w, "height": h, "deviceScaleFactor": 1, "mobile": False},
        )
        self.send("Page.enable")
        self.send("Page.navigate", {"url": url})

    def eval(self, expression: str) -> Any:
        r = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True, "userGesture": True},
        )
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_state(self, states: tuple[str, ...], timeout: float = 60.0, seen: set[str] | None = None) -> str:
        """Poll ``<html data-state>`` until it is one of ``states``; every state met goes into ``seen``."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.eval("document.documentElement && document.documentElement.dataset.state")
            if seen is not None and state:
                seen.add(str(state))
            if state in states:
                return str(state)
            if time.monotonic() > deadline:
                raise AssertionError(f"page stuck in state {state!r}: {self.eval('document.body.innerText')}")
            time.sleep(0.05)

    def screenshot(self) -> np.ndarray[Any, Any]:
        self.eval("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")  # painted
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        self.last_png = base64.b64decode(data)
        return np.asarray(Image.open(io.BytesIO(self.last_png)).convert("RGB"))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send("Browser.close", session=False)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd_w)
        os.close(self._out_r)
        self._log.close()


# --------------------------------------------------------------------------- geometry on screen


class Screen:
    """Where a source voxel (row, column) of the displayed slice lies in the screenshot."""

    def __init__(self, rect: dict[str, float], ny: int, nx: int) -> None:
        self.left, self.top, self.width, self.height = (
            rect["left"],
            rect["top"],
            rect["width"],
            rect["height"],
        )
        self.ny, self.nx = ny, nx

    def region(self, shot: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        x0, y0 = round(self.left), round(self.top)
        return shot[y0 : y0 + round(self.height), x0 : x0 + round(self.width)]

    def voxel_mask(self, mask_yx: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """A source-slice mask sampled at the canvas pixels' centres (nearest voxel)."""
        h, w = round(self.height), round(self.width)
        rows = np.clip(((np.arange(h) + 0.5) * self.ny / self.height).astype(int), 0, self.ny - 1)
        cols = np.clip(((np.arange(w) + 0.5) * self.nx / self.width).astype(int), 0, self.nx - 1)
        out: np.ndarray[Any, Any] = mask_yx[np.ix_(rows, cols)]
        return out


def coloured_pixels(img: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Pixels showing heatmap colour at all (the CT is gray: R = G = B)."""
    rgb = img.astype(np.int16)
    out: np.ndarray[Any, Any] = (rgb.max(axis=2) - rgb.min(axis=2)) > CHROMA
    return out


def hot_pixels(img: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Red-orange pixels: jet above ≈ 0.7 of the maximum at 60 % opacity (gray below keeps R - G, R - B)."""
    rgb = img.astype(np.int16)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    out: np.ndarray[Any, Any] = (r - b >= HOT_RB) & (r - g >= HOT_RG)
    return out


def boxes_around(labels_yx: np.ndarray[Any, Any], margin_px: tuple[int, int]) -> np.ndarray[Any, Any]:
    """Union of each lesion's bounding box (per label value) grown by (rows, columns) voxels."""
    out = np.zeros(labels_yx.shape, dtype=bool)
    my, mx = margin_px
    for value in np.unique(labels_yx[labels_yx > 0]):
        ys, xs = np.nonzero(labels_yx == value)
        out[max(0, ys.min() - my) : ys.max() + my + 1, max(0, xs.min() - mx) : xs.max() + mx + 1] = True
    return out


_PAGE = """(() => { const r = document.getElementById('slice').getBoundingClientRect();
    const v = window.s4ctViewer;
    return {rect: {left: r.left, top: r.top, width: r.width, height: r.height},
            tile: v.tile, slice: v.slice, opacity: v.opacity, renderMs: v.renderMs, error: v.error,
            hash: location.hash, text: document.body.innerText, href: location.href,
            stored: sessionStorage.length + localStorage.length,
            timing: performance.getEntriesByType('navigation').map((e) => e.name).join(' '),
            banner: !document.getElementById('banner').hidden}; })()"""


def viewer_token(api: LiveApi, job: str, key: str) -> str:
    """A viewer token of ``job`` (POST /v1/jobs/{id}/viewer-token with the client's API key)."""
    with api.client(key) as c:
        r = c.post(f"/v1/jobs/{job}/viewer-token")
    assert r.status_code == 201, r.text
    token: str = r.json()["token"]
    return token


def give_token(browser: Chromium, token: str) -> None:
    """Type ``token`` into the page's form and submit it, as a user pasting it would."""
    browser.wait_state(("token",))
    browser.eval(
        f"(() => {{ document.getElementById('token').value = {json.dumps(token)};"
        " document.getElementById('token-form').requestSubmit(); })()"
    )


def open_from_opener(browser: Chromium, api: LiveApi, job: str, token: str, timeout: float = 60.0) -> str:
    """Open the viewer as a product would: a page of the API's origin ``window.open``s it and answers
    its ``s4ct-viewer-ready`` message with the token (``postMessage``); the viewer's final state."""
    browser.open(f"{api.base}/healthz")
    browser.eval(
        "new Promise((r) => (document.readyState === 'complete' ? r() : addEventListener('load', r)))"
    )
    browser.eval(
        "(() => { addEventListener('message', (e) => { if (e.data && e.data.type === 's4ct-viewer-ready')"
        f" e.source.postMessage({{type: 's4ct-viewer-token', token: {json.dumps(token)}}}, '*'); }});"
        f" window.s4ctChild = window.open('/viewer/{job}'); return true; }})()"
    )
    deadline = time.monotonic() + timeout
    while True:
        state = browser.eval(
            "(() => { const d = window.s4ctChild && window.s4ctChild.document;"
            " return d && d.documentElement ? d.documentElement.dataset.state || null : null; })()"
        )
        if state in ("ready", "error"):
            return str(state)
        if time.monotonic() > deadline:
            raise AssertionError(f"the viewer opened by a product page is stuck in state {state!r}")
        time.sleep(0.05)


def open_viewer(
    browser: Chromium,
    api: LiveApi,
    job: str,
    token: str,
    timeout: float = 60.0,
    seen: set[str] | None = None,
    url_suffix: str = "",
) -> dict[str, Any]:
    """Open the page, give it ``token`` in memory, wait until it is ready or shows an error.

    The page's state, text and canvas box.
    """
    t0 = time.perf_counter()
    browser.open(f"{api.base}/viewer/{job}{url_suffix}")
    give_token(browser, token)
    browser.wait_state(("ready", "error"), timeout=timeout, seen=seen)
    page: dict[str, Any] = browser.eval(_PAGE)
    page["state"] = browser.eval("document.documentElement.dataset.state")
    page["wall_s"] = time.perf_counter() - t0
    return page


def overlap(
    shot: np.ndarray[Any, Any], screen: Screen, labels_yx: np.ndarray[Any, Any], spacing: tuple[float, float]
) -> tuple[float, float, int]:
    """(share of hot pixels on a lesion's box ± MARGIN_MM, share of lesion pixels coloured, hot pixels)."""
    view = screen.region(shot)
    hot = hot_pixels(view)
    margin = (round(MARGIN_MM / spacing[1]), round(MARGIN_MM / spacing[0]))
    near = screen.voxel_mask(boxes_around(labels_yx, margin))
    on = screen.voxel_mask(labels_yx > 0)
    n = int(hot.sum())
    inside = float((hot & near).sum()) / max(n, 1)
    covered = float((coloured_pixels(view) & on).sum()) / max(int(on.sum()), 1)
    return inside, covered, n


def grow(m: np.ndarray[Any, Any], r: int) -> np.ndarray[Any, Any]:
    """``m`` dilated by ``r`` pixels (4-connected)."""
    out = m.copy()
    for _ in range(r):
        g = out.copy()
        g[1:] |= out[:-1]
        g[:-1] |= out[1:]
        g[:, 1:] |= out[:, :-1]
        g[:, :-1] |= out[:, 1:]
        out = g
    return out


def shrink(m: np.ndarray[Any, Any], r: int) -> np.ndarray[Any, Any]:
    """``m`` eroded by ``r`` pixels (4-connected)."""
    return ~grow(~m, r)
