-- Event webhooks (docs/api.md, Webhooks): a client's default webhook URL and event selection,
-- and webhook secret rotation (the previous secret keeps signing until the overlap ends).
ALTER TABLE clients
    ADD COLUMN webhook_url text,
    -- NULL: the default selection (job.succeeded, job.failed, job.cancelled)
    ADD COLUMN webhook_events text[],
    ADD COLUMN webhook_secret_previous text,
    ADD COLUMN webhook_secret_previous_until timestamptz;

-- study.deleted has no job: its outbox row names the study instead
ALTER TABLE webhook_outbox
    ALTER COLUMN job_id DROP NOT NULL,
    ADD COLUMN study_id uuid;
