-- Hospital interoperability (docs/interop.md): DICOM results, DICOMweb endpoints and pushes.

-- The DICOM results of a predict job, written in the transaction that finishes it (objects in S3
-- first, architecture rule 3). 'refused': the source cannot be referenced (error_code says why).
CREATE TABLE dicom_outputs (
    job_id       uuid PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
    attempt      integer NOT NULL,
    status       text NOT NULL CHECK (status IN ('written', 'refused')),
    error_code   text,
    error_detail text,
    -- [{kind, key, sop_class_uid, sop_instance_uid, series_instance_uid, study_instance_uid, size_bytes}]
    objects      jsonb NOT NULL DEFAULT '[]',
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'refused') = (error_code IS NOT NULL))
);

-- DICOMweb endpoints of a client, set by the operator (`service4ct dicomweb`): the PACS a client
-- may import from ('source', any number) and the one its results are pushed to ('destination').
CREATE TABLE dicomweb_endpoints (
    client      text NOT NULL REFERENCES clients(name) ON DELETE CASCADE,
    role        text NOT NULL CHECK (role IN ('source', 'destination')),
    url         text NOT NULL CHECK (url ~ '^https?://'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (client, role, url)
);
CREATE UNIQUE INDEX dicomweb_one_destination ON dicomweb_endpoints (client) WHERE role = 'destination';

-- STOW-RS pushes of a job's DICOM results to the client's destination, queued in the
-- transaction that finishes the job and delivered with retries (like webhook_outbox).
CREATE TABLE dicomweb_outbox (
    id              bigserial PRIMARY KEY,
    job_id          uuid NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    client          text NOT NULL REFERENCES clients(name),
    url             text NOT NULL,
    keys            jsonb NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    dead_at         timestamptz,
    last_status     integer,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dicomweb_due ON dicomweb_outbox (next_attempt_at) WHERE delivered_at IS NULL AND dead_at IS NULL;

-- A predict job whose study comes from a PACS (POST /v1/studies/import): the worker fetches it by
-- WADO-RS from one of the client's 'source' endpoints, stores it as a study, sets jobs.study_id.
CREATE TABLE dicomweb_imports (
    job_id      uuid PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
    url         text NOT NULL,
    study_uid   text NOT NULL,
    series_uid  text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
