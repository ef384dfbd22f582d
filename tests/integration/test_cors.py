"""CORS through the real API and the embedded S3 (SeaweedFS): preflights without credentials, and
headless Chromium on a page of another origin that lists jobs and fetches a presigned saliency
NIfTI, as the React worklist will; a page of an origin not allowed reads nothing."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import LiveApi, free_port, new_key, wait_for  # type: ignore[import-not-found]
from seeding import create_job, finish_succeeded, small_zip, upload  # type: ignore[import-not-found]
from viewer_browser import CHROMIUM, Chromium, needs_chromium  # type: ignore[import-not-found]

from app.config import Settings

PAGE_PORT = free_port()
ALLOWED = f"http://127.0.0.1:{PAGE_PORT}"
OTHER = f"http://localhost:{PAGE_PORT}"  # the same page, another origin: not allowed

#: the page: lists the caller's jobs, reads the newest one's explanation and fetches its NIfTI
PAGE = b"""<!doctype html><meta charset="utf-8"><title>worklist</title><script>
async function attempt(f) { try { return await f(); } catch (e) { return "blocked: " + e.name; } }
window.file = (url) => attempt(async () => {
  const r = await fetch(url);
  return {status: r.status, bytes: (await r.arrayBuffer()).byteLength};
});
window.run = async (api, key) => {
  const h = {Authorization: "Bearer " + key};
  const out = {};
  out.list = await attempt(async () => {
    const r = await fetch(api + "/v1/jobs?limit=5", {headers: h});
    const jobs = (await r.json()).items.map(i => i.job_id);
    return {status: r.status, jobs: jobs, rid: r.headers.get("X-Request-ID")};
  });
  if (typeof out.list === "string") return out;
  const ex = await (await fetch(api + "/v1/jobs/" + out.list.jobs[0] + "/explanation", {headers: h})).json();
  out.nifti = await window.file(ex.files.nifti.url);
  out.refused = await attempt(async () => {
    const r = await fetch(api + "/v1/jobs", {headers: {Authorization: "Bearer s4ct_wrong"}});
    return {status: r.status, error: (await r.json()).error};
  });
  return out;
};
</script><p>worklist</p>"""


@pytest.fixture(scope="module")
def page_server() -> Iterator[None]:
    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(PAGE)))
            self.end_headers()
            self.wfile.write(PAGE)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", PAGE_PORT), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(cors_origins=[ALLOWED], s3_cors_origins=[ALLOWED])


def test_preflight_needs_no_key_and_errors_carry_cors_headers(api: LiveApi) -> None:
    with api.client() as c:
        asks = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"}
        r = c.options("/v1/jobs", headers={"Origin": ALLOWED, **asks})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ALLOWED, r.text
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        r = c.options("/v1/jobs", headers={"Origin": OTHER, **asks})
        assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
        r = c.get("/v1/jobs", headers={"Origin": ALLOWED})  # the edge's 401, readable by the page
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == ALLOWED
        assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
        r = c.get("/v1/jobs", headers={"Origin": OTHER})
        assert r.status_code == 401 and "access-control-allow-origin" not in r.headers


@needs_chromium
def test_a_page_of_another_origin_lists_jobs_and_reads_a_presigned_nifti(
    api: LiveApi, settings: Settings, page_server: None, tmp_path: Path
) -> None:
    key = new_key(settings, "cors-site")
    with api.client(key) as c:
        job = create_job(c, upload(c, small_zip("cors")))
    finish_succeeded(api, job, files={"nifti": "saliency.nii.gz", "stats_json": "stats.json"})
    assert CHROMIUM is not None
    profile = tmp_path / "profile"
    profile.mkdir()
    browser = Chromium(CHROMIUM, profile)
    try:
        results, files = {}, {}
        with api.client(key) as c:
            nifti_url = c.get(f"/v1/jobs/{job}/explanation").json()["files"]["nifti"]["url"]
        for origin in (ALLOWED, OTHER):
            browser.open(f"{origin}/worklist.html")
            wait_for(lambda: browser.eval("typeof window.run") == "function", timeout=30, what="the page")
            results[origin] = browser.eval(f"window.run({api.base!r}, {key!r})")
            files[origin] = browser.eval(f"window.file({nifti_url!r})")
    finally:
        browser.close()
    ok = results[ALLOWED]
    assert ok["list"]["status"] == 200 and ok["list"]["jobs"] == [job] and ok["list"]["rid"], ok
    assert ok["nifti"] == {"status": 200, "bytes": 4}, ok  # the bucket's CORS lets the page read it
    assert ok["refused"] == {"status": 401, "error": "unauthorized"}, ok
    assert results[OTHER] == {"list": "blocked: TypeError"}, results[OTHER]  # the browser refuses
    assert files == {ALLOWED: {"status": 200, "bytes": 4}, OTHER: "blocked: TypeError"}, files
