-- Service4CT initial schema. Forward-only: later changes go in 0002_*.sql, ...
-- PostgreSQL is the single source of truth (architecture rule 1); Redis carries job ids only.

-- A client is one calling product (e.g. the Laravel backend of one site). Studies and
-- jobs belong to a client; one client never sees another's. The webhook secret signs
-- callbacks to that client.
CREATE TABLE clients (
    name            text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'),
    webhook_secret  text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- API keys are stored as sha256 of the key (keys are 256-bit random: a plain hash is enough).
CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    client      text NOT NULL REFERENCES clients(name),
    label       text NOT NULL DEFAULT '',
    key_prefix  text NOT NULL,
    key_hash    text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at  timestamptz
);

-- No file names or DICOM header values are stored: only hashes, sizes and counts.
CREATE TABLE studies (
    id                  uuid PRIMARY KEY,
    client              text NOT NULL REFERENCES clients(name),
    sha256              text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size_bytes          bigint NOT NULL CHECK (size_bytes > 0),
    s3_key              text NOT NULL,
    members             integer NOT NULL,
    uncompressed_bytes  bigint NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (client, sha256)
);

CREATE TABLE jobs (
    id              uuid PRIMARY KEY,
    client          text NOT NULL REFERENCES clients(name),
    -- SET NULL: deleting a study keeps the jobs and their results
    study_id        uuid REFERENCES studies(id) ON DELETE SET NULL,
    study_sha256    text NOT NULL,
    kind            text NOT NULL DEFAULT 'predict' CHECK (kind IN ('predict', 'explain')),
    -- for kind = 'explain': the predicted job this explanation belongs to
    parent_job_id   uuid REFERENCES jobs(id) ON DELETE CASCADE,
    model           text NOT NULL,
    series_uid      text,
    explain         text NOT NULL DEFAULT 'gradcam'
                    CHECK (explain IN ('none', 'gradcam', 'integrated_gradients', 'saliency', 'occlusion')),
    explain_params  jsonb NOT NULL DEFAULT '{}',
    callback_url    text,
    state           text NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
    stage           text CHECK (stage IN ('fetching', 'reading', 'qc', 'preprocessing', 'inference',
                                          'explaining', 'saving')),
    progress        real NOT NULL DEFAULT 0 CHECK (progress >= 0 AND progress <= 1),
    attempt         integer NOT NULL DEFAULT 0,
    max_attempts    integer NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    worker_id       text,
    lease_until     timestamptz,
    heartbeat_at    timestamptz,
    enqueued_at     timestamptz NOT NULL DEFAULT now(),
    error_code      text,
    error_detail    text,
    stage_timings   jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((state = 'failed') = (error_code IS NOT NULL))
);
CREATE INDEX jobs_client_created ON jobs (client, created_at DESC);
CREATE INDEX jobs_queued ON jobs (created_at) WHERE state = 'queued';
CREATE INDEX jobs_running_lease ON jobs (lease_until) WHERE state = 'running';
CREATE INDEX jobs_finished ON jobs (finished_at DESC) WHERE state = 'succeeded';
CREATE INDEX jobs_study ON jobs (study_id);

-- The result of a predict job (the result contract of docs/architecture.md §3.5 in body). Written once, by the
-- attempt that holds the job (the UPDATE of jobs and this INSERT share a transaction).
CREATE TABLE results (
    job_id      uuid PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
    attempt     integer NOT NULL,
    probability double precision NOT NULL CHECK (probability >= 0 AND probability <= 1),
    label       text NOT NULL,
    body        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Saliency of a predicted job, one row per method (the latest wins). Blobs live in S3
-- under jobs/{producing job}/attempt-{n}/saliency/ and are written before this row.
CREATE TABLE explanations (
    job_id          uuid NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    method          text NOT NULL,
    produced_by     uuid NOT NULL,
    attempt         integer NOT NULL,
    params          jsonb NOT NULL DEFAULT '{}',
    stats           jsonb NOT NULL DEFAULT '{}',
    geometry        jsonb NOT NULL DEFAULT '{}',
    blobs           jsonb NOT NULL DEFAULT '{}',
    model_name      text NOT NULL,
    model_version   text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, method)
);

CREATE TABLE idempotency_keys (
    client          text NOT NULL REFERENCES clients(name),
    key             text NOT NULL,
    route           text NOT NULL,
    request_hash    text NOT NULL,
    status_code     integer,
    response        jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (client, key)
);
CREATE INDEX idempotency_created ON idempotency_keys (created_at);

CREATE TABLE webhook_outbox (
    id              bigserial PRIMARY KEY,
    job_id          uuid NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    client          text NOT NULL REFERENCES clients(name),
    url             text NOT NULL,
    event           text NOT NULL,
    payload         jsonb NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    dead_at         timestamptz,
    last_status     integer,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_due ON webhook_outbox (next_attempt_at) WHERE delivered_at IS NULL AND dead_at IS NULL;

CREATE TABLE workers (
    worker_id   text PRIMARY KEY,
    started_at  timestamptz NOT NULL DEFAULT now(),
    seen_at     timestamptz NOT NULL DEFAULT now(),
    info        jsonb NOT NULL DEFAULT '{}'
);
