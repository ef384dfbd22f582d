-- Radiologists' feedback on predictions and the ground truth that live performance is measured
-- against (docs/architecture.md §3, Feedback and live performance).

-- Append-only: a reader's new answer marks their previous one not current (history kept).
-- reader is the calling product's opaque id of the reader (never a name or an e-mail address);
-- comment is bounded free text (the client must not put patient identifiers in it).
-- Deleted with its job (ON DELETE CASCADE): by DELETE /v1/jobs/{id} and by the retention janitor.
CREATE TABLE feedback (
    id            bigserial PRIMARY KEY,
    job_id        uuid NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    reader        text NOT NULL CHECK (reader ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$'),
    ground_truth  text NOT NULL CHECK (ground_truth IN ('normal', 'pathology')),
    agrees        boolean,
    comment       text CHECK (char_length(comment) <= 1000),
    current       boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX feedback_current_reader ON feedback (job_id, reader) WHERE current;
CREATE INDEX feedback_job ON feedback (job_id, id);

-- A job's ground truth: the majority of its readers' current answers; a tie goes to the most
-- recent current answer.
CREATE VIEW feedback_consensus AS
SELECT job_id,
       count(*)::integer AS readers,
       CASE
           WHEN count(*) FILTER (WHERE ground_truth = 'pathology')
                > count(*) FILTER (WHERE ground_truth = 'normal') THEN 'pathology'
           WHEN count(*) FILTER (WHERE ground_truth = 'pathology')
                < count(*) FILTER (WHERE ground_truth = 'normal') THEN 'normal'
           ELSE (array_agg(ground_truth ORDER BY id DESC))[1]
       END AS ground_truth
FROM feedback
WHERE current
GROUP BY job_id;
