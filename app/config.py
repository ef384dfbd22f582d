"""Service settings: one :class:`Settings` object per process, built at start (architecture rule 9).

Values come from, in increasing priority: defaults, an optional YAML file
(``S4CT_CONFIG_FILE`` or the ``config_file`` argument), and ``S4CT_*``
environment variables (e.g. ``S4CT_DATABASE_URL``). Nothing reads the
environment at import time; call :func:`load_settings` once in ``main``.

Preprocessing settings (input size, HU window, spacing) are *not* here: they
travel with each model in the weights manifest (architecture rule 5).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ml.explain import ExplainMethod

__all__ = ["DEFAULT_MANIFEST", "Settings", "load_settings"]

DEFAULT_MANIFEST = Path(__file__).resolve().parents[1] / "weights" / "manifest.json"
MiB = 1 << 20
#: a browser origin: scheme, host and optional port, nothing after
_ORIGIN = re.compile(r"https?://[^/\s,?#]+")
GiB = 1 << 30


class Settings(BaseSettings):
    """Everything a service process needs to know (sizes in bytes, durations in seconds)."""

    model_config = SettingsConfigDict(env_prefix="S4CT_", extra="forbid", frozen=True)

    # --- connections (unset → the embedded stack of `service4ct serve`)
    database_url: str | None = None
    redis_url: str | None = None
    s3_endpoint: str | None = None
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    #: address browsers use for presigned URLs when it differs from s3_endpoint (e.g. behind a proxy)
    s3_public_endpoint: str | None = None
    s3_bucket: str = "service4ct"
    s3_region: str = "us-east-1"
    s3_read_timeout_s: float = Field(
        60.0, gt=0, description="S3 socket read timeout per attempt (a hung object store fails the call)"
    )
    s3_max_retries: int = Field(
        5,
        ge=0,
        le=20,
        description="retries of a failed S3 call after its first attempt (botocore standard mode)",
    )
    db_pool_min: int = Field(1, ge=1)
    db_pool_max: int = Field(16, ge=1)

    # --- API
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_upload_bytes: int = Field(8 * GiB, ge=1)
    upload_part_bytes: int = Field(8 * MiB, ge=5 * MiB)
    #: parts of one upload sent to S3 at once (memory per upload: (this + 1) × upload_part_bytes)
    upload_parts_in_flight: int = Field(2, ge=1, le=8)
    #: uploads streamed at once by one API process; more wait for a slot (bounds API memory)
    max_concurrent_uploads: int = Field(8, ge=1)
    #: an upload waiting longer than this for a slot is refused with 503 server_busy + Retry-After
    upload_wait_s: float = Field(120.0, gt=0)
    #: default requests per minute of one client, all API processes together (None: no limit);
    #: a client's own limit (`service4ct client quota`) overrides it (429 rate_limited)
    rate_limit_per_minute: int | None = Field(None, ge=1)
    #: default maximum of one client's queued jobs (None: no limit; 429 quota_exceeded)
    max_queued_jobs_per_client: int | None = Field(None, ge=1)
    #: Retry-After (seconds) of a quota_exceeded answer
    quota_retry_after_s: int = Field(30, ge=1)
    presign_ttl_s: int = Field(900, ge=1, le=900)
    request_id_header: str = "X-Request-ID"
    idempotency_ttl_s: int = Field(24 * 3600, ge=60)
    #: /readyz: a worker heartbeat older than this is stale
    worker_stale_s: float = Field(60.0, gt=0)
    require_worker: bool = True

    # --- models
    manifest_path: Path = DEFAULT_MANIFEST
    #: the API hashes the local weight files the manifest names before accepting a job for the
    #: model; false where the API cannot read them (the api image carries the manifest only)
    api_checks_weight_files: bool = True
    weights_cache_dir: Path | None = None  # default: var_dir/weights
    device: Literal["auto", "cpu", "cuda"] = "auto"

    # --- queue and worker
    stream: str = "s4ct:jobs"
    group: str = "workers"
    max_attempts: int = Field(3, ge=1, le=20)
    lease_s: float = Field(120.0, gt=0)
    heartbeat_s: float = Field(10.0, gt=0)
    claim_idle_s: float = Field(60.0, gt=0, description="XAUTOCLAIM messages idle this long")
    reconcile_s: float = Field(15.0, gt=0, description="period of the reconciler")
    upload_abandon_s: float = Field(
        86_400.0,
        gt=0,
        description="worker: abort S3 multipart uploads left incomplete this long (killed API, S3 outage)",
    )
    storage_retry_s: float = Field(
        60.0,
        ge=0,
        description="worker: retry an unreachable object store this long (backoff) before failing the job "
        "with storage_unavailable",
    )
    drain_s: float = Field(
        30.0,
        ge=0,
        description="on SIGTERM, held jobs may finish this long; the rest are given back uncharged",
    )
    max_batch: int = Field(4, ge=1, le=64)
    max_wait_ms: int = Field(200, ge=0)
    preprocess_workers: int = Field(1, ge=1, le=64)
    prefetch: int = Field(2, ge=1, le=64, description="studies prepared ahead of inference")
    work_dir: Path | None = None  # default: var_dir/work (study ZIPs and saliency files in flight)
    handoff_dir: str = Field(
        "/dev/shm",
        description="worker: memory file system through which preprocessing hands prepared studies to "
        "the model ('' = through the pipe)",
    )
    default_explain: ExplainMethod = "gradcam"
    worker_metrics_port: int | None = Field(
        None, ge=0, le=65535, description="worker: serve Prometheus /metrics on this port (bound to host)"
    )

    # --- priority (the worklist)
    priority_age_s: float = Field(
        600.0,
        gt=0,
        description="worker: a routine job queued longer than this is taken like an urgent one "
        "(no starvation under a stream of urgent jobs)",
    )

    # --- webhooks
    webhook_timeout_s: float = Field(10.0, gt=0)
    webhook_max_attempts: int = Field(10, ge=1)
    webhook_backoff_s: float = Field(2.0, gt=0)
    webhook_backoff_max_s: float = Field(3600.0, gt=0)
    webhook_allow_private: bool = Field(
        False,
        description="allow callbacks to non-global addresses (RFC 1918, ULA, …); link-local, metadata, "
        "CGNAT, 6to4 and Teredo addresses are refused whatever this says",
    )
    webhook_allow_loopback: bool = Field(
        False, description="allow callbacks to loopback addresses (service4ct serve sets it for development)"
    )
    webhook_connect_timeout_s: float = Field(3.0, gt=0, description="TCP/TLS connect timeout of a delivery")
    webhook_concurrency: int = Field(8, ge=1, le=256, description="deliveries in flight per worker")
    webhook_per_client: int = Field(
        2,
        ge=1,
        le=256,
        description="deliveries in flight per worker and client (a hanging endpoint holds these only)",
    )

    # --- explanation budget (the API refuses, the worker fails the job with explain_too_costly)
    explain_max_passes: int = Field(
        1024,
        ge=1,
        description="most forward-pass equivalents per explanation (a backward pass counts 2; "
        "occlusion: one per window position)",
    )
    explain_max_bytes: int = Field(
        2 * GiB,
        ge=1,
        description="most estimated activation memory of one explanation (IG: internal_batch_size volumes)",
    )

    # --- DICOM results and DICOMweb (docs/interop.md)
    dicom_outputs: bool = Field(
        True,
        description="worker: write a DICOM SR and a Secondary Capture of each prediction in the source study",
    )
    dicomweb_timeout_s: float = Field(60.0, gt=0, description="one DICOMweb request (import, push)")
    dicomweb_max_attempts: int = Field(8, ge=1, description="push: STOW-RS attempts before giving up")
    dicomweb_backoff_s: float = Field(5.0, gt=0)
    dicomweb_backoff_max_s: float = Field(3600.0, gt=0)

    # --- logging
    log_level: str = "INFO"
    log_json: bool = False

    # --- HTTP edge (docs/security.md): limits applied before a route runs
    #: a JSON (non-upload) request body larger than this is refused with 413 payload_too_large
    max_json_bytes: int = Field(1 * MiB, ge=1024, le=64 * MiB)
    #: request line plus headers, in bytes: 431 headers_too_large (400 while they still arrive)
    max_header_bytes: int = Field(16 * 1024, ge=1024, le=1 * MiB)
    #: header fields per request; more is refused with 431 headers_too_large
    max_header_count: int = Field(100, ge=10, le=1000)
    #: a connection must deliver its request line and headers within this (else 408 and closed)
    header_timeout_s: float = Field(10.0, gt=0)
    #: no body byte for this long → 408 request_timeout (the upload is aborted)
    body_idle_timeout_s: float = Field(30.0, gt=0)
    #: after body_idle_timeout_s, a body arriving slower than this on average → 408 (0: no floor)
    body_min_bytes_per_s: int = Field(1024, ge=0)
    #: upload slots one client may hold at once (default: half of max_concurrent_uploads, at least 1)
    max_uploads_per_client: int | None = Field(None, ge=1)
    #: more connections or requests in progress than this → 503 overloaded (None: unbounded)
    limit_concurrency: int | None = Field(1000, ge=1)
    #: lifetime of a viewer token (POST /v1/jobs/{id}/viewer-token), at most 15 min
    viewer_token_ttl_s: int = Field(600, ge=10, le=900)
    #: serve /docs, /redoc and /openapi.json (self-hosted assets, no CDN)
    docs_enabled: bool = True
    #: API: serve Prometheus /metrics on this separate port (None: not served); never on `port`
    metrics_port: int | None = Field(None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    #: API keys: a known or unknown key is cached this long (revocations are broadcast through Redis)
    key_cache_ttl_s: float = Field(10.0, gt=0, le=3600)
    #: server-side encryption requested on every stored object ("" = none; "AES256" = SSE-S3)
    s3_sse: Literal["", "AES256"] = ""

    # --- retention and audit (docs/api.md, Retention and deletion)
    #: days studies and jobs are kept from their creation (None: until deleted); a client's own overrides it
    retention_days: int | None = Field(None, ge=1)
    #: worker: how often the janitor deletes what is past its retention (and sweeps deleted blobs)
    retention_interval_s: float = Field(300.0, gt=0)
    #: rows deleted per transaction by the janitor
    retention_batch: int = Field(100, ge=1, le=10_000)

    # --- CORS (docs/security.md): pages of other origins (the React worklist) calling the API
    #: origins whose pages may call the API, e.g. `https://worklist.example.org` (comma-separated)
    cors_origins: Annotated[list[str], NoDecode] = []
    #: API: at startup, let these origins GET the bucket's presigned files (bucket CORS; empty: left as is)
    s3_cors_origins: Annotated[list[str], NoDecode] = []

    # --- drift monitoring and shadow models (docs/operations.md, Drift and OOD alerts; architecture §3.14)
    #: drift window: the most recent succeeded jobs of a model compared with its reference
    drift_window_jobs: int = Field(500, ge=10, le=100_000)
    #: drift window: only jobs of the last this many hours (None: the job count alone)
    drift_window_hours: float | None = Field(None, gt=0)
    #: fewest jobs in the window before a PSI gauge is exported (a PSI of few studies is noise)
    drift_min_jobs: int = Field(50, ge=1)
    #: drift gauges are recomputed from PostgreSQL at most this often (scrapes in between reuse them)
    drift_refresh_s: float = Field(60.0, ge=0)
    #: PSI above this warns (exported as s4ct_drift_threshold{kind="psi_warn"} for the alert rules)
    drift_psi_warn: float = Field(0.1, gt=0)
    #: PSI above this alerts (kind="psi_alert")
    drift_psi_alert: float = Field(0.25, gt=0)
    #: share of the window flagged out-of-distribution above which the alert fires (kind="ood_rate")
    drift_ood_rate_alert: float = Field(0.2, ge=0, le=1)
    #: share of the window labelled indeterminate above which the alert fires (kind="indeterminate_rate")
    drift_indeterminate_rate_alert: float = Field(0.2, ge=0, le=1)
    #: worker: share of a primary model's jobs its shadow model also runs on (by job id hash)
    shadow_share: float = Field(1.0, ge=0, le=1)

    # --- embedded stack (service4ct serve)
    var_dir: Path = Path("var")

    @field_validator("cors_origins", "s3_cors_origins", mode="before")
    @classmethod
    def _origins(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().startswith("["):  # a JSON list (as worker_env writes it)
            try:
                v = json.loads(v)
            except ValueError:
                raise ValueError(f"{v!r} is neither a JSON list nor comma-separated origins") from None
        items = [o.strip() for o in v.split(",")] if isinstance(v, str) else v
        if not isinstance(items, list):
            return v
        items = [o for o in items if o != ""]
        for origin in items:
            if not isinstance(origin, str) or not (origin == "*" or _ORIGIN.fullmatch(origin)):
                raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], no path) or *")
        return items

    @field_validator("database_url", "redis_url", "s3_endpoint", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: Any) -> Any:
        return None if v == "" else v

    @property
    def uploads_per_client(self) -> int:
        """Upload slots one client may hold (max_uploads_per_client, else half of the total)."""
        if self.max_uploads_per_client is not None:
            return min(self.max_uploads_per_client, self.max_concurrent_uploads)
        return max(1, self.max_concurrent_uploads // 2)

    @property
    def work_path(self) -> Path:
        return self.work_dir if self.work_dir is not None else self.var_dir / "work"

    @property
    def weights_cache_path(self) -> Path:
        return self.weights_cache_dir if self.weights_cache_dir is not None else self.var_dir / "weights"

    @property
    def embedded(self) -> bool:
        """True when no external service is configured (the embedded stack is used)."""
        return self.database_url is None and self.redis_url is None and self.s3_endpoint is None

    def with_services(
        self, *, database_url: str, redis_url: str, s3_endpoint: str, s3_access_key: str, s3_secret_key: str
    ) -> Settings:
        """A copy pointing at concrete services (used after starting the embedded stack)."""
        return self.model_copy(
            update={
                "database_url": database_url,
                "redis_url": redis_url,
                "s3_endpoint": s3_endpoint,
                "s3_access_key": SecretStr(s3_access_key),
                "s3_secret_key": SecretStr(s3_secret_key),
            }
        )

    def require_services(self) -> None:
        """Raise ValueError naming the connection settings that are missing."""
        missing = [
            f"S4CT_{k.upper()}"
            for k in ("database_url", "redis_url", "s3_endpoint", "s3_access_key", "s3_secret_key")
            if getattr(self, k) is None
        ]
        if missing:
            raise ValueError("missing settings: " + ", ".join(missing))


def load_settings(config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Build the settings: YAML file (if any) < environment < ``overrides``.

    ``config_file`` defaults to ``$S4CT_CONFIG_FILE``. YAML keys are the field
    names (``database_url: ...``); unknown keys are an error.
    """
    path = config_file or os.environ.get("S4CT_CONFIG_FILE")
    file_values: dict[str, Any] = {}
    if path:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of settings")
        file_values = loaded
    env_keys = {k[len("S4CT_") :].lower() for k in os.environ if k.startswith("S4CT_")}
    merged = {k: v for k, v in file_values.items() if k not in env_keys}
    merged.update(overrides)
    return Settings(**merged)
