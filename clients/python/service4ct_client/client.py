"""The client: one :class:`httpx.Client`, typed methods, typed errors, pagination and polling.

- Auth: ``api_key`` (``Authorization: Bearer …``), or an ``http`` client of your own that adds it.
- Every POST carries an ``Idempotency-Key`` (yours, or a fresh UUID), so a retried request
  creates nothing twice.
- An error answer raises :class:`Service4CTError` with the stable ``error`` code, the HTTP status,
  the request id and, for 429/503, ``retry_after`` (seconds).
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, TypeVar, cast

import httpx

from service4ct_client.types import (
    Explanation,
    FeedbackHistory,
    JobAccepted,
    JobFeedback,
    JobPage,
    JobResult,
    JobStatus,
    ModelsOut,
    Performance,
    StudyOut,
    StudyPage,
    ViewerToken,
)

__all__ = ["FINAL_STATES", "Service4CTClient", "Service4CTError"]

#: the states a job ends in
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
_T = TypeVar("_T")
Filters = Mapping[str, str | int | None]


class Service4CTError(Exception):
    """An error answer of the service, or ``network_error`` / ``timeout`` on the client's side."""

    def __init__(
        self,
        code: str,
        status: int,
        detail: str,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{code} (HTTP {status}): {detail}")
        self.code = code
        self.status = status
        self.detail = detail
        self.request_id = request_id
        self.retry_after = retry_after


def _retry_after(value: str | None) -> float | None:
    if value is None or not value.strip():
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        at = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, at.timestamp() - time.time())


def _error(r: httpx.Response) -> Service4CTError:
    try:
        body = r.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    code = body.get("error")
    detail = body.get("detail")
    return Service4CTError(
        code if isinstance(code, str) else f"http_{r.status_code}",
        r.status_code,
        detail if isinstance(detail, str) else r.reason_phrase,
        body.get("request_id") or r.headers.get("X-Request-ID"),
        _retry_after(r.headers.get("Retry-After")),
    )


