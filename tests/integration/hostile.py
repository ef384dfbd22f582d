"""Helpers shared by the hostile-input tests (test_hostile_upload, test_hostile_jobs)."""

from __future__ import annotations

import httpx

MiB = 1 << 20


def post_study(c: httpx.Client, body: bytes, *, multipart: bool = False) -> httpx.Response:
    if multipart:
        return c.post("/v1/studies", files={"file": ("study.zip", body, "application/zip")})
    return c.post("/v1/studies", content=body, headers={"content-type": "application/zip"})
