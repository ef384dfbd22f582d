"""All SQL of the service, one module a concern; rows come back as typed records.

- :mod:`~app.repository.records`: :class:`Job`, :class:`ExplanationRecord`, … and their views
- :mod:`~app.repository.clients`: clients and API keys
- :mod:`~app.repository.studies`: uploaded studies
- :mod:`~app.repository.jobs`: job rows (claim, leases, stages, finish, release)
- :mod:`~app.repository.results`: results and explanations
- :mod:`~app.repository.listing`: pages of a client's jobs and studies (filters, keyset cursors)
- :mod:`~app.repository.outcomes`: each outcome of an attempt as one transaction with its webhook
- :mod:`~app.repository.events`: which events a client receives, where, and the webhook secrets
- :mod:`~app.repository.outbox`, :mod:`~app.repository.idempotency`, :mod:`~app.repository.workers`

Functions take a connection (from :meth:`app.db.Database.conn` or ``.tx``).
"""

from app.repository.clients import (
    API_KEY_PREFIX,
    client_for_key,
    client_for_key_hash,
    create_api_key,
    ensure_client,
    hash_api_key,
    list_api_keys,
    revoke_api_key,
    revoke_api_key_hash,
    webhook_secret,
)
from app.repository.idempotency import (
    IdempotencyConflictError,
    IdempotencyInProgressError,
    idempotency_begin,
    idempotency_store,
    purge_idempotency,
)
from app.repository.jobs import (
    cancel_job,
    claim_job,
    extend_leases,
    fail_exhausted,
    finish_job,
    get_job,
    insert_job,
    job_state_counts,
    job_with_position,
    mark_enqueued,
    oldest_queued_age_s,
    queued_before,
    recent_stats,
    release_job,
    requeue_expired,
    set_stage,
)
from app.repository.listing import JobFilter, Page, StudyFilter, list_jobs, list_studies
from app.repository.outbox import outbox_add, outbox_done, outbox_retry, outbox_rows, outbox_take_due
from app.repository.outcomes import (
    Reconciled,
    cancel,
    claim_attempt,
    job_event,
    mark_failed,
    mark_succeeded,
    reconcile_jobs,
    release_attempt,
)
from app.repository.records import (
    BlobRef,
    Delivery,
    ExplanationRecord,
    Job,
    JobKind,
    JobLinks,
    RecentStats,
    Row,
)
from app.repository.results import get_explanations, get_result, insert_result, upsert_explanation
from app.repository.studies import (
    delete_study,
    get_study,
    insert_study,
    store_study_series,
    study_by_sha,
    study_series,
)
from app.repository.workers import last_worker_heartbeat_age, worker_gone, worker_seen

__all__ = [
    "API_KEY_PREFIX",
    "BlobRef",
    "Delivery",
    "ExplanationRecord",
    "IdempotencyConflictError",
    "IdempotencyInProgressError",
    "Job",
    "JobFilter",
    "JobKind",
    "JobLinks",
    "Page",
    "RecentStats",
    "Reconciled",
    "Row",
    "StudyFilter",
    "cancel",
    "cancel_job",
    "claim_attempt",
    "claim_job",
    "client_for_key",
    "client_for_key_hash",
    "create_api_key",
    "delete_study",
    "ensure_client",
    "extend_leases",
    "fail_exhausted",
    "finish_job",
    "get_explanations",
    "get_job",
    "get_result",
    "get_study",
    "hash_api_key",
    "idempotency_begin",
    "idempotency_store",
    "insert_job",
    "insert_result",
    "insert_study",
    "job_event",
    "job_state_counts",
    "job_with_position",
    "last_worker_heartbeat_age",
    "list_api_keys",
    "list_jobs",
    "list_studies",
    "mark_enqueued",
    "mark_failed",
    "mark_succeeded",
    "oldest_queued_age_s",
    "outbox_add",
    "outbox_done",
    "outbox_retry",
    "outbox_rows",
    "outbox_take_due",
    "purge_idempotency",
    "queued_before",
    "recent_stats",
    "reconcile_jobs",
    "release_attempt",
    "release_job",
    "requeue_expired",
    "revoke_api_key",
    "revoke_api_key_hash",
    "set_stage",
    "store_study_series",
    "study_by_sha",
    "study_series",
    "upsert_explanation",
    "webhook_secret",
    "worker_gone",
    "worker_seen",
]
