-- Per-client quotas (docs/api.md, Quotas). NULL: the service's default setting applies.
ALTER TABLE clients
    ADD COLUMN rate_limit_per_minute integer CHECK (rate_limit_per_minute > 0),
    ADD COLUMN max_queued_jobs integer CHECK (max_queued_jobs > 0);

-- the queued-jobs quota counts a client's queued jobs at every job creation
CREATE INDEX jobs_client_queued ON jobs (client) WHERE state = 'queued';
