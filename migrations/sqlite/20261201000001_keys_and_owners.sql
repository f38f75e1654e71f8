-- API keys, and an owner on every job and image. An owner is a key's id, or 'local' for
-- work submitted with auth off. Secrets are never stored: only a SHA-256 of the token.

CREATE TABLE api_keys (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    lookup         TEXT NOT NULL UNIQUE,    -- the public part of the token, to find the row
    secret_hash    TEXT NOT NULL,           -- hex SHA-256 of the whole token
    webhook_secret TEXT NOT NULL,           -- whsec_…, needed in clear to sign deliveries
    admin          INTEGER NOT NULL DEFAULT 0,
    max_queued     INTEGER,                 -- queued + running jobs; NULL: unlimited
    rate_per_min   INTEGER,                 -- requests per minute; NULL: unlimited
    created_at     INTEGER NOT NULL,
    revoked_at     INTEGER,
    last_used_at   INTEGER
);

ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT 'local';
CREATE INDEX jobs_owner_newest ON jobs (owner, created_at DESC, id DESC);
-- Counting an owner's unfinished jobs for its quota.
CREATE INDEX jobs_owner_active ON jobs (owner, status) WHERE status IN ('queued', 'running');

ALTER TABLE images ADD COLUMN owner TEXT NOT NULL DEFAULT 'local';
ALTER TABLE images ADD COLUMN model TEXT NOT NULL DEFAULT '';
ALTER TABLE images ADD COLUMN prompt TEXT NOT NULL DEFAULT '';
CREATE INDEX images_owner_newest ON images (owner, created_at DESC, id DESC);

-- Idempotency-Key: the same key and body return the job it first created (24 h).
CREATE TABLE idempotency_keys (
    owner       TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,              -- SHA-256 of the canonical request
    job_id      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (owner, key)
);

-- Token buckets of rate-limited keys, shared by every API process on this database.
CREATE TABLE rate_buckets (
    owner      TEXT PRIMARY KEY,
    tokens     REAL NOT NULL,
    updated_at INTEGER NOT NULL
);
