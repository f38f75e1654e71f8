-- Jobs, their event log, their images, and the workers that run them.
-- Times are milliseconds since the Unix epoch, read from the database clock so that
-- leases mean the same thing on every host.

CREATE TABLE jobs (
    id               UUID PRIMARY KEY,
    status           TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    model            TEXT NOT NULL,
    spec             JSONB NOT NULL,
    priority         INTEGER NOT NULL DEFAULT 0,
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    run_at           BIGINT NOT NULL,
    lease_token      UUID,
    lease_expires_at BIGINT,
    worker           TEXT,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    progress_step    BIGINT NOT NULL DEFAULT 0,
    progress_total   BIGINT NOT NULL DEFAULT 0,
    last_seq         BIGINT NOT NULL DEFAULT 0,
    error            TEXT,
    timings          JSONB,
    created_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT
);

CREATE INDEX jobs_claimable ON jobs (priority DESC, created_at, id) WHERE status = 'queued';
CREATE INDEX jobs_leases ON jobs (lease_expires_at) WHERE status = 'running';
CREATE INDEX jobs_newest ON jobs (created_at DESC, id DESC);

CREATE TABLE job_events (
    job_id     UUID NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq        BIGINT NOT NULL,
    body       JSONB NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE images (
    id          UUID PRIMARY KEY,
    job_id      UUID NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx         BIGINT NOT NULL,
    object_key  TEXT NOT NULL,
    seed        BIGINT NOT NULL,
    width       BIGINT NOT NULL,
    height      BIGINT NOT NULL,
    bytes       BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    UNIQUE (job_id, idx)
);

CREATE INDEX images_newest ON images (created_at DESC, id DESC);

CREATE TABLE workers (
    name         TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    device       TEXT NOT NULL,
    model        TEXT,
    current_job  UUID,
    started_at   BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL
);
