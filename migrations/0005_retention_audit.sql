-- Retention, deletion and audit (docs/api.md, Retention and deletion; docs/security.md, Audit).

-- Days a client's studies and jobs are kept (counted from their creation). NULL: the
-- service's retention_days setting applies; 0: kept until deleted, whatever the setting.
ALTER TABLE clients ADD COLUMN retention_days integer CHECK (retention_days >= 0);

-- Object-store prefixes still to delete: written in the transaction that deletes the rows,
-- swept by every worker's janitor (FOR UPDATE SKIP LOCKED) until a pass after not_before
-- succeeds, so that an attempt still writing when its job was deleted leaves nothing behind.
-- names NULL: every object under the prefix; else only objects with one of these file names
-- (the CT-pixel images of a deleted study's jobs), whose roles job_id's explanations lose.
CREATE TABLE blob_sweeps (
    id          bigserial PRIMARY KEY,
    prefix      text NOT NULL CHECK (prefix ~ '^(studies|jobs)/[0-9a-f-]{36}/$'),
    names       text[],
    job_id      uuid,
    not_before  timestamptz NOT NULL DEFAULT now(),
    attempts    integer NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX blob_sweeps_due ON blob_sweeps (not_before);

-- The retention janitor picks expired rows by creation time
CREATE INDEX studies_created ON studies (created_at);
CREATE INDEX jobs_created ON jobs (created_at);

-- Who read or deleted which result, explanation, study or job (no patient identifiers:
-- ids, client names and key ids only). key_id: the API key, or the key that issued the
-- viewer token used (via = 'viewer_token').
CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    client      text NOT NULL,
    key_id      uuid,
    via         text NOT NULL CHECK (via IN ('api_key', 'viewer_token')),
    action      text NOT NULL CHECK (action IN ('read', 'delete')),
    object      text NOT NULL CHECK (object IN ('result', 'explanation', 'study', 'job')),
    object_id   uuid NOT NULL,
    request_id  text
);
CREATE INDEX audit_log_at ON audit_log (at);
