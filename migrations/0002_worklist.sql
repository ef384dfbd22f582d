-- The worklist: listing with keyset pagination, client references, cancel, priority and the
-- series picker (docs/architecture.md §3.3, §3.11).

-- A cancelled job is finished: it never runs again and nothing more is stored for it.
ALTER TABLE jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_state_check
    CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled'));

-- client_ref and metadata are the calling product's own (e.g. its worklist row id); the
-- service stores and echoes them, never interprets them. metadata is a JSON object ≤ 4 KiB.
ALTER TABLE jobs
    ADD COLUMN client_ref   text CHECK (char_length(client_ref) BETWEEN 1 AND 128),
    ADD COLUMN metadata     jsonb NOT NULL DEFAULT '{}'
                            CHECK (jsonb_typeof(metadata) = 'object' AND octet_length(metadata::text) <= 8192),
    ADD COLUMN priority     text NOT NULL DEFAULT 'routine' CHECK (priority IN ('urgent', 'routine')),
    -- set when a routine job waited longer than S4CT_PRIORITY_AGE_S: from then on it counts as urgent
    ADD COLUMN promoted_at  timestamptz,
    ADD COLUMN cancelled_at timestamptz;

ALTER TABLE studies
    ADD COLUMN client_ref   text CHECK (char_length(client_ref) BETWEEN 1 AND 128),
    ADD COLUMN metadata     jsonb NOT NULL DEFAULT '{}'
                            CHECK (jsonb_typeof(metadata) = 'object' AND octet_length(metadata::text) <= 8192),
    -- the series picker: every series with its ranking, usability and reasons, from a header-only
    -- scan (no pixels); NULL until the first GET /v1/studies/{id}/series
    ADD COLUMN series       jsonb;

-- keyset pagination: newest first, ties broken by id
CREATE INDEX jobs_client_page ON jobs (client, created_at DESC, id DESC);
CREATE INDEX jobs_client_ref ON jobs (client, client_ref) WHERE client_ref IS NOT NULL;
CREATE INDEX studies_client_page ON studies (client, created_at DESC, id DESC);
CREATE INDEX studies_client_ref ON studies (client, client_ref) WHERE client_ref IS NOT NULL;
DROP INDEX jobs_client_created;

-- queue order: urgent (or promoted) first, then by age
DROP INDEX jobs_queued;
CREATE INDEX jobs_queued ON jobs ((priority = 'urgent' OR promoted_at IS NOT NULL) DESC, created_at)
    WHERE state = 'queued';
