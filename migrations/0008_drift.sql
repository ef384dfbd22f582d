-- Drift monitoring and shadow models (docs/architecture.md §3.10, docs/operations.md, Drift).

-- What the drift gauges compare with the model's reference: one row per succeeded predict job,
-- written by the worker with the result. No patient identifiers: the output, the OOD check and
-- four header properties of the selected series (free text withheld when it carries one).
-- Deleted with its job (retention, DELETE /v1/jobs/{id}).
CREATE TABLE drift_observations (
    job_id              uuid PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
    model               text NOT NULL,
    probability         double precision NOT NULL CHECK (probability >= 0 AND probability <= 1),
    ood_score           double precision,
    ood_flagged         boolean,
    indeterminate       boolean NOT NULL,
    slice_thickness_mm  double precision,
    coverage_mm         double precision,
    kernel              text CHECK (octet_length(kernel) <= 64),
    manufacturer        text CHECK (octet_length(manufacturer) <= 64),
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX drift_observations_model_created ON drift_observations (model, created_at DESC);

-- The answer of a shadow model (a manifest entry with shadow_of) on a share of its primary's jobs.
-- Never served to clients; deleted with its job.
CREATE TABLE shadow_results (
    job_id          uuid PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
    model           text NOT NULL,
    primary_model   text NOT NULL,
    probability     double precision NOT NULL CHECK (probability >= 0 AND probability <= 1),
    label           text NOT NULL,
    ood_score       double precision,
    ood_flagged     boolean,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX shadow_results_pair_created ON shadow_results (primary_model, model, created_at DESC);
