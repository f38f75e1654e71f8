-- Jobs, their event log and their images. Times are milliseconds since the Unix epoch.

CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    status           TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    model            TEXT NOT NULL,
    spec             TEXT NOT NULL,          -- the validated request, JSON
    priority         INTEGER NOT NULL DEFAULT 0,
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    run_at           INTEGER NOT NULL,       -- not claimable before this (retry backoff)
    lease_token      TEXT,
    lease_expires_at INTEGER,
    worker           TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    progress_step    INTEGER NOT NULL DEFAULT 0,
    progress_total   INTEGER NOT NULL DEFAULT 0,
    last_seq         INTEGER NOT NULL DEFAULT 0,
    error            TEXT,
    timings          TEXT,                   -- JSON, set on success
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER
);

-- The claim query walks this index: best priority first, then oldest.
CREATE INDEX jobs_claimable ON jobs (status, priority DESC, created_at) WHERE status = 'queued';
-- The rescuer looks for running jobs whose lease has run out.
CREATE INDEX jobs_leases ON jobs (lease_expires_at) WHERE status = 'running';

CREATE TABLE job_events (
    job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,
    body       TEXT NOT NULL,                -- the event as JSON, without job_id/seq
    created_at INTEGER NOT NULL,
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE images (
    id           TEXT PRIMARY KEY,
    job_id       TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx          INTEGER NOT NULL,
    object_key   TEXT NOT NULL,
    seed         INTEGER NOT NULL,
    width        INTEGER NOT NULL,
    height       INTEGER NOT NULL,
    bytes        INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    UNIQUE (job_id, idx)
);

CREATE INDEX images_newest ON images (created_at DESC, id DESC);
