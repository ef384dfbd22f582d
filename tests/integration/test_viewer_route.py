"""The reference viewer's route (``/viewer/{job_id}``) and its assets, without a browser.

The page itself, in headless Chromium, is tested in test_viewer_page.py.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from conftest import LiveApi  # type: ignore[import-not-found]

ROOT = Path(__file__).resolve().parents[2]


def test_viewer_route_serves_the_page_and_only_its_assets(api: LiveApi) -> None:
    with api.client() as c:  # the page holds no data: no key needed
        r = c.get(f"/viewer/{uuid.uuid4()}")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert 'src="assets/viewer.js"' in r.text and "data-state" in r.text
        assert r.headers["cache-control"] == "no-store" and r.headers["referrer-policy"] == "no-referrer"
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "img-src" in csp
        for name, ctype in (("viewer.js", "text/javascript"), ("viewer.css", "text/css")):
            a = c.get(f"/viewer/assets/{name}")
            assert a.status_code == 200 and a.headers["content-type"].startswith(ctype), name
            assert a.content == (ROOT / "app" / "static" / "viewer" / name).read_bytes()
        for bad in ("index.html", "..%2F..%2Fapi%2Froutes%2Fviewer.py", "nope.js"):
            r = c.get(f"/viewer/assets/{bad}")
            assert r.status_code == 404 and r.json()["error"] == "not_found", bad
        r = c.get("/viewer/not-a-uuid")
        assert r.status_code == 422 and r.json()["error"] == "validation_error"
        assert not [p for p in c.get("/openapi.json").json()["paths"] if p.startswith("/viewer")]
