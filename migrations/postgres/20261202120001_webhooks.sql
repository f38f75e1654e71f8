-- Webhooks (issue 12): a job's target and the events it wants (a bit mask: started 1,
-- progress 2, completed 4), and one delivery row per reported event, written in the same
-- transaction as the event so that none is lost across a crash.
ALTER TABLE jobs ADD COLUMN webhook_url TEXT;
ALTER TABLE jobs ADD COLUMN webhook_events BIGINT NOT NULL DEFAULT 0;

CREATE TABLE webhook_deliveries (
    id              UUID PRIMARY KEY,
    job_id          UUID NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    owner           TEXT NOT NULL,
    event           TEXT NOT NULL CHECK (event IN ('started', 'progress', 'completed')),
    seq             BIGINT NOT NULL,
    url             TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT,
    response_status BIGINT,
    payload         TEXT,
    next_attempt_at BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    delivered_at    BIGINT,
    UNIQUE (job_id, seq)
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_job ON webhook_deliveries (job_id, created_at);