class Service4CTClient:
    """The Service4CT API. Use as a context manager (or call :meth:`close`).

    Args:
        api_base: the API's base URL, e.g. ``http://127.0.0.1:8000``.
        api_key: sent as ``Authorization: Bearer <key>``.
        http: an :class:`httpx.Client` of your own (its ``base_url`` is set to ``api_base`` when it has
            none); give it the auth header instead of ``api_key``.
        timeout: seconds per request (of the client made here).
        idempotency_key: makes the Idempotency-Key of a POST that names none (default: a UUID4).
    """

    def __init__(
        self,
        api_base: str,
        api_key: str | None = None,
        *,
        http: httpx.Client | None = None,
        timeout: float = 60.0,
        idempotency_key: Callable[[], str] | None = None,
    ) -> None:
        if api_key is None and http is None:
            raise ValueError("Service4CTClient needs an api_key or an http client that adds the auth")
        self.api_base = api_base.rstrip("/")
        self._own = http is None
        self.http = http if http is not None else httpx.Client(timeout=timeout)
        if not str(self.http.base_url):
            self.http.base_url = httpx.URL(self.api_base)
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key is not None else {}
        self._new_key = idempotency_key or (lambda: str(uuid.uuid4()))

    def __enter__(self) -> Service4CTClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._own:
            self.http.close()

    # --- transport

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Filters | None = None,
        json_body: Any = None,
        content: bytes | IO[bytes] | None = None,
        files: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        """One request; the parsed JSON of a 2xx answer (None for 204), else :class:`Service4CTError`."""
        sent = {**self._auth, **(headers or {})}
        if method == "POST":
            sent["Idempotency-Key"] = idempotency_key or self._new_key()
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            r = self.http.request(
                method, path, params=query, json=json_body, content=content, files=files, headers=sent
            )
        except httpx.TransportError as e:
            raise Service4CTError("network_error", 0, f"{type(e).__name__}: {e}") from e
        if r.is_error:
            raise _error(r)
        return None if r.status_code == 204 else r.json()

    # --- studies

    def upload_study(
        self,
        study: bytes | IO[bytes] | Path,
        *,
        client_ref: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        multipart: bool = False,
        idempotency_key: str | None = None,
    ) -> StudyOut:
        """Uploads a DICOM study ZIP (streamed from a file); the same bytes again answer the stored study."""
        headers: dict[str, str] = {}
        if client_ref is not None:
            headers["X-Client-Ref"] = client_ref
        if metadata is not None:
            headers["X-Client-Metadata"] = json.dumps(dict(metadata), separators=(",", ":"))
        with study.open("rb") if isinstance(study, Path) else contextlib.nullcontext(study) as body:
            if multipart:
                out = self.request(
                    "POST",
                    "/v1/studies",
                    files={"file": ("study.zip", body, "application/zip")},
                    headers=headers,
                    idempotency_key=idempotency_key,
                )
            else:
                headers["Content-Type"] = "application/zip"
                out = self.request(
                    "POST", "/v1/studies", content=body, headers=headers, idempotency_key=idempotency_key
                )
        return cast(StudyOut, out)

    def get_study(self, study_id: str) -> StudyOut:
        return cast(StudyOut, self.request("GET", f"/v1/studies/{study_id}"))

    def study_series(self, study_id: str) -> dict[str, Any]:
        """The series picker: every series with its ranking, usability and reason codes."""
        return cast(dict[str, Any], self.request("GET", f"/v1/studies/{study_id}/series"))

    def delete_study(self, study_id: str) -> None:
        self.request("DELETE", f"/v1/studies/{study_id}")

    def list_studies(self, cursor: str | None = None, **filters: str | int | None) -> StudyPage:
        """One page of ``GET /v1/studies`` (filters: client_ref, created_after, created_before, limit)."""
        return cast(StudyPage, self.request("GET", "/v1/studies", params={**filters, "cursor": cursor}))

    def studies(self, **filters: str | int | None) -> Iterator[StudyOut]:
        """Every study matching ``filters``, page after page (``limit`` is the page size)."""
        for page in _pages(lambda c: self.list_studies(c, **filters)):
            yield from page["items"]

    # --- jobs

    def predict(self, study_id: str, *, idempotency_key: str | None = None, **options: Any) -> JobAccepted:
        """``POST /v1/jobs``: options are JobCreate's fields (explain, explain_params, model, series_uid,
        priority, client_ref, metadata, callback_url)."""
        body = {"study_id": study_id, **options}
        return cast(
            JobAccepted, self.request("POST", "/v1/jobs", json_body=body, idempotency_key=idempotency_key)
        )

    def get_job(self, job_id: str) -> JobStatus:
        return cast(JobStatus, self.request("GET", f"/v1/jobs/{job_id}"))

    def list_jobs(self, cursor: str | None = None, **filters: str | int | None) -> JobPage:
        """One page of ``GET /v1/jobs`` (filters: state, study_id, client_ref, created_after,
        created_before, label, priority, limit)."""
        return cast(JobPage, self.request("GET", "/v1/jobs", params={**filters, "cursor": cursor}))

    def jobs(self, **filters: str | int | None) -> Iterator[JobStatus]:
        """Every job matching ``filters``, page after page (``limit`` is the page size)."""
        for page in _pages(lambda c: self.list_jobs(c, **filters)):
            yield from page["items"]

    def cancel_job(self, job_id: str, *, idempotency_key: str | None = None) -> JobStatus:
        """Cancels a job (idempotent); a finished one raises ``job_finished`` (409)."""
        return cast(
            JobStatus, self.request("POST", f"/v1/jobs/{job_id}/cancel", idempotency_key=idempotency_key)
        )

    def delete_job(self, job_id: str) -> None:
        self.request("DELETE", f"/v1/jobs/{job_id}")

    def result(self, job_id: str) -> JobResult:
        return cast(JobResult, self.request("GET", f"/v1/jobs/{job_id}/result"))

    def explanation(self, job_id: str, method: str | None = None) -> Explanation:
        """The job's explanation (the latest, or ``method``'s) with presigned file URLs."""
        return cast(
            Explanation, self.request("GET", f"/v1/jobs/{job_id}/explanation", params={"method": method})
        )

    def explain(
        self,
        job_id: str,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> JobAccepted:
        """``POST /v1/jobs/{id}/explain``: explain a succeeded job with another method."""
        body = {"method": method, "params": dict(params or {}), **options}
        out = self.request(
            "POST", f"/v1/jobs/{job_id}/explain", json_body=body, idempotency_key=idempotency_key
        )
        return cast(JobAccepted, out)

    def viewer_token(self, job_id: str, *, idempotency_key: str | None = None) -> ViewerToken:
        """A short-lived read-only token for one job's viewer (hand it over in memory, never in a URL)."""
        out = self.request("POST", f"/v1/jobs/{job_id}/viewer-token", idempotency_key=idempotency_key)
        return cast(ViewerToken, out)

    def give_feedback(
        self,
        job_id: str,
        ground_truth: str,
        reader: str,
        *,
        agrees: bool | None = None,
        comment: str | None = None,
        idempotency_key: str | None = None,
    ) -> JobFeedback:
        """A reader's answer about a succeeded prediction (replaces that reader's current one)."""
        body: dict[str, Any] = {"ground_truth": ground_truth, "reader": reader}
        if agrees is not None:
            body["agrees"] = agrees
        if comment is not None:
            body["comment"] = comment
        out = self.request(
            "POST", f"/v1/jobs/{job_id}/feedback", json_body=body, idempotency_key=idempotency_key
        )
        return cast(JobFeedback, out)

    def feedback(self, job_id: str) -> FeedbackHistory:
        """The job's current feedback and every answer ever given."""
        return cast(FeedbackHistory, self.request("GET", f"/v1/jobs/{job_id}/feedback"))

    def performance(
        self, model: str, *, since: str | None = None, until: str | None = None, client: str | None = None
    ) -> Performance:
        """A model's live figures against the readers' feedback (the caller's own jobs)."""
        params = {"since": since, "until": until, "client": client}
        return cast(Performance, self.request("GET", f"/v1/models/{model}/performance", params=params))

    def models(self) -> ModelsOut:
        return cast(ModelsOut, self.request("GET", "/v1/models"))

    def wait_for_job(
        self,
        job_id: str,
        *,
        initial_delay: float = 0.5,
        max_delay: float = 5.0,
        factor: float = 1.5,
        timeout: float = 600.0,
        on_status: Callable[[JobStatus], None] | None = None,
    ) -> JobStatus:
        """Polls until the job is final (succeeded, failed or cancelled) and returns that status.

        Waits ``initial_delay`` seconds, then ``factor`` times longer each poll up to ``max_delay``;
        a 429 or 503 waits its ``Retry-After``. Raises ``timeout`` after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        delay = initial_delay
        while True:
            wait = delay
            try:
                status = self.get_job(job_id)
                if on_status is not None:
                    on_status(status)
                if status["state"] in FINAL_STATES:
                    return status
            except Service4CTError as e:
                if e.status not in (429, 503):
                    raise
                wait = max(delay, e.retry_after or 0.0)
            if time.monotonic() + wait > deadline:
                raise Service4CTError("timeout", 0, f"job {job_id} not final after {timeout:g} s")
            time.sleep(wait)
            delay = min(max_delay, delay * factor)


def _pages(fetch: Callable[[str | None], _T]) -> Iterator[_T]:
    cursor: str | None = None
    while True:
        page = fetch(cursor)
        yield page
        cursor = cast(Mapping[str, Any], page)["next_cursor"]
        if cursor is None:
            return
